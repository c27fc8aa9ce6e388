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

// The "loss" of every step record of RUN/metrics.jsonl, in order.
inline std::vector<double> step_losses(const std::filesystem::path& run) {
  std::vector<double> out;
  for (const auto& r : numeric_metrics(run)) {
    if (r["type"] == "step") out.push_back(r["loss"].get<double>());
  }
  return out;
}

// The epoch records of RUN/metrics.jsonl without their wall-clock fields, in order.
inline std::vector<nlohmann::json> epoch_records(const std::filesystem::path& run) {
  std::vector<nlohmann::json> out;
  for (auto& r : numeric_metrics(run)) {
    if (r["type"] == "epoch") out.push_back(std::move(r));
  }
  return out;
}

}  // namespace fer::testing
