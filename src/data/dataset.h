// A packed dataset folder as a whole: opening its shards safely and verifying it.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "data/manifest.h"
#include "data/shard.h"

namespace fer {

// Opens shard `index` of `split`: checks its size and checksum against the manifest, then opens it
// with ShardReader (attributes, shapes, count). Throws DataError naming the shard.
ShardReader open_verified_shard(const std::filesystem::path& dataset_dir, const Manifest& manifest,
                                const std::string& split, int index);

struct VerifyReport {
  int shards_checked = 0;
  std::vector<std::string> problems;  // one line per bad shard or split, naming it
  bool ok() const { return problems.empty(); }
};

// Re-checks every shard: existence, size, checksum, attributes, shapes, count, label range, and
// the per-class counts against the manifest. `on_shard` (optional) is told each shard's name
// before it is checked. Throws DataError only when the manifest itself is unusable.
VerifyReport verify_dataset(const std::filesystem::path& dataset_dir,
                            const std::function<void(const std::string&)>& on_shard = {});

}  // namespace fer
