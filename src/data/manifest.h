// Dataset format v1: manifest.json, the description of a packed dataset (see DESIGN.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace fer {

inline constexpr const char* kDatasetFormat = "fer-shards";  // manifest "format" and shard attribute
inline constexpr int kDatasetVersion = 1;                     // the only version this code reads
inline constexpr const char* kManifestName = "manifest.json";

struct ShardInfo {
  std::string file;        // plain file name inside the dataset folder
  std::int64_t count = 0;  // images in the shard
  std::int64_t bytes = 0;  // file size
  std::string checksum;    // "sha256:<hex>" of the whole file
};

struct SplitInfo {
  std::int64_t count = 0;                  // images in the split
  std::vector<std::int64_t> class_counts;  // per class, same order as Manifest::classes
  std::vector<ShardInfo> shards;           // in shard_index order
};

struct Manifest {
  std::vector<std::string> classes;  // index = label value
  int height = 0;
  int width = 0;
  int channels = 0;
  std::vector<double> mean;  // per channel, over the train split, in [0,1] units
  std::vector<double> std;   // per channel (unbiased), same units
  std::map<std::string, SplitInfo> splits;  // "train", "val", "test"
  std::string source_kind;                  // "imagefolder" | "csv"
  std::string source_path;                  // as given on the command line
  std::string packer_version;               // fer-pack version
  std::vector<std::string> packer_args;     // fer-pack arguments that shaped the output

  std::int64_t image_bytes() const {
    return std::int64_t{height} * width * channels;
  }
  // The split or DataError naming the dataset when absent.
  const SplitInfo& split(const std::string& name) const;
};

// Serializes deterministically (sorted keys, fixed float formatting).
std::string manifest_to_json(const Manifest& manifest);

// Parses and validates: format and version, shapes, class counts adding up, shard names that
// stay inside the dataset folder, mean/std per channel. `source` names the file in errors.
// Throws DataError.
Manifest parse_manifest(const std::string& json_text, const std::string& source);

// Reads <dataset_dir>/manifest.json. Throws DataError (missing folder/manifest, invalid) or IoError.
Manifest load_manifest(const std::filesystem::path& dataset_dir);

// True for a shard name that is a plain file name (no separators, no "..", not hidden).
bool is_plain_file_name(const std::string& name);

}  // namespace fer
