// libFuzzer target: the YAML config loader (src/common/config.*) filling TrainConfig
// (src/train/train_config.*), then validate(). A config that loads must print as YAML that loads
// back to the same YAML. Input: YAML text; lines after a line "--set" are overrides "a.b=c".
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/errors.h"
#include "train/train_config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string yaml(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> overrides;
  const auto marker = yaml.find("\n--set\n");
  if (marker != std::string::npos) {
    std::string rest = yaml.substr(marker + 7);
    yaml.resize(marker + 1);
    std::size_t at = 0;
    while (at <= rest.size()) {
      const auto end = rest.find('\n', at);
      const std::string line = rest.substr(at, end == std::string::npos ? std::string::npos : end - at);
      if (!line.empty()) overrides.push_back(line);
      if (end == std::string::npos) break;
      at = end + 1;
    }
  }
  fer::TrainConfig config;
  std::string printed;
  try {
    fer::ConfigSchema schema;
    config.describe(schema);
    schema.apply_yaml(yaml, "fuzz.yaml");
    for (const auto& o : overrides) schema.apply_override(o);
    config.validate();
    printed = schema.to_yaml();
  } catch (const fer::Error&) {
    return 0;
  }
  fer::TrainConfig again;
  fer::ConfigSchema schema;
  again.describe(schema);
  schema.apply_yaml(printed, "fuzz-printed.yaml");  // must not throw
  again.validate();
  if (schema.to_yaml() != printed) __builtin_trap();
  return 0;
}
