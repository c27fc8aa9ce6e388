#include "common/trace.h"

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace fer::trace {
namespace detail {
std::atomic<bool> g_active{false};
}  // namespace detail

namespace {

using Clock = std::chrono::steady_clock;

// The process's buffer. Slots are claimed with one fetch_add; a slot is written by the thread that
// claimed it only. Replaced only by start() (no span in flight then, see the header).
struct Buffer {
  std::unique_ptr<Event[]> events;
  std::size_t capacity = 0;
  std::atomic<std::size_t> next{0};
  std::atomic<Clock::rep> origin{Clock::now().time_since_epoch().count()};
};

Buffer& buffer() {
  static Buffer b;
  return b;
}

std::atomic<std::int64_t> g_step{-1};
thread_local Label t_label;

}  // namespace

void start(std::size_t capacity) {
  Buffer& b = buffer();
  detail::g_active.store(false, std::memory_order_relaxed);
  b.events = std::make_unique<Event[]>(capacity);
  b.capacity = capacity;
  b.next.store(0, std::memory_order_relaxed);
  detail::g_active.store(true, std::memory_order_release);
}

Recording stop() {
  detail::g_active.store(false, std::memory_order_relaxed);
  Buffer& b = buffer();
  Recording r;
  const std::size_t claimed = b.next.load(std::memory_order_acquire);
  const std::size_t kept = std::min(claimed, b.capacity);
  r.events.assign(b.events.get(), b.events.get() + kept);
  r.dropped = static_cast<std::int64_t>(claimed - kept);
  b.next.store(0, std::memory_order_relaxed);
  return r;
}

void reset_clock() {
  buffer().origin.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
}

std::int64_t now_ns() {
  const Clock::duration since_origin =
      Clock::now().time_since_epoch() -
      Clock::duration(buffer().origin.load(std::memory_order_relaxed));
  return std::chrono::duration_cast<std::chrono::nanoseconds>(since_origin).count();
}

void set_step(std::int64_t step) { g_step.store(step, std::memory_order_relaxed); }
std::int64_t current_step() { return g_step.load(std::memory_order_relaxed); }

void record(const char* name, std::int64_t index, std::int64_t step, Track track,
            std::int64_t start_ns, std::int64_t end_ns) {
  if (!active()) return;
  Buffer& b = buffer();
  const std::size_t slot = b.next.fetch_add(1, std::memory_order_relaxed);
  if (slot >= b.capacity) return;  // counted as dropped by stop()
  b.events[slot] =
      Event{name, index, step, start_ns, std::max<std::int64_t>(0, end_ns - start_ns), track};
}

Label current_label() { return t_label; }

ScopedLabel::ScopedLabel(const char* name, std::int64_t index) : previous_(t_label) {
  t_label = Label{name, index};
}
ScopedLabel::~ScopedLabel() { t_label = previous_; }

std::string chrome_trace_json(const Recording& recording, int pid) {
  using json = nlohmann::json;
  json events = json::array();
  events.push_back({{"name", "process_name"},
                    {"ph", "M"},
                    {"pid", pid},
                    {"tid", 0},
                    {"args", {{"name", "rank " + std::to_string(pid)}}}});
  events.push_back({{"name", "process_sort_index"},
                    {"ph", "M"},
                    {"pid", pid},
                    {"tid", 0},
                    {"args", {{"sort_index", pid}}}});
  const std::pair<Track, const char*> threads[] = {{Track::kCompute, "compute"},
                                                   {Track::kComm, "communication"}};
  for (const auto& [track, name] : threads) {
    events.push_back({{"name", "thread_name"},
                      {"ph", "M"},
                      {"pid", pid},
                      {"tid", static_cast<int>(track)},
                      {"args", {{"name", name}}}});
  }
  for (const Event& e : recording.events) {
    std::string name = e.name ? e.name : "?";
    json args = json::object();
    if (e.step >= 0) args["step"] = e.step;
    if (e.index >= 0) {
      name += " " + std::to_string(e.index);
      args["index"] = e.index;
    }
    events.push_back({{"name", name},
                      {"cat", e.track == Track::kComm ? "comm" : "compute"},
                      {"ph", "X"},
                      {"ts", static_cast<double>(e.start_ns) / 1e3},
                      {"dur", static_cast<double>(e.dur_ns) / 1e3},
                      {"pid", pid},
                      {"tid", static_cast<int>(e.track)},
                      {"args", args}});
  }
  json out{{"traceEvents", std::move(events)},
           {"displayTimeUnit", "ms"},
           {"otherData", {{"dropped_events", recording.dropped}}}};
  return out.dump();
}

std::string merge_chrome_traces(const std::vector<std::string>& parts) {
  using json = nlohmann::json;
  json events = json::array();
  std::int64_t dropped = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    json part;
    try {
      part = json::parse(parts[i]);
    } catch (const json::exception& e) {
      throw std::runtime_error("timeline part " + std::to_string(i) +
                               " does not parse: " + e.what());
    }
    for (auto& e : part.at("traceEvents")) events.push_back(std::move(e));
    if (part.contains("otherData")) dropped += part["otherData"].value("dropped_events", 0);
  }
  json out{{"traceEvents", std::move(events)},
           {"displayTimeUnit", "ms"},
           {"otherData", {{"dropped_events", dropped}}}};
  return out.dump();
}

}  // namespace fer::trace
