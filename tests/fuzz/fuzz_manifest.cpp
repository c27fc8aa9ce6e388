// libFuzzer target: manifest.json parsing and validation (src/data/manifest.*). A manifest that
// parses must serialize and parse back to the same JSON (the writer and reader agree).
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/errors.h"
#include "data/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fer::Manifest manifest;
  try {
    manifest = fer::parse_manifest(text, "fuzz/manifest.json");
  } catch (const fer::DataError&) {
    return 0;
  }
  // Invariants the rest of the code relies on after a successful parse.
  if (manifest.image_bytes() <= 0 || manifest.classes.empty()) __builtin_trap();
  for (const auto& [name, split] : manifest.splits) {
    for (const auto& shard : split.shards) {
      if (!fer::is_plain_file_name(shard.file)) __builtin_trap();
    }
  }
  const std::string json = fer::manifest_to_json(manifest);
  const fer::Manifest back = fer::parse_manifest(json, "fuzz/roundtrip.json");
  if (fer::manifest_to_json(back) != json) __builtin_trap();
  return 0;
}
