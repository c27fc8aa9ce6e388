// Rank-aware logging on top of spdlog.
//
// Every line carries the rank ("[r3]"). Only rank 0 writes to the console (stderr, so stdout stays
// free for a tool's real output); every rank may also write its own file. Threading: the default
// logger is thread-safe; init_logging() must be called once, before other threads log.
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <mutex>
#include <string>

namespace fer {

struct LogOptions {
  int rank = 0;                  // this process's rank, printed on every line
  std::string level = "info";    // trace|debug|info|warn|error|off
  std::string file;              // per-rank log file; empty = no file
  bool console_on_all_ranks = false;  // debugging aid: console output from every rank
};

// Installs the process-wide default logger. Throws ConfigError for an unknown level.
void init_logging(const LogOptions& options);

// Adds a file every later line of this process also goes to (e.g. <run>/logs/rank-3.log).
// Throws IoError when it cannot be opened.
void add_log_file(const std::string& path);

// Lets an event through at most once per `period`, counting what it suppressed. For warnings in
// hot loops. Thread-safe.
class RateLimiter {
 public:
  explicit RateLimiter(std::chrono::milliseconds period) : period_(period) {}
  // True when the caller should log now; `suppressed` receives how many were dropped since.
  bool allow(long* suppressed = nullptr);

 private:
  std::mutex mutex_;
  std::chrono::milliseconds period_;
  std::chrono::steady_clock::time_point last_{};
  bool first_ = true;
  long suppressed_ = 0;
};

}  // namespace fer
