#include "train/progress.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>

namespace fer {
namespace {

double seconds_between(std::chrono::steady_clock::time_point a,
                       std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buffer[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buffer, sizeof buffer, fmt, args);
  va_end(args);
  return buffer;
}

}  // namespace

std::string format_eta(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto total = static_cast<long long>(std::llround(seconds));
  const long long h = total / 3600, m = total / 60 % 60, s = total % 60;
  return h > 0 ? format("%lld:%02lld:%02lld", h, m, s) : format("%lld:%02lld", m, s);
}

std::string progress_line(const ProgressSnapshot& s) {
  return format("epoch %lld/%lld step %lld/%lld loss %.4f lr %.3e %.0f img/s ETA %s (epoch %s)",
                static_cast<long long>(s.epoch), static_cast<long long>(s.epochs),
                static_cast<long long>(s.step), static_cast<long long>(s.last_step), s.loss, s.lr,
                s.images_per_s, format_eta(s.eta_run_s).c_str(), format_eta(s.eta_epoch_s).c_str());
}

std::string progress_bar(const ProgressSnapshot& s, int bar_width) {
  const double fraction =
      s.steps_per_epoch > 0
          ? std::clamp(static_cast<double>(s.step_in_epoch) / s.steps_per_epoch, 0.0, 1.0)
          : 0.0;
  const int filled = static_cast<int>(fraction * bar_width);
  const std::string bar = std::string(filled, '#') + std::string(bar_width - filled, '.');
  return format("epoch %lld/%lld [%s] %lld/%lld loss %.4f lr %.1e %.0f img/s ETA %s (run %s)",
                static_cast<long long>(s.epoch), static_cast<long long>(s.epochs), bar.c_str(),
                static_cast<long long>(s.step_in_epoch), static_cast<long long>(s.steps_per_epoch),
                s.loss, s.lr, s.images_per_s, format_eta(s.eta_epoch_s).c_str(),
                format_eta(s.eta_run_s).c_str());
}

ProgressReporter::ProgressReporter(bool draw_bar, std::int64_t first_step, std::int64_t last_step,
                                   std::int64_t steps_per_epoch, std::int64_t epochs)
    : draw_bar_(draw_bar),
      first_step_(first_step),
      last_step_(last_step),
      steps_per_epoch_(steps_per_epoch),
      epochs_(epochs),
      step_(first_step),
      run_start_(Clock::now()),
      epoch_start_(run_start_) {}

void ProgressReporter::start_epoch(std::int64_t epoch, std::int64_t first_step_in_epoch) {
  epoch_ = epoch;
  first_step_in_epoch_ = first_step_in_epoch;
  epoch_images_ = 0;
  epoch_start_ = Clock::now();
}

void ProgressReporter::step(std::int64_t step, double loss, double lr, std::int64_t images) {
  step_ = step;
  loss_ = loss;
  lr_ = lr;
  epoch_images_ += images;
  if (!draw_bar_) return;
  const auto now = Clock::now();
  if (drawn_ && seconds_between(last_draw_, now) < 1.0 / kRedrawPerSecond) return;
  last_draw_ = now;
  draw();
}

ProgressSnapshot ProgressReporter::snapshot(double images_per_s) const {
  const auto now = Clock::now();
  ProgressSnapshot s;
  s.epoch = epoch_;
  s.epochs = epochs_;
  s.step = step_;
  s.last_step = last_step_;
  s.step_in_epoch = step_ - epoch_ * steps_per_epoch_;
  s.steps_per_epoch = steps_per_epoch_;
  s.loss = loss_;
  s.lr = lr_;
  s.images_per_s = images_per_s;
  // Rates of this process only (a resumed run's earlier steps took no time here). The run's rate
  // includes the evaluations and checkpoints so far, so its ETA accounts for the later ones.
  const std::int64_t done_in_epoch = s.step_in_epoch - first_step_in_epoch_;
  if (done_in_epoch > 0) {
    const double per_step = seconds_between(epoch_start_, now) / done_in_epoch;
    s.eta_epoch_s = per_step * static_cast<double>(steps_per_epoch_ - s.step_in_epoch);
  }
  const std::int64_t done = step_ - first_step_;
  if (done > 0) {
    s.eta_run_s = seconds_between(run_start_, now) / done * static_cast<double>(last_step_ - step_);
  }
  return s;
}

std::string ProgressReporter::status_line(double images_per_s) const {
  return progress_line(snapshot(images_per_s));
}

void ProgressReporter::draw() {
  const double elapsed = seconds_between(epoch_start_, Clock::now());
  const std::string text =
      progress_bar(snapshot(elapsed > 0 ? epoch_images_ / elapsed : 0.0), /*bar_width=*/24);
  // \r + erase line: redraw in place; the cursor stays on the bar's line.
  std::fprintf(stderr, "\r\033[K%s", text.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressReporter::clear() {
  if (!drawn_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace fer
