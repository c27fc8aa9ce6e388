// Progress reporting for long work: a redrawn bar with rate and ETA when stderr is a terminal,
// a plain log line every few seconds otherwise (logs, CI). Single-threaded use.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace fer::tools {

class Progress {
 public:
  // `unit` names what is counted ("images"). total <= 0 means unknown.
  Progress(std::string label, std::int64_t total, std::string unit = "images");
  ~Progress();
  // Cheap to call per item: redraws at most every 100 ms (terminal) or 5 s (plain).
  void update(std::int64_t done);
  // Draws the final state and ends the line.
  void finish();

 private:
  void draw(bool final);
  std::string label_;
  std::string unit_;
  std::int64_t total_;
  std::int64_t done_ = 0;
  bool tty_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace fer::tools
