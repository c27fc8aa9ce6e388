#include "common/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <vector>

#include "common/errors.h"

namespace fer {
namespace {
// The line format of this process, fixed by init_logging (the rank is part of it).
std::string& line_pattern() {
  static std::string pattern = "[%H:%M:%S.%e] [r0] [%^%l%$] %v";
  return pattern;
}
}  // namespace

void init_logging(const LogOptions& options) {
  const auto level = spdlog::level::from_str(options.level);
  if (level == spdlog::level::off && options.level != "off") {
    throw ConfigError("unknown log level '" + options.level + "'",
                      "use one of trace, debug, info, warn, error, off");
  }
  std::vector<spdlog::sink_ptr> sinks;
  if (options.rank == 0 || options.console_on_all_ranks) {
    sinks.push_back(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  }
  if (!options.file.empty()) {
    try {
      sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(options.file));
    } catch (const spdlog::spdlog_ex& e) {
      throw IoError("cannot open log file " + options.file + ": " + e.what());
    }
  }
  auto logger = std::make_shared<spdlog::logger>("fer", sinks.begin(), sinks.end());
  line_pattern() = "[%H:%M:%S.%e] [r" + std::to_string(options.rank) + "] [%^%l%$] %v";
  logger->set_pattern(line_pattern());
  logger->set_level(level);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
}

void add_log_file(const std::string& path) {
  try {
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path);
    auto logger = spdlog::default_logger();
    sink->set_pattern(line_pattern());
    logger->sinks().push_back(sink);
  } catch (const spdlog::spdlog_ex& e) {
    throw IoError("cannot open log file " + path + ": " + e.what());
  }
}

bool RateLimiter::allow(long* suppressed) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto now = std::chrono::steady_clock::now();
  if (first_ || now - last_ >= period_) {
    first_ = false;
    last_ = now;
    if (suppressed) *suppressed = suppressed_;
    suppressed_ = 0;
    return true;
  }
  ++suppressed_;
  return false;
}

}  // namespace fer
