#include "progress.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>

namespace fer::tools {

Progress::Progress(std::string label, std::int64_t total, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      tty_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  if (!finished_ && tty_ && done_ > 0) std::fputc('\n', stderr);
}

void Progress::update(std::int64_t done) {
  done_ = done;
  const auto now = std::chrono::steady_clock::now();
  const auto period = tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(5000);
  if (now - last_draw_ >= period) {
    last_draw_ = now;
    draw(false);
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

void Progress::draw(bool final) {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = seconds > 0 ? done_ / seconds : 0.0;
  char eta[32] = "";
  if (total_ > 0 && rate > 0 && !final) {
    std::snprintf(eta, sizeof(eta), " ETA %.0fs", (total_ - done_) / rate);
  }
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled =
        total_ > 0 ? static_cast<int>(kWidth * std::min<double>(1.0, double(done_) / total_)) : 0;
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r%-8s [%s] %lld/%lld %s  %.0f %s/s%s\033[K%s", label_.c_str(),
                 bar.c_str(), static_cast<long long>(done_), static_cast<long long>(total_),
                 unit_.c_str(), rate, unit_.c_str(), eta, final ? "\n" : "");
    std::fflush(stderr);
  } else {
    spdlog::info("{}: {}/{} {} ({:.0f} {}/s){}", label_, done_, total_, unit_, rate, unit_, eta);
  }
}

}  // namespace fer::tools
