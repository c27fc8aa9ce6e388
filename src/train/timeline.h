// The trainer's timeline (--timeline): a window of steps recorded on every rank with
// common/trace.h, written as one Chrome-trace JSON file (Perfetto, chrome://tracing).
//
// Every rank records its own spans into a preallocated buffer (about kEventsPerStep per step:
// bounded, and off is one branch per span). When the window closes (or the run ends first) every
// rank writes RUN_DIR/timeline/rank<R>.json atomically, the ranks meet in one all-reduce, and
// rank 0 merges the parts into `path` (atomically) and removes the folder. pid = rank; tid 0 =
// the training thread, tid 1 = the communicator's thread (MPI backend; the NCCL backend's
// collectives run on a CUDA stream and appear only as the compute thread's waits).
// A run stopped early (preemption, error) writes no timeline.
#pragma once

#include <cstdint>
#include <filesystem>

namespace fer {

class ControlPlane;

struct TimelineOptions {
  std::filesystem::path path;    // merged trace, written by rank 0; empty = no timeline
  std::int64_t first_step = -1;  // first step recorded; -1 = the first step this run trains
  std::int64_t steps = 100;      // steps recorded (with the evaluations and checkpoints between)
};

class Timeline {
 public:
  static constexpr std::size_t kEventsPerStep = 512;  // buffer per recorded step (ResNet9: ~50)

  // Collective (every rank, at the same point, on the control plane): the ranks agree on the
  // options (recording if any rank asked; the largest first_step and steps) and line up their
  // clocks.
  Timeline(const TimelineOptions& options, const std::filesystem::path& run_dir,
           ControlPlane& control);
  ~Timeline();
  Timeline(const Timeline&) = delete;
  Timeline& operator=(const Timeline&) = delete;

  // Before each training step (its data wait included): starts recording at the window's first
  // step, and writes the timeline when `step` is past the window. Writing is collective: every
  // rank calls this with the same steps.
  void before_step(std::int64_t step);
  // At the end of the run (every rank): writes the timeline if still recording.
  void finish();

 private:
  void write();

  std::filesystem::path path_;
  std::filesystem::path run_dir_;
  ControlPlane& control_;
  int rank_ = 0;
  int world_ = 1;
  bool enabled_ = false;
  bool recording_ = false;
  bool done_ = false;
  std::int64_t first_step_ = -1;
  std::int64_t steps_ = 0;
};

}  // namespace fer
