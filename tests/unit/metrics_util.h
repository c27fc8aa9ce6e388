// Reading a run's metrics.jsonl in tests.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fer::testing {

// The records of RUN/metrics.jsonl without their wall-clock fields (images_per_s, seconds), so
// that two runs of the same training compare equal.
inline std::vector<nlohmann::json> numeric_metrics(const std::filesystem::path& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    j.erase("images_per_s");
    j.erase("seconds");
    out.push_back(j);
  }
  return out;
}

}  // namespace fer::testing
