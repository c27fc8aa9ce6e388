// Training progress for people: step, loss, lr, images/s and ETA.
//
// The trainer logs status_line() every train.log_every steps (every rank to its log file, rank 0
// also to the console). On a terminal, rank 0 additionally redraws a one-line bar of the epoch
// (at most kRedrawPerSecond times a second, on stderr like the log) that each log line scrolls
// above. Torch-free. Threading: one thread (the training loop).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace fer {

// "0:07", "12:34", "1:02:03"; "?" for a negative or non-finite value.
std::string format_eta(double seconds);

// What the bar and the line show.
struct ProgressSnapshot {
  std::int64_t epoch = 0;  // 0-based
  std::int64_t epochs = 1;
  std::int64_t step = 0;           // optimizer steps done, whole run
  std::int64_t last_step = 0;      // the run's final step
  std::int64_t step_in_epoch = 0;  // steps done in this epoch
  std::int64_t steps_per_epoch = 0;
  double loss = 0.0;
  double lr = 0.0;
  double images_per_s = 0.0;  // all ranks
  double eta_epoch_s = -1.0;  // until the end of this epoch's training steps
  double eta_run_s = -1.0;    // until the last step (evaluations included, averaged)
};

// "epoch 1/30 step 140/700 loss 1.2345 lr 1.200e-03 850 img/s ETA 3:45 (epoch 0:12)"
std::string progress_line(const ProgressSnapshot& s);
// "epoch 1/30 [#######.............] 40/100 loss 1.2345 lr 1.2e-03 850 img/s ETA 0:12 (run 3:45)"
// with a bar of `bar_width` cells.
std::string progress_bar(const ProgressSnapshot& s, int bar_width);

class ProgressReporter {
 public:
  static constexpr int kRedrawPerSecond = 5;

  // `draw_bar`: redraw a bar on stderr (rank 0 on a terminal). `first_step`: where this process
  // starts (a resumed run's ETA counts only its own steps).
  ProgressReporter(bool draw_bar, std::int64_t first_step, std::int64_t last_step,
                   std::int64_t steps_per_epoch, std::int64_t epochs);

  void start_epoch(std::int64_t epoch, std::int64_t first_step_in_epoch);
  // After each optimizer step: `step` steps are done; `images` trained by all ranks in it.
  void step(std::int64_t step, double loss, double lr, std::int64_t images);
  // The log line of the last step, `images_per_s` measured by the caller over its log window.
  std::string status_line(double images_per_s) const;
  // Erases the bar (before a log line, and at the end of the epoch). No-op without a bar.
  void clear();

 private:
  using Clock = std::chrono::steady_clock;
  ProgressSnapshot snapshot(double images_per_s) const;
  void draw();

  bool draw_bar_;
  bool drawn_ = false;
  std::int64_t first_step_;
  std::int64_t last_step_;
  std::int64_t steps_per_epoch_;
  std::int64_t epochs_;
  std::int64_t epoch_ = 0;
  std::int64_t first_step_in_epoch_ = 0;
  std::int64_t step_ = 0;
  double loss_ = 0.0;
  double lr_ = 0.0;
  std::int64_t epoch_images_ = 0;
  Clock::time_point run_start_;
  Clock::time_point epoch_start_;
  Clock::time_point last_draw_{};
};

}  // namespace fer
