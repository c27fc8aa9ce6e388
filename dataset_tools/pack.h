// The packing pipeline shared by `fer-pack imagefolder` and `fer-pack csv`: split planning,
// parallel decoding, streamed shard writing, normalization statistics and the manifest.
//
// Determinism: the output depends only on the source, its order and PackOptions — never on the
// thread count. Items are decoded on worker threads but written by one thread in plan order.
// Memory: a bounded ring of decoded images plus one HDF5 chunk, not the whole dataset.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "data/manifest.h"

namespace fer::tools {

// Something fer-pack can pack: items addressed by index, decodable from any thread.
class PackSource {
 public:
  virtual ~PackSource() = default;
  virtual std::size_t size() const = 0;
  virtual std::string id(std::size_t i) const = 0;  // the name stored in the shard's /ids
  virtual int label(std::size_t i) const = 0;
  // Where item i comes from, for messages (a path, "file.csv:LINE"). Defaults to id().
  virtual std::string location(std::size_t i) const { return id(i); }
  // Decodes item i as size x size x channels uint8 HWC into out. On bad data returns false and
  // says why in *reason (the item is then skipped, or fails the pack with --strict). Thread-safe.
  virtual bool decode(std::size_t i, int size, int channels, std::uint8_t* out,
                      std::string* reason) const = 0;
};

struct PackOptions {
  int size = 48;                          // output side in pixels
  int channels = 1;                       // 1 (grayscale) or 3 (RGB)
  std::vector<int> split_parts{80, 10, 10};  // train/val/test proportions for unsplit sources
  double val_fraction = 0.1;              // val carved from train when the source has no val
  std::uint64_t seed = 0;                 // split assignment and shard order
  int shards = 0;                         // shards per split; 0 = decide by shard_mb
  double shard_mb = 64.0;                 // target shard size in MiB when shards == 0
  int threads = 0;                        // decode threads; 0 = all cores
  int compress = 0;                       // deflate level 0..9
  bool strict = false;                    // first undecodable item fails the pack
  bool overwrite = false;                 // replace an existing output folder
  bool progress = true;                   // show progress on stderr
};

// Split name -> item indices of the source.
using SplitPlan = std::map<std::string, std::vector<std::size_t>>;

// Splits `items` by label into consecutive parts with the given proportions, per class, after a
// deterministic shuffle seeded by (seed, class). Returns one vector per part, each sorted.
std::vector<std::vector<std::size_t>> stratified_split(const std::vector<std::size_t>& items,
                                                       const PackSource& source,
                                                       const std::vector<int>& parts,
                                                       std::uint64_t seed);

struct PackMeta {
  std::vector<std::string> classes;
  std::string source_kind;  // "imagefolder" | "csv"
  std::string source_path;
  std::vector<std::string> args;  // the options that shape the output (recorded in the manifest)
};

struct PackResult {
  Manifest manifest;
  std::int64_t written = 0;
  std::int64_t skipped = 0;  // undecodable items
  double seconds = 0.0;
};

// Validates options (ConfigError), refuses an existing `out` without overwrite (ConfigError), then
// writes the dataset into a temporary folder beside `out` and renames it into place. Ctrl-C
// (fer::Interrupted) and errors leave neither `out` nor the temporary folder behind.
PackResult pack_dataset(const PackSource& source, const SplitPlan& plan, const PackMeta& meta,
                        const PackOptions& options, const std::filesystem::path& out);

// The option strings recorded in the manifest for `options` (thread count excluded).
std::vector<std::string> describe_options(const PackOptions& options);

}  // namespace fer::tools
