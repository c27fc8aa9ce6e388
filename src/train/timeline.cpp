#include "train/timeline.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/errors.h"
#include "common/fs_util.h"
#include "common/trace.h"
#include "dist/communicator.h"
#include "dist/mpi_context.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

// A max all-reduce that cannot hang (the trainer's pattern: wait with the timeout, then abort).
void max_over_ranks(Communicator& comm, at::Tensor& t, double timeout_s, const char* what) {
  auto work = comm.allreduce_async(t, ReduceOp::kMax);
  if (!work->wait_for(timeout_s)) {
    abort_job(static_cast<int>(ExitCode::kComm),
              std::string(what) + " timed out after " + std::to_string(timeout_s) +
                  " s: " + work->describe() + " (another rank died or hangs)");
  }
  work->wait();
}

}  // namespace

Timeline::Timeline(const TimelineOptions& options, const fs::path& run_dir, Communicator* comm,
                   double timeout_s)
    : path_(options.path.empty() ? run_dir / "timeline.json" : options.path),
      run_dir_(run_dir),
      comm_(comm),
      timeout_s_(timeout_s),
      rank_(comm ? comm->rank() : 0),
      world_(comm ? comm->size() : 1),
      enabled_(!options.path.empty()),
      first_step_(options.first_step),
      steps_(options.steps) {
  if (comm_ && world_ > 1) {
    at::Tensor agreed = torch::tensor({std::int64_t{enabled_}, first_step_, steps_}, torch::kInt64);
    max_over_ranks(*comm_, agreed, timeout_s_, "timeline agreement all-reduce");
    enabled_ = agreed[0].item<std::int64_t>() != 0;
    first_step_ = agreed[1].item<std::int64_t>();
    steps_ = agreed[2].item<std::int64_t>();
  }
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
  if (comm_ && world_ > 1) {  // every rank's part is on disk
    at::Tensor done = torch::zeros({1}, torch::kInt64);
    max_over_ranks(*comm_, done, timeout_s_, "timeline barrier");
  }
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
