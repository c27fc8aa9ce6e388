#include "train/metrics_log.h"

#include <nlohmann/json.hpp>

#include <string>

#include "common/errors.h"
#include "common/fs_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace fer {

MetricsLog::MetricsLog(const fs::path& path, std::int64_t keep_through_step,
                       std::int64_t first_epoch)
    : path_(path) {
  if (keep_through_step >= 0 && fs::exists(path)) {
    std::ifstream in(path);
    std::string line, kept;
    while (std::getline(in, line)) {
      try {
        const json record = json::parse(line);
        const bool replayed_epoch = record.value("type", "") == "epoch" &&
                                    record.value("epoch", std::int64_t{0}) >= first_epoch;
        if (record.value("step", std::int64_t{0}) <= keep_through_step && !replayed_epoch) {
          kept += line + "\n";
        }
      } catch (const json::exception&) {
        // a torn last line from a crash: dropped
      }
    }
    write_file_atomic(path, kept);
  } else if (keep_through_step < 0) {
    write_file_atomic(path, "");
  }
  out_.open(path, std::ios::app);
  if (!out_) throw IoError("cannot open " + path.string() + " for writing");
}

void MetricsLog::append(const json& record) {
  out_ << record.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  out_.flush();
  if (!out_) throw IoError("cannot write " + path_.string() + " (disk full?)");
}

}  // namespace fer
