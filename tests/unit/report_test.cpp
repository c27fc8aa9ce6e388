// fer-report and its plotting module: ticks and chart drawing in isolation, then the report of a
// real tiny training run (written by fer-dist-train at the end), a run without summary.json,
// --no-report, and a folder that is not a run.
#include "report/report.h"

#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "common/fs_util.h"
#include "report/plot.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

using testing::quote;
using testing::run_command;
using testing::TempFolder;
using testing::tool;

// A chart counts as drawn when it has real contrast and a fair share of non-background pixels
// (a blank or single-colour PNG has neither).
void expect_not_blank(const cv::Mat& image, const std::string& what) {
  ASSERT_FALSE(image.empty()) << what << " does not decode";
  cv::Mat gray;
  cv::cvtColor(image, gray, cv::COLOR_BGR2GRAY);
  cv::Scalar mean, stddev;
  cv::meanStdDev(gray, mean, stddev);
  EXPECT_GT(stddev[0], 10.0) << what << " has almost no pixel variance";
  const double inked = 1.0 - cv::countNonZero(gray >= 250) / static_cast<double>(gray.total());
  EXPECT_GT(inked, 0.02) << what << " is almost all background";
}

TEST(FerReportPlot, NiceTicksCoverTheRangeAtRoundSteps) {
  const auto t = report::nice_ticks(0.0, 1.0, 5);
  ASSERT_EQ(t.size(), 6u);
  EXPECT_DOUBLE_EQ(t.front(), 0.0);
  EXPECT_NEAR(t.back(), 1.0, 1e-12);
  EXPECT_NEAR(t[1] - t[0], 0.2, 1e-12);
  const auto steps = report::nice_ticks(1, 28, 8, /*integer_only=*/true);
  EXPECT_EQ(steps.front(), 5);  // ticks at 5, 10, ... 25: round numbers inside the range
  EXPECT_EQ(steps.back(), 25);
  const auto small = report::nice_ticks(0.0, 0.004, 4, /*integer_only=*/true);
  EXPECT_EQ(small.size(), 1u);  // integer ticks never go below a step of 1
  EXPECT_EQ(report::format_tick(0.25, 0.05), "0.25");
  EXPECT_EQ(report::format_tick(3000, 500), "3000");
  EXPECT_EQ(report::format_tick(0.0002, 0.0001), "2.0e-04");
}

TEST(FerReportPlot, ChartsAreDrawnNotBlank) {
  report::LineChart line;
  line.title = "loss";
  line.x.label = "epoch";
  line.x.integer_ticks = true;
  line.y.label = "loss";
  line.series.push_back({"train", {1, 2, 3}, {2.0, 1.5, 1.2}, std::nullopt, true, false});
  line.series.push_back({"val", {1, 2, 3}, {2.1, 1.7, 1.6}, std::nullopt, true, true});
  expect_not_blank(report::draw_line_chart(line), "line chart");
  report::BarChart bars;
  bars.title = "scores";
  bars.y = {"score", 0.0, 1.0, false};
  bars.categories = {"a", "b", "a-very-long-class-name"};
  bars.groups = {"p", "r"};
  bars.values = {{0.5, 0.9, 0.1}, {0.4, 1.0, 0.0}};
  expect_not_blank(report::draw_bar_chart(bars), "bar chart");
  report::HeatMap map;
  map.title = "cm";
  map.row_labels = map.col_labels = {"x", "y"};
  map.values = {{5, 1}, {0, 7}};
  const cv::Mat heat = report::draw_heat_map(map);
  expect_not_blank(heat, "heat map");
  // A chart of no data still draws its frame and says so instead of failing.
  report::LineChart empty;
  empty.title = "nothing";
  empty.series.push_back({"s", {}, {}, std::nullopt, false, false});
  EXPECT_FALSE(report::draw_line_chart(empty).empty());
}

// One tiny training run shared by the end-to-end cases: 16x16 fer-synth, a 4-channel-wide
// ResNet9, 2 epochs of 7 steps. fer-dist-train itself writes RUN/report at the end.
class FerReport : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = std::make_unique<TempFolder>("report_e2e");
    const fs::path root = tmp_->path();
    auto r = testing::make_packed_dataset(root, "--per-class 20 --size 16 --seed 3", "--size 16");
    if (r.exit_code != 0) return void(setup_error_ = r.output);
    std::ofstream(root / "tiny.yaml") << "model: {width: 0.0625, dropout: 0.1}\n"
                                         "train: {epochs: 2, batch_size: 16, log_every: 1, "
                                         "threads: 1}\n"
                                         "data: {workers: 1}\n";
    r = run_command(tool("fer-dist-train") + " --config " + quote(root / "tiny.yaml") + " --data " +
                    quote(root / "data") + " --out " + quote(root / "run"));
    train_output_ = r.output;
    if (r.exit_code != 0) setup_error_ = r.output;
  }
  static void TearDownTestSuite() { tmp_.reset(); }
  void SetUp() override { ASSERT_TRUE(setup_error_.empty()) << setup_error_; }
  static fs::path path(const std::string& name) { return tmp_->path() / name; }

  static std::unique_ptr<TempFolder> tmp_;
  static std::string setup_error_, train_output_;
};
std::unique_ptr<TempFolder> FerReport::tmp_;
std::string FerReport::setup_error_, FerReport::train_output_;

const char* const kPlots[] = {report::kLossPlot, report::kAccuracyPlot, report::kSchedulePlot,
                              report::kConfusionPlot, report::kPerClassPlot};

TEST_F(FerReport, TrainerWritesTheReportAtTheEndOfTraining) {
  EXPECT_TRUE(fs::exists(path("run") / "report" / report::kReportMarkdown)) << train_output_;
  for (const char* plot : kPlots) EXPECT_TRUE(fs::exists(path("run") / "report" / plot)) << plot;
  EXPECT_NE(train_output_.find("report.md"), std::string::npos) << train_output_;
}

TEST_F(FerReport, PlotsExistAreNotBlankAndReportMdReferencesThem) {
  const fs::path out = path("report_copy");
  const auto r =
      run_command(tool("fer-report") + " " + quote(path("run")) + " --out " + quote(out));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string md = read_file(out / report::kReportMarkdown);
  for (const char* plot : kPlots) {
    SCOPED_TRACE(plot);
    const cv::Mat image = cv::imread((out / plot).string(), cv::IMREAD_COLOR);
    expect_not_blank(image, plot);
    EXPECT_GE(image.cols, 600);
    EXPECT_NE(md.find(std::string("](") + plot + ")"), std::string::npos) << md;
  }
  // The summary table and per-class table carry the run's numbers and every class.
  EXPECT_NE(md.find("| test accuracy |"), std::string::npos) << md;
  EXPECT_NE(md.find("| steps | 14 |"), std::string::npos) << md;
  for (const char* name : {"angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"}) {
    EXPECT_NE(md.find(std::string("| ") + name + " |"), std::string::npos) << name;
  }
  EXPECT_EQ(md.find("## Notes"), std::string::npos) << md;  // a finished run: nothing missing
}

TEST_F(FerReport, RunWithoutSummaryStillGetsEpochPlotsAndSaysWhatIsMissing) {
  // A run still in progress (no summary.json) whose metrics end in a torn line.
  const fs::path partial = path("partial");
  fs::create_directories(partial);
  fs::copy_file(path("run") / "metrics.jsonl", partial / "metrics.jsonl");
  std::ofstream(partial / "metrics.jsonl", std::ios::app) << "{\"type\": \"step\", \"ste";
  const auto r = run_command(tool("fer-report") + " " + quote(partial));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("not JSON, skipped"), std::string::npos) << r.output;
  const fs::path out = partial / "report";
  for (const char* plot : kPlots) EXPECT_TRUE(fs::exists(out / plot)) << plot;
  const std::string md = read_file(out / report::kReportMarkdown);
  EXPECT_NE(md.find("no summary.json"), std::string::npos) << md;
  EXPECT_NE(md.find("validation after epoch 2"), std::string::npos) << md;
}

TEST_F(FerReport, NoReportFlagSkipsTheReport) {
  const auto r = run_command(tool("fer-dist-train") + " --config " + quote(path("tiny.yaml")) +
                             " --data " + quote(path("data")) + " --out " + quote(path("quiet")) +
                             " --set train.max_steps=2 --no-report");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(path("quiet") / "summary.json"));
  EXPECT_FALSE(fs::exists(path("quiet") / "report"));
}

TEST_F(FerReport, FolderThatIsNotARunExitsWith3) {
  fs::create_directories(path("empty"));
  auto r = run_command(tool("fer-report") + " " + quote(path("empty")));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("metrics.jsonl"), std::string::npos) << r.output;
  r = run_command(tool("fer-report") + " " + quote(path("nowhere")));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  r = run_command(tool("fer-report"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

}  // namespace
}  // namespace fer
