#include "data/manifest.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <numeric>
#include <set>

#include "common/errors.h"
#include "common/fs_util.h"

namespace fer {
namespace {

using nlohmann::json;

// Limits that keep a hostile manifest from driving huge allocations.
constexpr int kMaxSide = 4096;
constexpr std::int64_t kMaxImages = std::int64_t{1} << 32;
constexpr std::size_t kMaxClasses = 256;  // labels are uint8

json shard_to_json(const ShardInfo& s) {
  return json{{"file", s.file}, {"count", s.count}, {"bytes", s.bytes}, {"checksum", s.checksum}};
}

// Typed access with an error that names the key path.
template <typename T>
T get(const json& j, const std::string& key, const std::string& path, const std::string& source) {
  if (!j.is_object() || !j.contains(key)) {
    throw DataError(source + ": missing \"" + path + key + "\"");
  }
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    throw DataError(source + ": \"" + path + key + "\" has the wrong type (" +
                    j.at(key).dump().substr(0, 60) + ")");
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
  } catch (const json::parse_error& e) {
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
    if (s.count < 0 || s.count > kMaxImages) {
      throw DataError(source + ": \"" + path + "count\" is out of range");
    }
    if (s.class_counts.size() != m.classes.size() ||
        std::accumulate(s.class_counts.begin(), s.class_counts.end(), std::int64_t{0}) !=
            s.count ||
        std::any_of(s.class_counts.begin(), s.class_counts.end(),
                    [](std::int64_t c) { return c < 0; })) {
      throw DataError(source + ": \"" + path + "class_counts\" must have one count per class " +
                      "adding up to the split count");
    }
    if (!js.contains("shards") || !js["shards"].is_array()) {
      throw DataError(source + ": missing \"" + path + "shards\"");
    }
    std::int64_t total = 0;
    for (const auto& jshard : js["shards"]) {
      ShardInfo shard;
      shard.file = get<std::string>(jshard, "file", path + "shards[].", source);
      shard.count = get<std::int64_t>(jshard, "count", path + "shards[].", source);
      shard.bytes = get<std::int64_t>(jshard, "bytes", path + "shards[].", source);
      shard.checksum = get<std::string>(jshard, "checksum", path + "shards[].", source);
      if (!is_plain_file_name(shard.file)) {
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
  if (j.contains("source") && j["source"].is_object()) {
    m.source_kind = j["source"].value("kind", "");
    m.source_path = j["source"].value("path", "");
  }
  if (j.contains("packer") && j["packer"].is_object()) {
    m.packer_version = j["packer"].value("version", "");
    m.packer_args = j["packer"].value("args", std::vector<std::string>{});
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
