#include "pack.h"

#include <opencv2/core.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <numeric>
#include <thread>

#include "common/cancel.h"
#include "common/errors.h"
#include "common/fs_util.h"
#include "common/random.h"
#include "data/checksum.h"
#include "data/shard.h"
#include "progress.h"

namespace fs = std::filesystem;

namespace fer::tools {
namespace {

constexpr const char* kSplitOrder[] = {"train", "val", "test"};

// Decodes positions [0, order.size()) of `order` on worker threads into a ring of `capacity`
// slots; the single consumer takes them strictly in position order. Workers never run more than
// `capacity` positions ahead of the consumer, which bounds memory.
class DecodeRing {
 public:
  struct Slot {
    std::vector<std::uint8_t> pixels;
    bool ok = false;
    bool ready = false;
    std::string reason;
  };

  DecodeRing(const PackSource& source, const std::vector<std::size_t>& order, int size,
             int channels, int threads, std::size_t capacity)
      : source_(source), order_(order), size_(size), channels_(channels), slots_(capacity) {
    for (auto& slot : slots_) slot.pixels.resize(std::size_t(size) * size * channels);
    for (int t = 0; t < threads; ++t) workers_.emplace_back([this] { work(); });
  }

  ~DecodeRing() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    free_.notify_all();
    ready_.notify_all();
    for (auto& t : workers_) t.join();
  }

  // Blocks until position p is decoded. Throws fer::Interrupted on Ctrl-C.
  const Slot& wait(std::size_t p) {
    throw_if_cancelled();
    std::unique_lock<std::mutex> lock(mutex_);
    Slot& slot = slots_[p % slots_.size()];
    while (!slot.ready) {
      ready_.wait_for(lock, std::chrono::milliseconds(100));
      throw_if_cancelled();
    }
    return slot;
  }

  // Gives position p's slot back for position p + capacity.
  void release(std::size_t p) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      slots_[p % slots_.size()].ready = false;
      consumed_ = p + 1;
    }
    free_.notify_all();
  }

 private:
  void work() {
    while (true) {
      std::size_t p;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        free_.wait(lock, [&] {
          return stop_ || next_ >= order_.size() || next_ < consumed_ + slots_.size();
        });
        if (stop_ || next_ >= order_.size()) return;
        p = next_++;
      }
      Slot& slot = slots_[p % slots_.size()];
      bool ok = false;
      std::string reason;
      if (!cancel_requested()) {
        try {
          ok = source_.decode(order_[p], size_, channels_, slot.pixels.data(), &reason);
        } catch (const std::exception& e) {
          reason = e.what();
        }
      } else {
        reason = "interrupted";
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        slot.ok = ok;
        slot.reason = std::move(reason);
        slot.ready = true;
      }
      ready_.notify_all();
    }
  }

  const PackSource& source_;
  const std::vector<std::size_t>& order_;
  const int size_;
  const int channels_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::condition_variable free_;
  std::vector<Slot> slots_;
  std::size_t next_ = 0;      // next position a worker claims
  std::size_t consumed_ = 0;  // positions below this are released
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

// Exact per-channel sums of pixel values and their squares (integers: order-independent).
struct PixelStats {
  std::vector<unsigned __int128> sum, sum_sq;
  unsigned __int128 pixels_per_channel = 0;

  explicit PixelStats(int channels) : sum(channels, 0), sum_sq(channels, 0) {}

  void add(const std::uint8_t* image, std::size_t pixels, int channels) {
    // Per-image sums fit in 64 bits (pixels * 255^2 < 2^64 for any image this tool accepts).
    std::uint64_t s[3] = {0, 0, 0}, q[3] = {0, 0, 0};
    if (channels == 1) {
      for (std::size_t i = 0; i < pixels; ++i) {
        const std::uint32_t v = image[i];
        s[0] += v;
        q[0] += v * v;
      }
    } else {
      for (std::size_t i = 0; i < pixels; ++i) {
        for (int c = 0; c < channels; ++c) {
          const std::uint32_t v = image[i * channels + c];
          s[c] += v;
          q[c] += v * v;
        }
      }
    }
    for (int c = 0; c < channels; ++c) {
      sum[c] += s[c];
      sum_sq[c] += q[c];
    }
    pixels_per_channel += pixels;
  }

  // Mean and unbiased std in [0,1] units (as torch.Tensor.std() over the train split).
  void finish(std::vector<double>* mean, std::vector<double>* stdev) const {
    const long double n = static_cast<long double>(pixels_per_channel);
    for (std::size_t c = 0; c < sum.size(); ++c) {
      // n*sum_sq - sum^2 is exact in 128 bits for any dataset this tool can hold.
      const unsigned __int128 centered = pixels_per_channel * sum_sq[c] - sum[c] * sum[c];
      const long double var = static_cast<long double>(centered) / (n * (n - 1)) / (255.0L * 255);
      mean->push_back(static_cast<double>(static_cast<long double>(sum[c]) / n / 255.0L));
      stdev->push_back(static_cast<double>(std::sqrt(var)));
    }
  }
};

void validate(const PackOptions& o) {
  FER_CHECK(o.size >= 8 && o.size <= 1024, ConfigError, "--size ", o.size,
            " is out of range (8..1024)");
  FER_CHECK(o.channels == 1 || o.channels == 3, ConfigError, "--channels must be 1 or 3, not ",
            o.channels);
  FER_CHECK(o.split_parts.size() == 3 &&
                std::all_of(o.split_parts.begin(), o.split_parts.end(),
                            [](int p) { return p >= 0; }) &&
                o.split_parts[0] > 0,
            ConfigError, "--split needs three non-negative parts train/val/test with train > 0");
  FER_CHECK(o.val_fraction >= 0.0 && o.val_fraction < 1.0, ConfigError,
            "--val-fraction must be in [0, 1), not ", o.val_fraction);
  FER_CHECK(o.shards >= 0 && o.shards <= 100000, ConfigError, "--shards must be 0..100000");
  FER_CHECK(o.shard_mb > 0.0, ConfigError, "--shard-mb must be > 0");
  FER_CHECK(o.threads >= 0 && o.threads <= 1024, ConfigError, "--threads must be 0..1024");
  FER_CHECK(o.compress >= 0 && o.compress <= 9, ConfigError, "--compress must be 0..9");
}

// Fills every shard's checksum (and syncs it to disk) on `threads` threads: hashing is the one
// serial pass over all written bytes, so it is spread out once all shards are closed.
void checksum_shards(const fs::path& dir, int threads, Manifest* manifest) {
  std::vector<ShardInfo*> shards;
  for (auto& [name, split] : manifest->splits) {
    for (auto& shard : split.shards) shards.push_back(&shard);
  }
  std::atomic<std::size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    for (std::size_t i; (i = next++) < shards.size();) {
      try {
        fsync_path(dir / shards[i]->file);
        shards[i]->checksum = file_checksum(dir / shards[i]->file);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  const int n = std::max(1, std::min<int>(threads, static_cast<int>(shards.size())));
  for (int t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

std::uint64_t split_tag(const std::string& split) {
  std::uint64_t h = 1469598103934665603ULL;  // FNV-1a
  for (unsigned char ch : split) h = (h ^ ch) * 1099511628211ULL;
  return h;
}

std::string format_double(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

}  // namespace

std::vector<std::vector<std::size_t>> stratified_split(const std::vector<std::size_t>& items,
                                                       const PackSource& source,
                                                       const std::vector<int>& parts,
                                                       std::uint64_t seed) {
  const long long total = std::accumulate(parts.begin(), parts.end(), 0LL);
  FER_CHECK(total > 0, ConfigError, "split proportions add up to 0");
  std::map<int, std::vector<std::size_t>> by_class;
  for (std::size_t i : items) by_class[source.label(i)].push_back(i);
  std::vector<std::vector<std::size_t>> out(parts.size());
  for (auto& [label, members] : by_class) {
    std::sort(members.begin(), members.end());
    std::mt19937_64 rng(derive_seed({seed, 0x5e1175ULL, static_cast<std::uint64_t>(label)}));
    shuffle_in_place(members, rng);
    // Part k gets [round(n*c_k/total), round(n*c_{k+1}/total)) with c the cumulative parts; the
    // first part absorbs rounding so that tiny classes still reach train.
    const long long n = static_cast<long long>(members.size());
    long long cumulative = 0;
    std::size_t begin = 0;
    for (std::size_t k = 0; k < parts.size(); ++k) {
      cumulative += parts[k];
      std::size_t end = static_cast<std::size_t>((n * cumulative * 2 + total) / (2 * total));
      if (k == 0) end = std::max<std::size_t>(end, std::min<std::size_t>(members.size(), 1));
      end = std::max(end, begin);
      if (k + 1 == parts.size()) end = members.size();
      out[k].insert(out[k].end(), members.begin() + begin, members.begin() + end);
      begin = end;
    }
  }
  for (auto& part : out) std::sort(part.begin(), part.end());
  return out;
}

std::vector<std::string> describe_options(const PackOptions& o) {
  std::vector<std::string> args{
      "--size=" + std::to_string(o.size),
      "--channels=" + std::to_string(o.channels),
      "--split=" + std::to_string(o.split_parts.at(0)) + "/" + std::to_string(o.split_parts.at(1)) +
          "/" + std::to_string(o.split_parts.at(2)),
      "--val-fraction=" + format_double(o.val_fraction),
      "--seed=" + std::to_string(o.seed),
      o.shards > 0 ? "--shards=" + std::to_string(o.shards)
                   : "--shard-mb=" + format_double(o.shard_mb),
      "--compress=" + std::to_string(o.compress)};
  return args;
}

PackResult pack_dataset(const PackSource& source, const SplitPlan& plan, const PackMeta& meta,
                        const PackOptions& options, const fs::path& out) {
  validate(options);
  const auto started = std::chrono::steady_clock::now();
  std::error_code ec;
  if (fs::exists(fs::symlink_status(out, ec)) && !options.overwrite) {
    throw ConfigError("output " + out.string() + " already exists",
                      "pass --overwrite to replace it, or choose another OUT");
  }
  FER_CHECK(!meta.classes.empty() && meta.classes.size() <= 256, DataError,
            "a dataset needs 1..256 classes, found ", meta.classes.size());
  const auto train_it = plan.find("train");
  if (train_it == plan.end() || train_it->second.empty()) {
    throw DataError("no training images found in " + meta.source_path);
  }
  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  // Parallelism comes from our decode threads; OpenCV's own pool would oversubscribe the cores.
  cv::setNumThreads(0);

  ScopedTempDir temp(out);
  Manifest manifest;
  manifest.classes = meta.classes;
  manifest.height = manifest.width = options.size;
  manifest.channels = options.channels;
  manifest.source_kind = meta.source_kind;
  manifest.source_path = meta.source_path;
  manifest.packer_version = FER_VERSION;
  manifest.packer_args = meta.args;

  const std::size_t image_bytes = std::size_t(options.size) * options.size * options.channels;
  PixelStats stats(options.channels);
  PackResult result;

  for (const char* split : kSplitOrder) {
    const auto it = plan.find(split);
    if (it == plan.end()) continue;
    if (it->second.empty()) {
      spdlog::warn("split '{}' has no images; it is left out of the dataset", split);
      continue;
    }
    // Shards hold a shuffled order so that streaming readers see mixed classes.
    std::vector<std::size_t> order = it->second;
    std::mt19937_64 rng(derive_seed({options.seed, split_tag(split)}));
    shuffle_in_place(order, rng);
    const std::size_t n = order.size();
    const double shard_bytes = options.shard_mb * 1024.0 * 1024.0;
    std::size_t num_shards =
        options.shards > 0
            ? std::size_t(options.shards)
            : std::size_t(std::ceil(double(n) * double(image_bytes) / shard_bytes));
    num_shards = std::clamp<std::size_t>(num_shards, 1, n);

    SplitInfo info;
    info.class_counts.assign(meta.classes.size(), 0);
    DecodeRing ring(source, order, options.size, options.channels, threads,
                    std::max<std::size_t>(64, std::size_t(threads) * 32));
    Progress progress(split, static_cast<std::int64_t>(n));
    std::size_t position = 0;
    for (std::size_t k = 0; k < num_shards; ++k) {
      const std::size_t end = (k + 1) * n / num_shards;
      const std::string file = shard_file_name(split, int(k), int(num_shards));
      ShardLayout layout{split, int(k), int(num_shards), options.size, options.size,
                         options.channels};
      // Chunks of at most kDefaultChunkImages, never larger than the shard itself.
      const int chunk = static_cast<int>(std::clamp<std::size_t>(end - position, 1,
                                                                 kDefaultChunkImages));
      ShardWriter writer(temp.path() / file, layout, options.compress, chunk);
      for (; position < end; ++position) {
        const auto& slot = ring.wait(position);
        const std::size_t item = order[position];
        if (slot.ok) {
          const int label = source.label(item);
          writer.append(slot.pixels.data(), static_cast<std::uint8_t>(label), source.id(item));
          ++info.class_counts[label];
          if (std::string(split) == "train") {
            stats.add(slot.pixels.data(), image_bytes / options.channels, options.channels);
          }
        } else {
          if (options.strict) {
            throw DataError("cannot decode " + source.location(item) + ": " + slot.reason,
                            "fix or remove the file, or drop --strict to skip such files");
          }
          spdlog::warn("skipping {}: {}", source.location(item), slot.reason);
          ++result.skipped;
        }
        ring.release(position);
        if (options.progress) progress.update(static_cast<std::int64_t>(position + 1));
      }
      writer.close();
      ShardInfo shard;
      shard.file = file;
      shard.count = writer.count();
      shard.bytes = static_cast<std::int64_t>(fs::file_size(temp.path() / file));
      info.count += shard.count;
      info.shards.push_back(std::move(shard));
    }
    if (options.progress) progress.finish();
    result.written += info.count;
    manifest.splits.emplace(split, std::move(info));
  }
  if (manifest.split("train").count == 0) {
    throw DataError("none of the training images of " + meta.source_path + " could be decoded");
  }
  if (stats.pixels_per_channel < 2) throw DataError("too few training pixels for statistics");
  stats.finish(&manifest.mean, &manifest.std);
  checksum_shards(temp.path(), threads, &manifest);
  for (double s : manifest.std) {
    if (!(s > 0.0)) {
      throw DataError("training images are all identical (pixel std is 0): nothing to learn");
    }
  }
  write_file_atomic(temp.path() / kManifestName, manifest_to_json(manifest));
  throw_if_cancelled();
  temp.commit(out, options.overwrite);
  result.manifest = std::move(manifest);
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return result;
}

}  // namespace fer::tools
