#include "data/dataset.h"

#include <algorithm>

#include "common/errors.h"
#include "data/checksum.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

ShardExpectation expectation(const Manifest& m, const std::string& split, int index,
                             const ShardInfo& shard) {
  ShardExpectation e;
  e.layout.split = split;
  e.layout.shard_index = index;
  e.layout.num_shards = static_cast<int>(m.split(split).shards.size());
  e.layout.height = m.height;
  e.layout.width = m.width;
  e.layout.channels = m.channels;
  e.count = shard.count;
  e.num_classes = static_cast<int>(m.classes.size());
  return e;
}

}  // namespace

ShardReader open_verified_shard(const fs::path& dir, const Manifest& m, const std::string& split,
                                int index) {
  const SplitInfo& s = m.split(split);
  FER_CHECK(index >= 0 && index < static_cast<int>(s.shards.size()), DataError, "split '", split,
            "' has no shard ", index);
  const ShardInfo& shard = s.shards[index];
  const fs::path path = dir / shard.file;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw DataError("shard " + path.string() + " is missing",
                    "re-pack the dataset or restore the file");
  }
  const auto size = static_cast<std::int64_t>(fs::file_size(path, ec));
  if (ec || size != shard.bytes) {
    throw DataError("shard " + path.string() + " has " + std::to_string(size) +
                        " bytes, the manifest says " + std::to_string(shard.bytes),
                    "the file is truncated or was replaced: re-pack the dataset");
  }
  const std::string sum = file_checksum(path);
  if (sum != shard.checksum) {
    throw DataError("shard " + path.string() + " fails its checksum (" + sum + ", manifest " +
                        shard.checksum + ")",
                    "the file is corrupt: re-pack the dataset or restore the file");
  }
  return ShardReader(path, expectation(m, split, index, shard));
}

VerifyReport verify_dataset(const fs::path& dir,
                            const std::function<void(const std::string&)>& on_shard) {
  const Manifest m = load_manifest(dir);
  VerifyReport report;
  for (const auto& [split, info] : m.splits) {
    std::vector<std::int64_t> class_counts(m.classes.size(), 0);
    bool split_readable = true;
    for (int i = 0; i < static_cast<int>(info.shards.size()); ++i) {
      const ShardInfo& shard = info.shards[i];
      if (on_shard) on_shard(shard.file);
      ++report.shards_checked;
      try {
        ShardReader reader = open_verified_shard(dir, m, split, i);
        std::vector<std::uint8_t> labels(static_cast<std::size_t>(reader.count()));
        reader.read_labels(0, reader.count(), labels.data());
        for (auto label : labels) ++class_counts[label];
        // Reading every image proves the chunks decompress (a checksum match already makes a
        // failure here unlikely, but a manifest forged to match a broken file would pass).
        std::vector<std::uint8_t> block;
        const std::int64_t step = std::max<std::int64_t>(1, reader.chunk_images());
        block.resize(static_cast<std::size_t>(step * m.image_bytes()));
        for (std::int64_t start = 0; start < reader.count(); start += step) {
          reader.read_images(start, std::min(step, reader.count() - start), block.data());
        }
      } catch (const Error& e) {
        split_readable = false;
        report.problems.push_back(shard.file + ": " + e.what());
      }
    }
    if (split_readable && class_counts != info.class_counts) {
      report.problems.push_back("split '" + split +
                                "': per-class counts in the shards differ from the manifest");
    }
  }
  return report;
}

}  // namespace fer
