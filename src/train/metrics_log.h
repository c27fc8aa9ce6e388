// <run>/metrics.jsonl: one JSON object per line (step and epoch records), flushed per record.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>

namespace fer {

class MetricsLog {
 public:
  // A fresh run (keep_through_step < 0) starts an empty file. A resumed run keeps only the records
  // with step <= keep_through_step and, of the epoch records, those of epochs before first_epoch
  // (it replays the rest; a run resumed mid-epoch writes that epoch's record again); a torn last
  // line from a crash is dropped. Throws IoError.
  MetricsLog(const std::filesystem::path& path, std::int64_t keep_through_step,
             std::int64_t first_epoch);
  void append(const nlohmann::json& record);  // throws IoError (disk full)

 private:
  std::filesystem::path path_;
  std::ofstream out_;
};

}  // namespace fer
