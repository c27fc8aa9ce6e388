// fer-synth: determinism, layouts, output safety, option checks and the difficulty contract.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <opencv2/imgcodecs.hpp>
#include <string>
#include <vector>

#include "common/cancel.h"
#include "common/errors.h"
#include "synth_face.h"

namespace fer::tools {
namespace {

namespace fs = std::filesystem;

constexpr int kClasses = 7;

class SynthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::path(::testing::TempDir()) /
            ("fer_synth_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  fs::path root_;
};

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Regular files under `dir`, relative paths, sorted.
std::vector<fs::path> list_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) files.push_back(fs::relative(entry.path(), dir));
  }
  std::sort(files.begin(), files.end());
  return files;
}

int count_files(const fs::path& dir) {
  return static_cast<int>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

bool same_pixels(const cv::Mat& a, const cv::Mat& b) {
  return a.size() == b.size() && a.type() == b.type() && cv::countNonZero(a != b) == 0;
}

TEST(SynthFace, ClassNamesAreTheSevenFerClassesInSortedOrder) {
  const std::vector<std::string> expected = {"angry",   "disgust", "fear",    "happy",
                                             "neutral", "sad",     "surprise"};
  EXPECT_EQ(synth_class_names(), expected);
}

TEST(SynthFace, SameLabelSeedIndexGivesIdenticalPixels) {
  for (int label = 0; label < kClasses; ++label) {
    const cv::Mat a = draw_synth_face(label, 7, 3, 48);
    const cv::Mat b = draw_synth_face(label, 7, 3, 48);
    ASSERT_EQ(a.type(), CV_8UC1);
    ASSERT_EQ(a.rows, 48);
    ASSERT_EQ(a.cols, 48);
    EXPECT_TRUE(same_pixels(a, b)) << "label " << label;
    cv::Scalar mean, stddev;
    cv::meanStdDev(a, mean, stddev);
    EXPECT_GT(stddev[0], 8.0) << "label " << label << " looks blank";
  }
}

TEST(SynthFace, DifferentSeedIndexOrLabelGivesDifferentImages) {
  const cv::Mat base = draw_synth_face(3, 7, 3, 48);
  EXPECT_FALSE(same_pixels(base, draw_synth_face(3, 8, 3, 48)));
  EXPECT_FALSE(same_pixels(base, draw_synth_face(3, 7, 4, 48)));
  EXPECT_FALSE(same_pixels(base, draw_synth_face(4, 7, 3, 48)));
}

TEST(SynthFace, DrawsAnySupportedSizeAndRejectsOthers) {
  EXPECT_EQ(draw_synth_face(0, 1, 0, 16).rows, 16);
  EXPECT_EQ(draw_synth_face(0, 1, 0, 100).cols, 100);
  EXPECT_THROW(draw_synth_face(0, 1, 0, 15), ConfigError);
  EXPECT_THROW(draw_synth_face(7, 1, 0, 48), ConfigError);
}

TEST_F(SynthTest, OutputIsByteIdenticalForOneAndTwoThreads) {
  SynthOptions options;
  options.per_class = 10;
  options.seed = 42;
  options.threads = 1;
  write_synth_dataset(root_ / "t1", options);
  options.threads = 2;
  write_synth_dataset(root_ / "t2", options);
  const auto files = list_files(root_ / "t1");
  ASSERT_EQ(files.size(), 70u);
  ASSERT_EQ(list_files(root_ / "t2"), files);
  for (const auto& file : files) {
    EXPECT_EQ(read_bytes(root_ / "t1" / file), read_bytes(root_ / "t2" / file)) << file;
  }
}

TEST_F(SynthTest, SplitLayoutWritesTrainValTestEightyTenTen) {
  SynthOptions options;
  options.per_class = 20;
  options.threads = 2;
  write_synth_dataset(root_ / "out", options);
  std::vector<std::string> splits;
  for (const auto& entry : fs::directory_iterator(root_ / "out")) {
    splits.push_back(entry.path().filename().string());
  }
  std::sort(splits.begin(), splits.end());
  EXPECT_EQ(splits, (std::vector<std::string>{"test", "train", "val"}));
  for (const auto& name : synth_class_names()) {
    EXPECT_EQ(count_files(root_ / "out" / "train" / name), 16) << name;
    EXPECT_EQ(count_files(root_ / "out" / "val" / name), 2) << name;
    EXPECT_EQ(count_files(root_ / "out" / "test" / name), 2) << name;
  }
  // The files are 8-bit grayscale PNGs of the requested size.
  const cv::Mat img =
      cv::imread((root_ / "out" / "val" / "happy" / "000016.png").string(), cv::IMREAD_UNCHANGED);
  ASSERT_FALSE(img.empty());
  EXPECT_EQ(img.type(), CV_8UC1);
  EXPECT_EQ(img.rows, 48);
  EXPECT_TRUE(same_pixels(img, draw_synth_face(3, options.seed, 16, 48)));
}

TEST_F(SynthTest, FlatLayoutWritesOneFolderPerClass) {
  SynthOptions options;
  options.per_class = 5;
  options.layout = "flat";
  options.size = 32;
  write_synth_dataset(root_ / "out", options);
  EXPECT_EQ(count_files(root_ / "out"), kClasses);
  for (const auto& name : synth_class_names()) {
    EXPECT_EQ(count_files(root_ / "out" / name), 5) << name;
    EXPECT_TRUE(fs::exists(root_ / "out" / name / "000004.png")) << name;
  }
}

TEST_F(SynthTest, ExistingOutputIsRefusedWithoutOverwriteAndReplacedWithIt) {
  const fs::path out = root_ / "out";
  fs::create_directories(out);
  std::ofstream(out / "marker") << "old";
  SynthOptions options;
  options.per_class = 3;
  options.layout = "flat";
  try {
    write_synth_dataset(out, options);
    FAIL() << "an existing output was not refused";
  } catch (const IoError& e) {
    EXPECT_NE(e.hint().find("--overwrite"), std::string::npos) << e.hint();
  }
  EXPECT_TRUE(fs::exists(out / "marker"));
  options.overwrite = true;
  write_synth_dataset(out, options);
  EXPECT_FALSE(fs::exists(out / "marker"));
  EXPECT_EQ(count_files(out), kClasses);
  EXPECT_EQ(count_files(root_), 1) << "temporary folders left behind";
}

TEST_F(SynthTest, BadOptionsAreRejectedWithConfigErrorAndWriteNothing) {
  const auto rejects = [&](SynthOptions options) {
    EXPECT_THROW(write_synth_dataset(root_ / "out", options), ConfigError);
  };
  SynthOptions o;
  o.per_class = 0;
  rejects(o);
  o = {};
  o.size = 15;
  rejects(o);
  o.size = 513;
  rejects(o);
  o = {};
  o.layout = "nested";
  rejects(o);
  o = {};
  o.threads = -1;
  rejects(o);
  EXPECT_EQ(count_files(root_), 0);
}

TEST_F(SynthTest, InterruptLeavesNoOutput) {
  // In a child process: the cancel flag cannot be reset and would stop the other tests.
  const fs::path out = root_ / "out";
  EXPECT_EXIT(
      {
        request_cancel();
        SynthOptions options;
        options.per_class = 10;
        try {
          write_synth_dataset(out, options);
        } catch (const Interrupted&) {
          std::_Exit(fs::exists(out) || count_files(root_) != 0 ? 1 : 0);
        }
        std::_Exit(2);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST_F(SynthTest, CommandLineExitCodes) {
  const std::string tool = std::string(FER_TOOLS_DIR) + "/fer-synth";
  const auto run = [](const std::string& cmd) {
    const int status = std::system((cmd + " >/dev/null 2>&1").c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  const std::string out = (root_ / "cli").string();
  EXPECT_EQ(run(tool + " --help | grep -q 130"), 0) << "--help lists the exit codes";
  EXPECT_EQ(run(tool + " " + out + " --size 8"), 2);
  EXPECT_EQ(run(tool + " " + out + " --bogus"), 2);
  EXPECT_EQ(run(tool + " " + out + " --per-class 2 --layout flat --threads 1"), 0);
  EXPECT_EQ(run(tool + " " + out + " --per-class 2"), 4);
  EXPECT_EQ(run(tool + " " + out + " --per-class 2 --overwrite"), 0);
}

// The difficulty contract: raw-pixel class means (train split) must not classify the test split
// well; the expression has to be found under the position/scale/lighting variation.
TEST_F(SynthTest, NearestClassMeanOnRawPixelsStaysBelowSixtyPercent) {
  SynthOptions options;
  options.per_class = 100;
  options.size = 48;
  options.seed = 1;
  options.threads = 2;
  write_synth_dataset(root_ / "out", options);
  const auto& names = synth_class_names();
  const auto load = [&](const std::string& split, int label) {
    std::vector<cv::Mat> images;
    for (const auto& file : list_files(root_ / "out" / split / names[label])) {
      cv::Mat img =
          cv::imread((root_ / "out" / split / names[label] / file).string(), cv::IMREAD_GRAYSCALE);
      EXPECT_FALSE(img.empty()) << file;
      img.convertTo(img, CV_64F);
      images.push_back(img);
    }
    return images;
  };
  std::vector<cv::Mat> means;
  for (int label = 0; label < kClasses; ++label) {
    cv::Mat sum = cv::Mat::zeros(48, 48, CV_64F);
    const auto train = load("train", label);
    for (const auto& img : train) sum += img;
    means.push_back(sum / static_cast<double>(train.size()));
  }
  int correct = 0, total = 0;
  for (int label = 0; label < kClasses; ++label) {
    for (const auto& img : load("test", label)) {
      int best = -1;
      double best_dist = 0;
      for (int c = 0; c < kClasses; ++c) {
        const double dist = cv::norm(img, means[c], cv::NORM_L2SQR);
        if (best < 0 || dist < best_dist) best = c, best_dist = dist;
      }
      correct += best == label;
      ++total;
    }
  }
  ASSERT_EQ(total, 70);
  const double accuracy = static_cast<double>(correct) / total;
  std::printf("nearest-class-mean test accuracy: %.3f (%d/%d, chance 0.143)\n", accuracy, correct,
              total);
  EXPECT_LT(accuracy, 0.60);
}

}  // namespace
}  // namespace fer::tools
