#include "train/timeline.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/fs_util.h"
#include "common/trace.h"
#include "dist/planes.h"

namespace fs = std::filesystem;

namespace fer {
Timeline::Timeline(const TimelineOptions& options, const fs::path& run_dir, ControlPlane& control)
    : path_(options.path.empty() ? run_dir / "timeline.json" : options.path),
      run_dir_(run_dir),
      control_(control),
      rank_(control.rank()),
      world_(control.size()),
      enabled_(!options.path.empty()),
      first_step_(options.first_step),
      steps_(options.steps) {
  std::vector<std::int64_t> agreed{std::int64_t{enabled_}, first_step_, steps_};
  control_.allreduce(agreed, ReduceOp::kMax, "timeline agreement");
  enabled_ = agreed[0] != 0;
  first_step_ = agreed[1];
  steps_ = agreed[2];
  // Every rank leaves the all-reduce at about the same time: a common origin for all timelines.
  trace::reset_clock();
  enabled_ = enabled_ && steps_ > 0;
  if (enabled_ && rank_ == 0) {
    spdlog::info("timeline: recording {} steps from {} on every rank -> {}", steps_,
                 first_step_ < 0 ? std::string("the first") : "step " + std::to_string(first_step_),
                 path_.string());
  }
}

Timeline::~Timeline() {
  if (recording_) trace::stop();  // a run stopped early: nothing is written
}

void Timeline::before_step(std::int64_t step) {
  if (!enabled_ || done_) return;
  if (first_step_ < 0) first_step_ = step;
  if (!recording_ && step >= first_step_) {
    trace::set_step(step);
    trace::start(static_cast<std::size_t>(steps_) * kEventsPerStep + 4096);
    recording_ = true;
  }
  if (!recording_) return;
  if (step >= first_step_ + steps_) {
    write();
    return;
  }
  trace::set_step(step);
}

void Timeline::finish() {
  if (recording_) write();
}

void Timeline::write() {
  const trace::Recording recording = trace::stop();
  recording_ = false;
  done_ = true;
  const fs::path dir = run_dir_ / "timeline";
  const fs::path mine = dir / ("rank" + std::to_string(rank_) + ".json");
  // The timeline is an aid: failing to write it is a warning, never the end of the run.
  try {
    fs::create_directories(dir);
    write_file_atomic(mine, trace::chrome_trace_json(recording, rank_));
  } catch (const std::exception& e) {
    spdlog::warn("timeline: could not write {}: {}", mine.string(), e.what());
  }
  if (recording.dropped > 0) {
    spdlog::warn("timeline: {} spans past the buffer of {} were dropped", recording.dropped,
                 recording.events.size());
  }
  control_.barrier("timeline barrier (every rank's part is on disk)");
  if (rank_ != 0) return;
  std::vector<std::string> parts;
  for (int r = 0; r < world_; ++r) {
    const fs::path part = dir / ("rank" + std::to_string(r) + ".json");
    try {
      parts.push_back(read_file(part));
    } catch (const std::exception& e) {
      spdlog::warn(
          "timeline: rank {}'s part is missing ({}); is the run folder shared by all "
          "nodes?",
          r, e.what());
    }
  }
  try {
    write_file_atomic(path_, trace::merge_chrome_traces(parts));
    std::error_code ec;
    fs::remove_all(dir, ec);
    spdlog::info(
        "timeline: {} ({} rank(s)); open it in https://ui.perfetto.dev or "
        "chrome://tracing",
        path_.string(), parts.size());
  } catch (const std::exception& e) {
    spdlog::warn("timeline: could not write {}: {}", path_.string(), e.what());
  }
}

}  // namespace fer
