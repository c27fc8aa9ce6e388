#include "data/manifest.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <type_traits>

#include "common/errors.h"
#include "common/fs_util.h"
#include "common/json_util.h"

namespace fer {
namespace {

using nlohmann::json;

// Limits that keep a hostile manifest from driving huge allocations: every count and size is
// checked against them before anything is sized from it (and before sums that could overflow).
constexpr int kMaxSide = 4096;
constexpr std::int64_t kMaxImages = std::int64_t{1} << 32;
constexpr std::int64_t kMaxSplitBytes = std::int64_t{1} << 42;  // 4 TiB of pixels per split
constexpr std::size_t kMaxShards = 1 << 20;                     // per split
constexpr std::size_t kMaxClasses = 256;                        // labels are uint8
constexpr std::size_t kMaxNameBytes = 4096;                     // class and shard names

json shard_to_json(const ShardInfo& s) {
  return json{{"file", s.file}, {"count", s.count}, {"bytes", s.bytes}, {"checksum", s.checksum}};
}

template <typename T>
struct IsVector : std::false_type {};
template <typename T>
struct IsVector<std::vector<T>> : std::true_type {};
template <typename T>
constexpr bool is_vector_v = IsVector<T>::value;

// Typed access with an error that names the key path.
template <typename T>
T get(const json& j, const std::string& key, const std::string& path, const std::string& source) {
  if (!j.is_object() || !j.contains(key)) {
    throw DataError(source + ": missing \"" + path + key + "\"");
  }
  const json& value = j.at(key);
  const auto wrong_type = [&] {
    return DataError(source + ": \"" + path + key + "\" has the wrong type or range (" +
                     value.dump(-1, ' ', false, json::error_handler_t::replace).substr(0, 60) +
                     ")");
  };
  // nlohmann converts a float to an integer with a plain cast, which is undefined behaviour
  // for out-of-range values (1e300): integers must be JSON integers that fit.
  if constexpr (std::is_integral_v<T>) {
    if (!is_integer_in_range<T>(value)) throw wrong_type();
  } else if constexpr (is_vector_v<T>) {
    if constexpr (std::is_integral_v<typename T::value_type>) {
      if (!value.is_array()) throw wrong_type();
      for (const auto& item : value) {
        if (!is_integer_in_range<typename T::value_type>(item)) throw wrong_type();
      }
    }
  }
  try {
    return value.get<T>();
  } catch (const json::exception&) {
    throw wrong_type();
  }
}

}  // namespace

const SplitInfo& Manifest::split(const std::string& name) const {
  const auto it = splits.find(name);
  if (it == splits.end()) throw DataError("dataset has no '" + name + "' split");
  return it->second;
}

bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find('\0') == std::string::npos &&
         name != "." && name != ".." && name.find("..") == std::string::npos && name[0] != '.';
}

std::string manifest_to_json(const Manifest& m) {
  json splits = json::object();
  for (const auto& [name, s] : m.splits) {
    json shards = json::array();
    for (const auto& shard : s.shards) shards.push_back(shard_to_json(shard));
    splits[name] = json{{"count", s.count}, {"class_counts", s.class_counts}, {"shards", shards}};
  }
  json j{{"format", kDatasetFormat},
         {"version", kDatasetVersion},
         {"classes", m.classes},
         {"image", {{"height", m.height}, {"width", m.width}, {"channels", m.channels}}},
         {"normalization", {{"mean", m.mean}, {"std", m.std}}},
         {"splits", splits},
         {"source", {{"kind", m.source_kind}, {"path", m.source_path}}},
         {"packer", {{"name", "fer-pack"}, {"version", m.packer_version}, {"args", m.packer_args}}}};
  // Class names and paths come from folder names, which need not be UTF-8: invalid bytes are
  // replaced (U+FFFD) rather than failing the whole pack.
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

Manifest parse_manifest(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers like 1e400
    throw DataError(source + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw DataError(source + ": not a JSON object");
  const auto format = get<std::string>(j, "format", "", source);
  if (format != kDatasetFormat) {
    throw DataError(source + ": format is \"" + format + "\", expected \"" + kDatasetFormat + "\"",
                    "is this a folder written by fer-pack?");
  }
  const int version = get<int>(j, "version", "", source);
  if (version != kDatasetVersion) {
    throw DataError(source + ": dataset format version " + std::to_string(version) +
                        " is not supported (this build reads version " +
                        std::to_string(kDatasetVersion) + ")",
                    "repack the dataset with this version of fer-pack");
  }
  Manifest m;
  m.classes = get<std::vector<std::string>>(j, "classes", "", source);
  if (m.classes.empty() || m.classes.size() > kMaxClasses) {
    throw DataError(source + ": \"classes\" must list 1.." + std::to_string(kMaxClasses) +
                    " names");
  }
  for (const auto& name : m.classes) {
    if (name.empty() || name.size() > kMaxNameBytes) {
      throw DataError(source + ": class names must have 1.." + std::to_string(kMaxNameBytes) +
                      " bytes");
    }
  }
  if (std::set<std::string>(m.classes.begin(), m.classes.end()).size() != m.classes.size()) {
    throw DataError(source + ": \"classes\" has duplicate names");
  }
  const json& image = j.contains("image") ? j["image"] : json();
  m.height = get<int>(image, "height", "image.", source);
  m.width = get<int>(image, "width", "image.", source);
  m.channels = get<int>(image, "channels", "image.", source);
  if (m.height < 1 || m.height > kMaxSide || m.width < 1 || m.width > kMaxSide ||
      (m.channels != 1 && m.channels != 3)) {
    throw DataError(source + ": image shape " + std::to_string(m.height) + "x" +
                    std::to_string(m.width) + "x" + std::to_string(m.channels) +
                    " is out of range (sides 1.." + std::to_string(kMaxSide) +
                    ", channels 1 or 3)");
  }
  const json& norm = j.contains("normalization") ? j["normalization"] : json();
  m.mean = get<std::vector<double>>(norm, "mean", "normalization.", source);
  m.std = get<std::vector<double>>(norm, "std", "normalization.", source);
  if (m.mean.size() != static_cast<std::size_t>(m.channels) || m.std.size() != m.mean.size()) {
    throw DataError(source + ": normalization needs one mean and std per channel (" +
                    std::to_string(m.channels) + ")");
  }
  for (std::size_t c = 0; c < m.std.size(); ++c) {
    if (!std::isfinite(m.mean[c]) || !std::isfinite(m.std[c]) || !(m.std[c] > 0.0)) {
      throw DataError(source + ": normalization of channel " + std::to_string(c) +
                      " is not finite with std > 0");
    }
  }
  if (!j.contains("splits") || !j["splits"].is_object() || j["splits"].empty()) {
    throw DataError(source + ": missing \"splits\"");
  }
  std::set<std::string> shard_files;
  for (const auto& [name, js] : j["splits"].items()) {
    const std::string path = "splits." + name + ".";
    SplitInfo s;
    s.count = get<std::int64_t>(js, "count", path, source);
    s.class_counts = get<std::vector<std::int64_t>>(js, "class_counts", path, source);
    if (s.count < 0 || s.count > kMaxImages || s.count > kMaxSplitBytes / m.image_bytes()) {
      throw DataError(source + ": \"" + path + "count\" " + std::to_string(s.count) +
                      " is out of range (at most " + std::to_string(kMaxImages) + " images and " +
                      std::to_string(kMaxSplitBytes >> 30) + " GiB of pixels per split)");
    }
    // Each class count is bounded first, so the sum below cannot overflow.
    if (s.class_counts.size() != m.classes.size() ||
        std::any_of(s.class_counts.begin(), s.class_counts.end(),
                    [](std::int64_t c) { return c < 0 || c > kMaxImages; }) ||
        std::accumulate(s.class_counts.begin(), s.class_counts.end(), std::int64_t{0}) != s.count) {
      throw DataError(source + ": \"" + path + "class_counts\" must have one count per class " +
                      "adding up to the split count");
    }
    if (!js.contains("shards") || !js["shards"].is_array()) {
      throw DataError(source + ": missing \"" + path + "shards\"");
    }
    if (js["shards"].size() > kMaxShards) {
      throw DataError(source + ": split '" + name + "' lists more than " +
                      std::to_string(kMaxShards) + " shards");
    }
    std::int64_t total = 0;
    for (const auto& jshard : js["shards"]) {
      ShardInfo shard;
      shard.file = get<std::string>(jshard, "file", path + "shards[].", source);
      shard.count = get<std::int64_t>(jshard, "count", path + "shards[].", source);
      shard.bytes = get<std::int64_t>(jshard, "bytes", path + "shards[].", source);
      shard.checksum = get<std::string>(jshard, "checksum", path + "shards[].", source);
      if (shard.file.size() > kMaxNameBytes || !is_plain_file_name(shard.file)) {
        throw DataError(source + ": shard name \"" + shard.file +
                            "\" is not a plain file name inside the dataset folder",
                        "shard names may not contain '/', '\\' or '..'");
      }
      if (!shard_files.insert(shard.file).second) {
        throw DataError(source + ": shard \"" + shard.file + "\" is listed twice");
      }
      if (shard.count < 0 || shard.count > s.count || shard.bytes < 0) {
        throw DataError(source + ": shard \"" + shard.file + "\" has an invalid count or size");
      }
      total += shard.count;
      s.shards.push_back(std::move(shard));
    }
    if (total != s.count) {
      throw DataError(source + ": shard counts of split '" + name + "' add up to " +
                      std::to_string(total) + ", not " + std::to_string(s.count));
    }
    m.splits.emplace(name, std::move(s));
  }
  // Informational fields: read when present, with the same type checks.
  const json& src = j.contains("source") ? j["source"] : json();
  if (src.is_object()) {
    if (src.contains("kind")) m.source_kind = get<std::string>(src, "kind", "source.", source);
    if (src.contains("path")) m.source_path = get<std::string>(src, "path", "source.", source);
  }
  const json& packer = j.contains("packer") ? j["packer"] : json();
  if (packer.is_object()) {
    if (packer.contains("version")) {
      m.packer_version = get<std::string>(packer, "version", "packer.", source);
    }
    if (packer.contains("args")) {
      m.packer_args = get<std::vector<std::string>>(packer, "args", "packer.", source);
    }
  }
  return m;
}

Manifest load_manifest(const std::filesystem::path& dataset_dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dataset_dir, ec)) {
    throw DataError("dataset folder " + dataset_dir.string() + " does not exist",
                    "pack one with fer-pack, or check the path");
  }
  const auto path = dataset_dir / kManifestName;
  if (!std::filesystem::exists(path, ec)) {
    throw DataError(dataset_dir.string() + " has no " + kManifestName,
                    "is this a folder written by fer-pack?");
  }
  return parse_manifest(read_file(path), path.string());
}

}  // namespace fer
