// Timeline tracing: named spans of this process's threads, exported as Chrome-trace JSON
// ("traceEvents", ph "X"), the format Perfetto (ui.perfetto.dev) and chrome://tracing open.
// DESIGN.md "Checkpoints and outputs": the optional timeline of step phases per rank.
//
// One recorder per process (like a profiler: the communication thread records into it without
// being handed anything). Off by default; while off a Span costs one relaxed atomic load and a
// branch. start() allocates a fixed-capacity buffer: recording never allocates, never locks, and
// never grows; events past the capacity are dropped and counted.
//
// Threading: Span, record() and ScopedLabel are safe from any thread. start() and stop() must be
// called while no span is being recorded (the trainer calls them between steps, after every
// collective it issued has been waited for: a Work's completion orders the communication thread's
// writes before the waiter's reads).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fer::trace {

// The thread a span is drawn on (the Chrome-trace "tid").
enum class Track : std::int32_t {
  kCompute = 0,  // the training thread: data wait, forward, backward, optimizer, eval, ...
  kComm = 1,     // the communicator's thread: collectives from start to end
};

// One complete span. `name` must outlive the recording (string literals only).
struct Event {
  const char* name = nullptr;
  std::int64_t index = -1;    // e.g. the gradient bucket; >= 0 is appended to the name
  std::int64_t step = -1;     // the training step it belongs to (-1: none)
  std::int64_t start_ns = 0;  // since start()
  std::int64_t dur_ns = 0;
  Track track = Track::kCompute;
};

struct Recording {
  std::vector<Event> events;  // in recording order (not sorted by start)
  std::int64_t dropped = 0;   // events past the capacity
};

namespace detail {
extern std::atomic<bool> g_active;
}

// True while recording (between start() and stop()). One relaxed load.
inline bool active() { return detail::g_active.load(std::memory_order_relaxed); }

// Starts recording into a new buffer of `capacity` events.
void start(std::size_t capacity);
// Stops recording and returns what was recorded (empty if never started).
Recording stop();

// Times are measured from the last reset_clock() (from the recorder's first use otherwise).
// Processes that call it right after finishing one collective get timelines that line up.
void reset_clock();
// Nanoseconds since that origin on the steady clock.
std::int64_t now_ns();

// The step later events belong to (set by the training loop before each step).
void set_step(std::int64_t step);
std::int64_t current_step();

// Records one span [start_ns, end_ns) when active.
void record(const char* name, std::int64_t index, std::int64_t step, Track track,
            std::int64_t start_ns, std::int64_t end_ns);

// A span of the calling code, on `track`, from construction to end() or destruction.
class Span {
 public:
  explicit Span(const char* name, std::int64_t index = -1, Track track = Track::kCompute) {
    if (active()) {
      name_ = name;
      index_ = index;
      track_ = track;
      step_ = current_step();
      start_ns_ = now_ns();
    }
  }
  ~Span() { end(); }
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;

  // Ends the span now (idempotent).
  void end() {
    if (name_) {
      record(name_, index_, step_, track_, start_ns_, now_ns());
      name_ = nullptr;
    }
  }

 private:
  const char* name_ = nullptr;  // null: not recording
  std::int64_t index_ = -1;
  std::int64_t step_ = -1;
  std::int64_t start_ns_ = 0;
  Track track_ = Track::kCompute;
};

// What the calling thread's collectives are for ("grad allreduce bucket" 3): a communicator that
// runs collectives on its own thread names their spans with the label current on the issuing
// thread when they were issued. Nests; restores the previous label on destruction.
struct Label {
  const char* name = nullptr;  // null: no label (the communicator uses the op's name)
  std::int64_t index = -1;
};
Label current_label();

class ScopedLabel {
 public:
  explicit ScopedLabel(const char* name, std::int64_t index = -1);
  ~ScopedLabel();
  ScopedLabel(const ScopedLabel&) = delete;
  ScopedLabel& operator=(const ScopedLabel&) = delete;

 private:
  Label previous_;
};

// The events of one process as a Chrome-trace JSON object {"traceEvents": [...]}: one ph "X"
// event per span (ts and dur in microseconds, pid = `pid`, tid = the track, args {step, index}),
// plus metadata naming the process "rank <pid>" and its threads "compute" / "communication", and
// "otherData": {"dropped_events": N}.
std::string chrome_trace_json(const Recording& recording, int pid);

// Merges Chrome-trace JSON objects (chrome_trace_json outputs) into one, events concatenated.
// Throws std::runtime_error naming the part that does not parse.
std::string merge_chrome_traces(const std::vector<std::string>& parts);

}  // namespace fer::trace
