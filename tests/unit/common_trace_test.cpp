// Timeline tracing: nothing is recorded while off, spans of two threads land on their tracks,
// the buffer is bounded, and the Chrome-trace JSON is well-formed and merges.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "common/trace.h"

using json = nlohmann::json;

namespace fer::trace {
namespace {

TEST(Trace, SpansAreNotRecordedWhileOff) {
  stop();
  { const Span span("off"); }
  record("off", -1, -1, Track::kCompute, 0, 10);
  EXPECT_FALSE(active());
  start(16);
  const Recording r = stop();
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(r.dropped, 0);
}

TEST(Trace, SpansOfTwoThreadsAreRecordedOnTheirTracksWithLabelsAndSteps) {
  start(64);
  set_step(7);
  {
    const Span outer("backward");
    std::thread comm([] { const Span span("grad allreduce bucket", 2, Track::kComm); });
    comm.join();
    const ScopedLabel label("syncbn allreduce");
    EXPECT_STREQ(current_label().name, "syncbn allreduce");
    {
      const ScopedLabel inner("grad allreduce bucket", 1);
      EXPECT_EQ(current_label().index, 1);
    }
    EXPECT_STREQ(current_label().name, "syncbn allreduce");
  }
  EXPECT_EQ(current_label().name, nullptr);
  const Recording r = stop();
  ASSERT_EQ(r.events.size(), 2u);
  const Event& comm = r.events[0];  // ends first
  const Event& backward = r.events[1];
  EXPECT_STREQ(comm.name, "grad allreduce bucket");
  EXPECT_EQ(comm.index, 2);
  EXPECT_EQ(comm.track, Track::kComm);
  EXPECT_STREQ(backward.name, "backward");
  EXPECT_EQ(backward.track, Track::kCompute);
  EXPECT_EQ(backward.step, 7);
  EXPECT_GE(comm.start_ns, backward.start_ns);
  EXPECT_LE(comm.start_ns + comm.dur_ns, backward.start_ns + backward.dur_ns);
}

TEST(Trace, TheBufferIsBoundedAndCountsWhatItDrops) {
  start(3);
  for (int i = 0; i < 10; ++i) {
    Span span("step");
    span.end();
    span.end();  // idempotent
  }
  const Recording r = stop();
  EXPECT_EQ(r.events.size(), 3u);
  EXPECT_EQ(r.dropped, 7);
}

TEST(Trace, ChromeTraceJsonIsWellFormedAndMerges) {
  Recording r;
  r.events.push_back({"forward", -1, 3, 1500, 2500, Track::kCompute});
  r.events.push_back({"grad allreduce bucket", 4, 3, 3000, 0, Track::kComm});
  r.dropped = 1;
  const json one = json::parse(chrome_trace_json(r, 1));
  int complete = 0;
  for (const auto& e : one.at("traceEvents")) {
    EXPECT_EQ(e.at("pid"), 1);
    if (e.at("ph") == "M") continue;
    ++complete;
    EXPECT_EQ(e.at("ph"), "X");
    EXPECT_GE(e.at("ts").get<double>(), 0.0);
    EXPECT_GE(e.at("dur").get<double>(), 0.0);
  }
  EXPECT_EQ(complete, 2);
  const auto& events = one.at("traceEvents");
  const auto find = [&](const std::string& name) {
    for (const auto& e : events) {
      if (e.at("name") == name) return e;
    }
    return json();
  };
  EXPECT_DOUBLE_EQ(find("forward").at("ts").get<double>(), 1.5);  // microseconds
  EXPECT_DOUBLE_EQ(find("forward").at("dur").get<double>(), 2.5);
  EXPECT_EQ(find("forward").at("tid"), 0);
  EXPECT_EQ(find("grad allreduce bucket 4").at("tid"), 1);
  EXPECT_EQ(find("grad allreduce bucket 4").at("args").at("index"), 4);
  EXPECT_EQ(find("grad allreduce bucket 4").at("args").at("step"), 3);

  const json merged =
      json::parse(merge_chrome_traces({chrome_trace_json(r, 0), chrome_trace_json(r, 1)}));
  EXPECT_EQ(merged.at("traceEvents").size(), 2 * events.size());
  EXPECT_EQ(merged.at("otherData").at("dropped_events"), 2);
  EXPECT_THROW(merge_chrome_traces({"{not json"}), std::runtime_error);
}

}  // namespace
}  // namespace fer::trace
