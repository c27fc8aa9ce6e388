// Property test of the plotting module (src/report/plot.h): whatever the series, every chart is
// drawn within a time bound. Each draw runs in a forked child under a deadline
// (common/subprocess.h), so a chart that never finishes fails the test by name instead of hanging
// the test binary. Issue 16: a dashed line whose values stayed at 1.0 spun forever.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/subprocess.h"
#include "report/plot.h"
#include "report/report.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

using report::Axis;
using report::BarChart;
using report::HeatMap;
using report::LineChart;
using report::Series;

// A chart takes milliseconds; the bound leaves room for a loaded 2-core CI machine.
constexpr double kDeadlineS = 5.0;
constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kMax = std::numeric_limits<double>::max();
constexpr double kDenormal = std::numeric_limits<double>::denorm_min();

// Runs `draw` in a forked child. Returns "" when it returned an image of `size` within the
// deadline, else what happened (killed at the deadline, crashed, threw, wrong image).
std::string draw_in_child(const std::function<cv::Mat()>& draw, cv::Size size) {
  std::fflush(nullptr);  // the child must not flush the parent's buffered output a second time
  const pid_t pid = ::fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    int code = 0;
    try {
      const cv::Mat image = draw();
      code = image.size() == size && image.type() == CV_8UC3 ? 0 : 3;
    } catch (...) {
      code = 4;
    }
    ::_exit(code);
  }
  const ChildResult r = wait_with_timeout(pid, kDeadlineS);
  if (r.succeeded()) return "";
  if (r.outcome == ChildOutcome::kTimedOut) {
    return "did not finish within " + std::to_string(static_cast<int>(kDeadlineS)) + " s (killed)";
  }
  if (r.outcome == ChildOutcome::kExited && r.exit_code == 3) return "image of the wrong size";
  if (r.outcome == ChildOutcome::kExited && r.exit_code == 4) return "threw an exception";
  return describe(r);
}

struct NamedValues {
  std::string name;
  std::vector<double> values;
};

std::vector<double> ramp(int n, double first, double step) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(first + step * i);
  return v;
}

// Hand-picked y series: the shapes that break range, tick and dash arithmetic.
std::vector<NamedValues> edge_series() {
  std::vector<NamedValues> s = {
      {"empty", {}},
      {"one point", {0.5}},
      {"all 0", std::vector<double>(6, 0.0)},
      {"all 1", std::vector<double>(6, 1.0)},
      {"all -3.5", std::vector<double>(6, -3.5)},
      {"accuracy reaching 1.0 (issue 16)", {0.5, 0.9, 1.0, 1.0, 1.0, 1.0}},
      {"accuracy at 1.0 for 11 of 15 epochs",
       {0.3, 0.6, 0.9, 0.95, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
      {"tiny range 1e-12 around 1", ramp(8, 1.0, 1e-12 / 7)},
      {"tiny range 1e-12 around 0", ramp(8, 0.0, 1e-12 / 7)},
      {"denormals", {kDenormal, 2 * kDenormal, 3 * kDenormal}},
      {"huge range 1e30", {-1e30, 0.0, 1e30, 5e29}},
      {"all 1e30", std::vector<double>(5, 1e30)},
      {"1e30 plus a tiny range", ramp(6, 1e30, 1e15)},
      {"largest doubles", {-kMax, kMax, 0.0, kMax}},
      {"NaN mixed in", {0.1, kNan, 0.3, kNan, 0.2}},
      {"inf mixed in", {0.1, kInf, 0.3, -kInf, 0.2}},
      {"all NaN", std::vector<double>(5, kNan)},
      {"all inf", std::vector<double>(5, kInf)},
      {"alternating 0 and 1", {0, 1, 0, 1, 0, 1, 0, 1}},
  };
  std::vector<double> many;  // thousands of points: a per-step curve of a long run
  std::mt19937_64 rng(16);
  std::normal_distribution<double> noise(0.0, 0.05);
  for (int i = 0; i < 5000; ++i) many.push_back(2.0 * std::exp(-i / 1500.0) + noise(rng));
  s.push_back({"5000 noisy points", many});
  std::vector<double> flat_many(5000, 1.0);
  s.push_back({"5000 points all 1.0", flat_many});
  return s;
}

// x positions for `n` points.
std::vector<NamedValues> x_layouts(std::size_t n) {
  const int k = static_cast<int>(n);
  std::vector<double> reversed = ramp(k, k, -1.0), same(n, 1.0), nan_x = ramp(k, 1, 1);
  if (!nan_x.empty()) nan_x[nan_x.size() / 2] = kNan;
  return {
      {"epochs 1..n", ramp(k, 1, 1)}, {"steps 0..n*1000", ramp(k, 0, 1000)}, {"all at x=1", same},
      {"decreasing", reversed},       {"x 1e30 apart", ramp(k, 0, 1e30)},    {"a NaN x", nan_x}};
}

struct NamedAxes {
  std::string name;
  Axis x, y;
};

std::vector<NamedAxes> axis_settings() {
  return {
      {"auto", {"x", {}, {}, false}, {"y", {}, {}, false}},
      {"report accuracy: x from 0 integer, y in [0,1]",
       {"epoch", 0.0, {}, true},
       {"accuracy", 0.0, 1.0, false}},
      {"integer ticks both", {"x", {}, {}, true}, {"y", {}, {}, true}},
      {"y fixed to one value", {"x", {}, {}, false}, {"y", 1.0, 1.0, false}},
      {"inverted bounds", {"x", 10.0, 0.0, false}, {"y", 1.0, 0.0, false}},
      {"NaN and inf bounds", {"x", kNan, kInf, false}, {"y", -kInf, kNan, false}},
      {"huge bounds", {"x", -kMax, kMax, true}, {"y", -1e300, 1e300, false}},
  };
}

struct Failure {
  std::string name, why;
};

void check_line_chart(const std::string& name, const LineChart& chart,
                      std::vector<Failure>* failures) {
  const cv::Size size(900, 520);
  const std::string why = draw_in_child([&] { return report::draw_line_chart(chart, size); }, size);
  if (!why.empty()) failures->push_back({name, why});
}

std::string report_failures(const std::vector<Failure>& failures, std::size_t checked) {
  std::string text =
      std::to_string(failures.size()) + " of " + std::to_string(checked) + " charts failed:\n";
  for (const auto& f : failures) text += "  " + f.name + ": " + f.why + "\n";
  return text;
}

// The exact chart of the user's run: fer-report's accuracy.png (train, validation, and the
// dashed validation macro-F1 in the same colour) with validation at 1.0 for the last epochs.
// Whether the old dash loop stalled depended on the pixel arithmetic: {0.5, 0.7, 1.0 x 6} hung
// it, {0.5, 0.9, 1.0 x 4} did not.
TEST(ReportPlotProperty, AccuracyChartWithValidationAtOneFinishes) {
  const std::vector<std::vector<double>> runs = {
      {0.5, 0.9, 1.0, 1.0, 1.0, 1.0},
      {0.5, 0.7, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0},
      {0.5, 0.58, 0.66, 0.74, 0.82, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0},
  };
  std::vector<Failure> failures;
  for (const std::vector<double>& val : runs) {
    LineChart chart;
    chart.title = "Accuracy per epoch";
    chart.x = {"epoch", 0.0, std::nullopt, true};
    chart.y = {"accuracy, macro-F1", 0.0, 1.0, false};
    const std::vector<double> epochs = ramp(static_cast<int>(val.size()), 1, 1);
    chart.series = {{"train", epochs, val, report::palette()[0], true, false},
                    {"validation", epochs, val, report::palette()[1], true, false},
                    {"validation macro-F1", epochs, val, report::palette()[1], true, true}};
    std::string name = "accuracy {";
    for (double v : val) name += std::to_string(v).substr(0, 4) + " ";
    check_line_chart(name + "}", chart, &failures);
  }
  EXPECT_TRUE(failures.empty()) << report_failures(failures, runs.size());
}

// Every edge series under every axis setting, solid and dashed, with markers.
TEST(ReportPlotProperty, EveryEdgeSeriesUnderEveryAxisSettingFinishes) {
  std::vector<Failure> failures;
  std::size_t checked = 0;
  for (const NamedValues& y : edge_series()) {
    for (const NamedAxes& axes : axis_settings()) {
      for (const NamedValues& x : x_layouts(y.values.size())) {
        LineChart chart;
        chart.title = y.name;
        chart.x = axes.x;
        chart.y = axes.y;
        chart.series = {{"solid", x.values, y.values, std::nullopt, true, false},
                        {"dashed", x.values, y.values, std::nullopt, false, true}};
        check_line_chart(y.name + " | x " + x.name + " | axes " + axes.name, chart, &failures);
        ++checked;
      }
    }
  }
  EXPECT_TRUE(failures.empty()) << report_failures(failures, checked);
}

// Random series from a fixed seed: random lengths, scales from 1e-15 to 1e30, offsets, and
// special values (0, 1, NaN, +-inf, denormals, the largest double) sprinkled in.
TEST(ReportPlotProperty, RandomSeriesFinish) {
  std::mt19937_64 rng(20240616);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const std::vector<double> specials = {0.0, 1.0, kNan, kInf, -kInf, kDenormal, kMax, -kMax};
  auto random_values = [&](std::size_t n) {
    const double scale = std::pow(10.0, -15.0 + 45.0 * unit(rng));
    const double offset = unit(rng) < 0.5 ? 0.0 : std::pow(10.0, -5.0 + 35.0 * unit(rng));
    const double special_rate = unit(rng) < 0.5 ? 0.0 : 0.2;
    const bool constant = unit(rng) < 0.2;
    std::vector<double> v;
    for (std::size_t i = 0; i < n; ++i) {
      if (unit(rng) < special_rate) {
        v.push_back(specials[rng() % specials.size()]);
      } else {
        v.push_back(constant ? offset : offset + scale * (unit(rng) - 0.5));
      }
    }
    return v;
  };
  std::vector<Failure> failures;
  constexpr int kCases = 150;
  const std::vector<NamedAxes> axes = axis_settings();
  for (int c = 0; c < kCases; ++c) {
    const std::size_t n = rng() % 4 == 0 ? rng() % 3000 : rng() % 40;
    LineChart chart;
    chart.title = "random " + std::to_string(c);
    const NamedAxes& a = axes[rng() % axes.size()];
    chart.x = a.x;
    chart.y = a.y;
    const int series = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < series; ++k) {
      std::vector<double> x = rng() % 2 ? ramp(static_cast<int>(n), 1, 1) : random_values(n);
      chart.series.push_back({"s" + std::to_string(k), x, random_values(n), std::nullopt,
                              rng() % 2 == 0, rng() % 2 == 0});
    }
    check_line_chart("random case " + std::to_string(c) + " (" + std::to_string(n) +
                         " points, axes " + a.name + ")",
                     chart, &failures);
  }
  EXPECT_TRUE(failures.empty()) << report_failures(failures, kCases);
}

TEST(ReportPlotProperty, BarChartsWithExtremeValuesFinish) {
  std::vector<Failure> failures;
  std::size_t checked = 0;
  const std::vector<NamedValues> values = {
      {"empty", {}},
      {"all 0", {0, 0, 0}},
      {"all 1", {1, 1, 1}},
      {"NaN and inf", {kNan, kInf, -kInf}},
      {"huge", {1e30, -1e30, kMax}},
      {"tiny", {1e-12, 2e-12, kDenormal}},
      {"200 categories", ramp(200, 0, 0.005)},
  };
  const std::vector<Axis> axes = {{"score", 0.0, 1.0, false},
                                  {"auto", {}, {}, false},
                                  {"flat", 1.0, 1.0, true},
                                  {"NaN", kNan, kNan, false}};
  for (const NamedValues& v : values) {
    for (const Axis& axis : axes) {
      BarChart chart;
      chart.title = v.name;
      chart.y = axis;
      chart.groups = {"a", "b", "c"};
      for (std::size_t i = 0; i < v.values.size(); ++i) {
        chart.categories.push_back("class " + std::to_string(i));
      }
      chart.values = {v.values, v.values, {}};  // the third group has no values at all
      const cv::Size size(900, 520);
      const std::string why =
          draw_in_child([&] { return report::draw_bar_chart(chart, size); }, size);
      if (!why.empty()) failures.push_back({"bars " + v.name + " | y " + axis.label, why});
      ++checked;
    }
  }
  EXPECT_TRUE(failures.empty()) << report_failures(failures, checked);
}

std::vector<std::vector<double>> square(int n, double fill) {
  std::vector<std::vector<double>> m;
  for (int r = 0; r < n; ++r) m.emplace_back(n, fill);
  return m;
}

TEST(ReportPlotProperty, HeatMapsWithExtremeValuesFinish) {
  std::vector<Failure> failures;
  std::size_t checked = 0;
  for (int n : {0, 1, 7, 60}) {
    for (double fill : {0.0, 1.0, kNan, kInf, -kInf, 1e30, -5.0}) {
      for (int shade_kind = 0; shade_kind < 3; ++shade_kind) {
        HeatMap map;
        map.title = "cm";
        map.values = square(n, fill);
        if (n > 0) map.values[0][0] = 3;  // one ordinary cell
        if (shade_kind == 1) map.shade = square(n, fill);
        if (shade_kind == 2 && n > 0) map.shade.resize(1);  // one empty row: shorter than values
        for (int i = 0; i < n; ++i) map.row_labels.push_back("class " + std::to_string(i));
        map.col_labels = map.row_labels;
        const cv::Size size(760, 700);
        const std::string why =
            draw_in_child([&] { return report::draw_heat_map(map, size); }, size);
        if (!why.empty()) {
          failures.push_back({"heat map " + std::to_string(n) + "x" + std::to_string(n) +
                                  " filled with " + std::to_string(fill) + ", shade kind " +
                                  std::to_string(shade_kind),
                              why});
        }
        ++checked;
      }
    }
  }
  EXPECT_TRUE(failures.empty()) << report_failures(failures, checked);
}

TEST(ReportPlotProperty, TicksAreFewFiniteAndIncreasingForAnyRange) {
  const std::vector<double> ends = {0,     1,    -1,    1e-12, 1e-300, kDenormal, 1e30,
                                    -1e30, kMax, -kMax, kNan,  kInf,   -kInf};
  for (double lo : ends) {
    for (double hi : ends) {
      for (bool integer_only : {false, true}) {
        const auto ticks = report::nice_ticks(lo, hi, 6, integer_only);
        char range[64];
        std::snprintf(range, sizeof range, "%g .. %g%s", lo, hi, integer_only ? " integer" : "");
        SCOPED_TRACE(range);
        EXPECT_LE(ticks.size(), 100u);
        for (std::size_t i = 0; i < ticks.size(); ++i) {
          EXPECT_TRUE(std::isfinite(ticks[i]));
          if (i > 0) {
            EXPECT_GT(ticks[i], ticks[i - 1]);
          }
        }
      }
    }
  }
}

// The user's reproducer end to end: a run folder whose validation accuracy stays at 1.0, through
// the fer-report binary under a deadline.
TEST(ReportPlotProperty, FerReportFinishesOnARunWhoseValidationStaysAtOne) {
  testing::TempFolder tmp("report_plot_property");
  const fs::path run = tmp / "run";
  fs::create_directories(run);
  std::ofstream metrics(run / "metrics.jsonl");
  const std::vector<double> acc = {0.5, 0.7, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0};  // hung the old code
  for (std::size_t e = 0; e < acc.size(); ++e) {
    const std::size_t step = (e + 1) * 13;
    metrics << "{\"type\":\"step\",\"step\":" << step << ",\"loss\":" << 1.0 / (e + 1)
            << ",\"lr\":0.001,\"beta1\":0.9}\n";
    metrics << "{\"type\":\"epoch\",\"epoch\":" << e << ",\"step\":" << step
            << ",\"train_loss\":" << 1.0 / (e + 1) << ",\"train_accuracy\":" << acc[e]
            << ",\"val\":{\"loss\":" << 0.5 / (e + 1) << ",\"accuracy\":" << acc[e]
            << ",\"macro_f1\":" << acc[e] << "}}\n";
  }
  metrics.close();
  const ChildResult r = run_with_timeout(
      {testing::tool("fer-report"), run.string(), "--out", (tmp / "out").string(), "-q"}, 30.0);
  EXPECT_TRUE(r.succeeded()) << "fer-report " << describe(r);
  EXPECT_TRUE(fs::exists(tmp / "out" / report::kAccuracyPlot));
}

}  // namespace
}  // namespace fer
