// fer-predict on videos, end to end: synthetic videos made here (fer-synth faces moving over a
// textured background, tests/bench/predict/synth_video.h, written with OpenCV's VideoWriter as
// MJPG in .avi, which needs no FFmpeg encoder) go through the built fer-predict. Checked: tracks
// keep their ids through the motion, the per-frame JSON has the right frames and times (also
// with --start/--end/--max-frames and --every), the annotated video has the input's frame count
// and size, smoothing reduces label changes against --smooth 0, the timeline is drawn, and bad
// input (unreadable, truncated, empty, missing, a camera that does not open, a variable frame
// rate, Ctrl-C) gives a message naming the source while the other inputs are still processed,
// and --tta applies to video faces.
//
// The checkpoint is an untrained ResNet9 (width 0.25): tracking, timing and outputs are tested,
// not accuracy. Its near-uniform probabilities make per-frame labels flicker, which is what the
// smoothing test needs.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "predict/fused_resnet9.h"
#include "synth_face.h"
#include "synth_video.h"
#include "test_util.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace fer {
namespace {

using synth_video::SceneOptions;
using testing::quote;
using testing::run_command;
using testing::TempFolder;
using testing::tool;

constexpr int kFrames = 60;  // 2.4 s at 25 fps: more than one expression change per face
constexpr double kFps = 25;
constexpr double kClassifierScale = 10;  // see SetUpTestSuite

std::vector<json> json_lines(const std::string& text) {
  std::vector<json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] == '{') out.push_back(json::parse(line));
  }
  return out;
}

// Per-face lines ("frame" present), end-of-source lines ("status"), summaries ("summary").
std::vector<json> with_key(const std::vector<json>& lines, const char* key) {
  std::vector<json> out;
  for (const auto& j : lines) {
    if (j.contains(key)) out.push_back(j);
  }
  return out;
}

cv::Point2d centre(const json& box) {
  return {box["x"].get<double>() + box["width"].get<double>() / 2,
          box["y"].get<double>() + box["height"].get<double>() / 2};
}

// The face of the scene whose square's centre is within a quarter side of the box's centre on
// that frame; -1 for none (a false detection in the texture).
int true_face(const SceneOptions& scene, const json& line) {
  const cv::Point2d c = centre(line["box"]);
  for (int f = 0; f < scene.faces; ++f) {
    const cv::Rect r = synth_video::face_rect(scene, f, line["frame"].get<int>());
    if (cv::norm(c - cv::Point2d(r.x + r.width / 2.0, r.y + r.height / 2.0)) <
        0.25 * scene.face_size) {
      return f;
    }
  }
  return -1;
}

// Label changes along each track of the smoothed (or the raw) best label, summed over tracks.
int label_changes(const std::vector<json>& faces, const char* key) {
  std::map<int, std::string> last;
  int changes = 0;
  for (const auto& j : faces) {
    const std::string label = j[key][0]["label"];
    auto [it, first] = last.try_emplace(j["track"].get<int>(), label);
    if (!first && it->second != label) ++changes;
    it->second = label;
  }
  return changes;
}

int count_frames(const fs::path& video, cv::Size* size, double* fps) {
  cv::VideoCapture capture(video.string(), cv::CAP_FFMPEG);
  if (!capture.isOpened()) return -1;
  *size = {static_cast<int>(capture.get(cv::CAP_PROP_FRAME_WIDTH)),
           static_cast<int>(capture.get(cv::CAP_PROP_FRAME_HEIGHT))};
  *fps = capture.get(cv::CAP_PROP_FPS);
  int n = 0;
  cv::Mat frame;
  while (n < 100000 && capture.read(frame)) ++n;
  return n;
}

// A Matroska file of MJPEG frames at the given timestamps (milliseconds), written by hand: OpenCV
// writes only constant-rate videos, and no FFmpeg command-line tool is needed this way. EBML
// elements with 8-byte sizes; one cluster per frame; DefaultDuration says 25 fps.
void write_vfr_mkv(const fs::path& path, const std::vector<int>& ms, const cv::Mat& picture) {
  using Bytes = std::string;
  const auto id = [](std::uint32_t v) {
    Bytes b;
    for (int s = 24; s >= 0; s -= 8) {
      if (((v >> s) & 0xff) || !b.empty()) b += static_cast<char>((v >> s) & 0xff);
    }
    return b;
  };
  const auto element = [&](std::uint32_t v, const Bytes& payload) {
    Bytes b = id(v) + static_cast<char>(0x01);
    for (int s = 48; s >= 0; s -= 8) b += static_cast<char>((payload.size() >> s) & 0xff);
    return b + payload;
  };
  const auto uint_element = [&](std::uint32_t v, std::uint64_t value) {
    Bytes p;
    for (int s = 56; s >= 0; s -= 8) p += static_cast<char>((value >> s) & 0xff);
    return element(v, p);
  };
  const Bytes header = element(0x1A45DFA3, uint_element(0x4286, 1) + uint_element(0x42F7, 1) +
                                               uint_element(0x42F2, 4) + uint_element(0x42F3, 8) +
                                               element(0x4282, "matroska") +
                                               uint_element(0x4287, 2) + uint_element(0x4285, 2));
  const Bytes info =
      element(0x1549A966, uint_element(0x2AD7B1, 1000000) + element(0x4D80, "fer-test") +
                              element(0x5741, "fer-test"));
  const Bytes video =
      element(0xE0, uint_element(0xB0, picture.cols) + uint_element(0xBA, picture.rows));
  const Bytes track =
      element(0xAE, uint_element(0xD7, 1) + uint_element(0x73C5, 1) + uint_element(0x83, 1) +
                        uint_element(0x23E383, 40000000) + element(0x86, "V_MJPEG") + video);
  Bytes clusters;
  std::vector<std::uint8_t> jpeg;
  ASSERT_TRUE(cv::imencode(".jpg", picture, jpeg));
  for (const int t : ms) {
    // SimpleBlock: track 1, relative time 0, keyframe.
    Bytes block = {static_cast<char>(0x81), 0, 0, static_cast<char>(0x80)};
    block.append(reinterpret_cast<const char*>(jpeg.data()), jpeg.size());
    clusters += element(0x1F43B675, uint_element(0xE7, t) + element(0xA3, block));
  }
  std::ofstream(path, std::ios::binary)
      << header << element(0x18538067, info + element(0x1654AE6B, track) + clusters);
}

// The inference forward pass (BatchNorm folded into the convolutions, oneDNN weights) against the
// module's own, with BatchNorm statistics and affine parameters away from their initial values
// (a fresh model's are 0/1, which would fold to nothing).
TEST(FusedResNet9, MatchesTheModulesForwardWithTrainedStatistics) {
  for (const int channels : {1, 3}) {
    for (const double width : {0.25, 1.0}) {
      SCOPED_TRACE("channels " + std::to_string(channels) + ", width " + std::to_string(width));
      ResNet9Options options;
      options.in_channels = channels;
      options.width = width;
      torch::manual_seed(3);
      ResNet9 model(options);
      {
        torch::NoGradGuard no_grad;
        for (auto& b : model->named_buffers()) {
          if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.3, 3.0);
          if (b.key().find("running_mean") != std::string::npos) b.value().normal_(0, 0.5);
        }
        for (auto& p : model->named_parameters()) {
          if (p.key().find(".1.") != std::string::npos) p.value().normal_(1.0, 0.3);
        }
      }
      model->eval();
      std::string reason;
      const auto fused = FusedResNet9::build(model, &reason);
      ASSERT_NE(fused, nullptr) << reason;
      const torch::Tensor x = torch::randn({5, channels, 48, 48});
      torch::NoGradGuard no_grad;
      const torch::Tensor want = model->forward(x);
      const torch::Tensor got = fused->forward(x);
      ASSERT_EQ(got.sizes(), want.sizes());
      const double scale = want.abs().max().item<double>();
      EXPECT_LT((got - want).abs().max().item<double>(), 1e-5 * std::max(1.0, scale));
    }
  }
}

class FerPredictVideo : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = std::make_unique<TempFolder>("predict_video");
    const fs::path root = tmp_->path();
    CheckpointMeta meta;
    meta.classes = tools::synth_class_names();
    meta.mean = {0.45};
    meta.std = {0.22};
    meta.height = meta.width = 48;
    meta.channels = 1;
    meta.model.in_channels = 1;
    meta.model.num_classes = 7;
    meta.model.width = 0.25;
    meta.optimizer = "adam";
    torch::manual_seed(5);
    ResNet9 model(meta.model);
    model->eval();
    {
      // An untrained network gives every input the same best class: its features share a large
      // common part that the classifier's random rows weigh differently. Rows without that part
      // (mean removed) make the best class follow the face crop, so labels change from frame to
      // frame as a weak trained model's do (9 changes over the two faces' 120 frames); the scale
      // makes the probabilities confident rather than near uniform.
      torch::NoGradGuard no_grad;
      auto params = model->named_parameters();
      torch::Tensor weight = params["classifier.weight"];
      weight.copy_((weight - weight.mean(1, /*keepdim=*/true)) * kClassifierScale);
      params["classifier.bias"].zero_();
    }
    save_checkpoint(root / "model.pt", model, nullptr, meta);

    two_.frames = kFrames;
    two_.fps = kFps;
    ASSERT_TRUE(synth_video::write_video(root / "two.avi", two_));
    one_ = two_;
    one_.faces = 1;
    ASSERT_TRUE(synth_video::write_video(root / "one.avi", one_));
  }
  static void TearDownTestSuite() { tmp_.reset(); }

  static std::string predict(const std::string& args) {
    return tool("fer-predict") + " --checkpoint " + quote(tmp_->path() / "model.pt") + " " + args;
  }
  static std::string file(const std::string& name) { return quote(tmp_->path() / name); }

  static std::unique_ptr<TempFolder> tmp_;
  static SceneOptions one_, two_;
};
std::unique_ptr<TempFolder> FerPredictVideo::tmp_;
SceneOptions FerPredictVideo::one_;
SceneOptions FerPredictVideo::two_;

// For --every 1 and 3: every line near a face of the scene carries that face's one track id, the
// two faces have different ids, and each face is reported on most frames.
TEST_F(FerPredictVideo, TracksKeepTheirIdsThroughTheMotion) {
  for (const int every : {1, 3}) {
    SCOPED_TRACE("--every " + std::to_string(every));
    const auto r =
        run_command(predict("--json --every " + std::to_string(every) + " " + file("two.avi")));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto faces = with_key(json_lines(r.output), "frame");
    std::map<int, std::set<int>> ids_of_face;
    std::map<int, std::set<int>> frames_of_face;
    for (const auto& j : faces) {
      const int f = true_face(two_, j);
      if (f < 0) continue;
      ids_of_face[f].insert(j["track"].get<int>());
      frames_of_face[f].insert(j["frame"].get<int>());
    }
    ASSERT_EQ(ids_of_face.size(), 2u) << r.output;
    for (int f = 0; f < 2; ++f) {
      EXPECT_EQ(ids_of_face[f].size(), 1u) << "face " << f << " changed track id";
      EXPECT_GE(frames_of_face[f].size(), 0.85 * kFrames) << "face " << f;
    }
    EXPECT_NE(*ids_of_face[0].begin(), *ids_of_face[1].begin());
  }
}

TEST_F(FerPredictVideo, PerFrameJsonHasTheFramesAndTimesOfTheVideo) {
  const auto r = run_command(predict("--json --top-k 2 " + file("one.avi")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto lines = json_lines(r.output);
  const auto faces = with_key(lines, "frame");
  std::set<int> frames;
  for (const auto& j : faces) {
    for (const char* key :
         {"source", "frame", "time_s", "track", "box", "top_k", "smoothed_top_k"}) {
      ASSERT_TRUE(j.contains(key)) << key << " in " << j;
    }
    EXPECT_EQ(fs::path(j["source"].get<std::string>()).filename(), "one.avi");
    const int frame = j["frame"];
    EXPECT_TRUE(frames.insert(frame).second) << "frame " << frame << " twice (one face)";
    EXPECT_GE(frame, 0);
    EXPECT_LT(frame, kFrames);
    EXPECT_NEAR(j["time_s"].get<double>(), frame / kFps, 1e-3) << j;
    EXPECT_EQ(j["top_k"].size(), 2u);
    EXPECT_EQ(j["smoothed_top_k"].size(), 2u);
  }
  EXPECT_GE(frames.size(), 0.9 * kFrames);
  const auto end = with_key(lines, "status");
  ASSERT_EQ(end.size(), 1u);
  EXPECT_EQ(end[0]["status"], "ok");
  EXPECT_EQ(end[0]["frames"], kFrames);
  EXPECT_EQ(end[0]["width"], 640);
  EXPECT_EQ(end[0]["height"], 480);
  EXPECT_DOUBLE_EQ(end[0]["fps"].get<double>(), kFps);
  EXPECT_EQ(end[0]["variable_frame_rate"], false);
  // The per-track summary: times within the video, shares adding up to 1.
  const auto summaries = with_key(lines, "summary");
  ASSERT_GE(summaries.size(), 1u);
  const json& s = summaries[0]["summary"];
  EXPECT_GE(s["first_s"].get<double>(), 0.0);
  EXPECT_LE(s["last_s"].get<double>(), (kFrames - 1) / kFps + 1e-6);
  double total = 0;
  for (const auto& [label, share] : s["share"].items()) total += share.get<double>();
  EXPECT_NEAR(total, 1.0, 1e-9);
  EXPECT_TRUE(s["share"].contains(s["dominant"].get<std::string>()));
}

TEST_F(FerPredictVideo, StartEndAndMaxFramesSelectTheFrames) {
  auto r = run_command(predict("--json --start 1 --end 2 " + file("one.avi")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto lines = json_lines(r.output);
  auto end = with_key(lines, "status");
  ASSERT_EQ(end.size(), 1u) << r.output;
  EXPECT_EQ(end[0]["frames"], 25);  // frames 25..49: times 1.00..1.96 s
  for (const auto& j : with_key(lines, "frame")) {
    EXPECT_GE(j["frame"].get<int>(), 25);
    EXPECT_LE(j["frame"].get<int>(), 49);
    EXPECT_NEAR(j["time_s"].get<double>(), j["frame"].get<int>() / kFps, 1e-3);
  }

  r = run_command(predict("--json --max-frames 7 --every 3 " + file("one.avi")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  lines = json_lines(r.output);
  end = with_key(lines, "status");
  ASSERT_EQ(end.size(), 1u);
  EXPECT_EQ(end[0]["frames"], 7);
  for (const auto& j : with_key(lines, "frame")) {
    // Frames 0, 3, 6 are detection rounds; the others carry predicted boxes.
    EXPECT_EQ(j["detected"].get<bool>(), j["frame"].get<int>() % 3 == 0) << j;
  }
}

TEST_F(FerPredictVideo, AnnotatedVideoHasTheInputsFrameCountSizeAndRate) {
  const fs::path out = tmp_->path() / "annotated.avi";
  const auto r = run_command(predict("--annotate " + quote(out) + " " + file("two.avi")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  cv::Size size;
  double fps = 0;
  EXPECT_EQ(count_frames(out, &size, &fps), kFrames);
  EXPECT_EQ(size, cv::Size(640, 480));
  EXPECT_DOUBLE_EQ(fps, kFps);
  // The scene is grey; boxes, labels and bars are in colour.
  cv::VideoCapture capture(out.string(), cv::CAP_FFMPEG);
  cv::Mat frame, hsv, coloured;
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(capture.read(frame));
  cv::cvtColor(frame, hsv, cv::COLOR_BGR2HSV);
  cv::inRange(hsv, cv::Scalar(0, 120, 80), cv::Scalar(180, 255, 255), coloured);
  EXPECT_GT(cv::countNonZero(coloured), 500);
  // No temporary file left beside it.
  for (const auto& entry : fs::directory_iterator(tmp_->path())) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  }

  // A folder: <stem>.avi inside it, pictures beside as PNG.
  const fs::path dir = tmp_->path() / "annotated_dir";
  const auto folder = run_command(predict("--annotate " + quote(dir) + " " + file("one.avi")));
  ASSERT_EQ(folder.exit_code, 0) << folder.output;
  EXPECT_EQ(count_frames(dir / "one.avi", &size, &fps), kFrames);
}

TEST_F(FerPredictVideo, SmoothingReducesLabelChangesAgainstSmoothZero) {
  const auto raw = run_command(predict("--json --smooth 0 " + file("two.avi")));
  const auto smoothed = run_command(predict("--json --smooth 0.8 " + file("two.avi")));
  ASSERT_EQ(raw.exit_code, 0) << raw.output;
  ASSERT_EQ(smoothed.exit_code, 0) << smoothed.output;
  const auto raw_faces = with_key(json_lines(raw.output), "frame");
  const auto smoothed_faces = with_key(json_lines(smoothed.output), "frame");
  // With --smooth 0 the smoothed label is the raw one.
  for (const auto& j : raw_faces) EXPECT_EQ(j["top_k"][0], j["smoothed_top_k"][0]);
  const int raw_changes = label_changes(raw_faces, "smoothed_top_k");
  const int smoothed_changes = label_changes(smoothed_faces, "smoothed_top_k");
  ASSERT_GT(raw_changes, 4) << "the untrained model's labels should flicker";
  EXPECT_LT(2 * smoothed_changes, raw_changes);
  // The raw labels of the smoothed run are the same as those of the raw run.
  EXPECT_EQ(label_changes(smoothed_faces, "top_k"), raw_changes);
}

TEST_F(FerPredictVideo, TimelinePngHasAChartPerTrack) {
  const fs::path dir = tmp_->path() / "timeline";
  const auto r =
      run_command(predict("--json --timeline-png " + quote(dir) + " " + file("two.avi")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto summaries = with_key(json_lines(r.output), "summary");
  const cv::Mat png = cv::imread((dir / "two.timeline.png").string(), cv::IMREAD_COLOR);
  ASSERT_FALSE(png.empty());
  EXPECT_EQ(png.cols, 900);
  const std::size_t charts = std::min<std::size_t>(summaries.size(), 8);
  EXPECT_EQ(png.rows, 60 + 300 * static_cast<int>(charts));
}

TEST_F(FerPredictVideo, BadVideosAreNamedTheOthersAreStillProcessedExit3) {
  const fs::path root = tmp_->path();
  std::ofstream(root / "junk.mp4") << "this is not a video";
  // Truncated: the first half of a video whose header declares all its frames.
  fs::copy_file(root / "one.avi", root / "truncated.avi", fs::copy_options::overwrite_existing);
  fs::resize_file(root / "truncated.avi", fs::file_size(root / "one.avi") / 2);
  // Empty: a valid container without frames.
  {
    cv::VideoWriter((root / "empty.avi").string(), cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 25,
                    cv::Size(64, 48));
  }
  ASSERT_TRUE(fs::exists(root / "empty.avi"));

  const auto r = run_command(predict("--json " + file("junk.mp4") + " " + file("truncated.avi") +
                                     " " + file("empty.avi") + " " + file("missing.mp4") +
                                     " --camera 9 " + file("one.avi")));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  for (const std::string& expected : {(root / "junk.mp4").string() + ": cannot open as a video",
                                      (root / "truncated.avi").string() + ": truncated or damaged",
                                      (root / "empty.avi").string() + ": no frames",
                                      (root / "missing.mp4").string() + ": no such file",
                                      std::string("camera 9: cannot open the camera"),
                                      std::string("5 of 6 video source(s) failed")}) {
    EXPECT_NE(r.output.find(expected), std::string::npos) << expected << " in\n" << r.output;
  }
  // The good video after them was processed in full; the truncated one up to its damage.
  const auto end = with_key(json_lines(r.output), "status");
  std::map<std::string, json> by_source;
  for (const auto& j : end) by_source[fs::path(j["source"].get<std::string>()).filename()] = j;
  ASSERT_TRUE(by_source.count("one.avi")) << r.output;
  EXPECT_EQ(by_source["one.avi"]["status"], "ok");
  EXPECT_EQ(by_source["one.avi"]["frames"], kFrames);
  ASSERT_TRUE(by_source.count("truncated.avi")) << r.output;
  EXPECT_EQ(by_source["truncated.avi"]["status"], "error");
  EXPECT_GT(by_source["truncated.avi"]["frames"].get<int>(), 0);
  EXPECT_LT(by_source["truncated.avi"]["frames"].get<int>(), kFrames);
}

// A variable frame rate: processed in full with the container's timestamps as times, named on
// stderr with the reason, exit 3 while the other inputs are still processed; --accept-vfr makes
// it a note and exit 0.
TEST_F(FerPredictVideo, VariableFrameRateIsProcessedNamedAndExit3UnlessAccepted) {
  const fs::path root = tmp_->path();
  std::vector<int> ms;
  for (int i = 0, t = 0; i < 20; ++i, t += (i % 2 ? 20 : 60)) ms.push_back(t);
  const cv::Mat bg = synth_video::background(one_);
  write_vfr_mkv(root / "vfr.mkv", ms, synth_video::draw_frame(one_, bg, 0));
  const std::string vfr = (root / "vfr.mkv").string();
  for (const bool accept : {false, true}) {
    SCOPED_TRACE(accept ? "--accept-vfr" : "without --accept-vfr");
    const auto r = run_command(predict(std::string("--json ") + (accept ? "--accept-vfr " : "") +
                                       file("vfr.mkv") + " " + file("one.avi")));
    EXPECT_EQ(r.exit_code, accept ? 0 : 3) << r.output;
    EXPECT_NE(r.output.find(std::string(accept ? "note: " : "error: ") + vfr +
                            ": variable frame rate (frames 20.0-60.0 ms apart"),
              std::string::npos)
        << r.output;
    EXPECT_EQ(r.output.find("--accept-vfr accepts such videos") != std::string::npos, !accept)
        << r.output;
    EXPECT_EQ(
        r.output.find("1 of 2 video source(s) have a variable frame rate") != std::string::npos,
        !accept)
        << r.output;
    const auto lines = json_lines(r.output);
    std::map<std::string, json> end;
    for (const auto& j : with_key(lines, "status")) {
      end[fs::path(j["source"].get<std::string>()).filename()] = j;
    }
    ASSERT_EQ(end.size(), 2u) << r.output;
    EXPECT_EQ(end["vfr.mkv"]["status"], "ok");  // processed in full
    EXPECT_EQ(end["vfr.mkv"]["frames"], 20);
    EXPECT_EQ(end["vfr.mkv"]["variable_frame_rate"], true);
    EXPECT_EQ(end["one.avi"]["status"], "ok");  // the next input still processed
    EXPECT_EQ(end["one.avi"]["frames"], kFrames);
    EXPECT_EQ(end["one.avi"]["variable_frame_rate"], false);
    std::size_t vfr_faces = 0;
    for (const auto& j : with_key(lines, "frame")) {
      if (j["source"] != vfr) continue;
      ++vfr_faces;
      EXPECT_NEAR(j["time_s"].get<double>(), ms[j["frame"].get<int>()] / 1000.0, 1e-3) << j;
    }
    EXPECT_GE(vfr_faces, 15u) << r.output;
  }
}

// --tta on video faces: the same frames, tracks and boxes as without, other probabilities (the
// faces go through Predictor::classify, whose TTA tests/unit/predict_test.cpp compares with the
// trainer's), and the end line says which augmentation was used.
TEST_F(FerPredictVideo, TtaAppliesToVideoFacesAndIsReported) {
  std::map<std::string, std::vector<json>> faces;
  for (const std::string tta : {"none", "flip", "ten_crop"}) {
    const auto r = run_command(predict("--json --top-k 7 --smooth 0 --max-frames 12 --tta " + tta +
                                       " " + file("two.avi")));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto lines = json_lines(r.output);
    const auto end = with_key(lines, "status");
    ASSERT_EQ(end.size(), 1u) << r.output;
    EXPECT_EQ(end[0]["tta"], tta);
    EXPECT_EQ(end[0]["frames"], 12);
    faces[tta] = with_key(lines, "frame");
  }
  for (const std::string tta : {"flip", "ten_crop"}) {
    SCOPED_TRACE("--tta " + tta);
    ASSERT_EQ(faces[tta].size(), faces["none"].size());
    ASSERT_GE(faces[tta].size(), 20u);
    double largest = 0;
    for (std::size_t i = 0; i < faces[tta].size(); ++i) {
      const json &a = faces[tta][i], &b = faces["none"][i];
      EXPECT_EQ(a["frame"], b["frame"]);
      EXPECT_EQ(a["track"], b["track"]);
      EXPECT_EQ(a["box"], b["box"]);
      std::map<std::string, double> p;
      for (const auto& e : b["top_k"]) p[e["label"]] = e["probability"];
      for (const auto& e : a["top_k"]) {
        largest = std::max(largest, std::abs(e["probability"].get<double>() - p[e["label"]]));
      }
    }
    EXPECT_GT(largest, 1e-3);  // the printed probabilities are rounded to 1e-6
  }
}

// Ctrl-C in the middle of a video: the frames so far are finished (annotated video playable
// with exactly those frames, summary printed), exit 130.
TEST_F(FerPredictVideo, CtrlCFinishesThePlayableAnnotatedVideoAndPrintsTheSummary) {
  const fs::path root = tmp_->path();
  SceneOptions long_scene = one_;
  long_scene.frames = 3000;  // 2 minutes: far more than the test waits for
  long_scene.size = {320, 240};
  long_scene.face_size = 96;
  ASSERT_TRUE(synth_video::write_video(root / "long.avi", long_scene));
  const fs::path out = root / "interrupted.avi", log = root / "interrupted.log";
  const std::string command = "exec " +
                              predict("--json --annotate " + quote(out) + " " + file("long.avi")) +
                              " > " + quote(log) + " 2>&1";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait for the first frames (the handler is installed before the first frame is read).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  std::size_t seen = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(log);
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    seen = with_key(json_lines(text.substr(0, text.rfind('\n') + 1)), "frame").size();
    if (seen >= 10) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GE(seen, 10u) << "fer-predict produced no frames";
  ::kill(pid, SIGINT);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  ASSERT_TRUE(WIFEXITED(status)) << text;
  EXPECT_EQ(WEXITSTATUS(status), 130) << text;
  const auto lines = json_lines(text);
  const auto end = with_key(lines, "status");
  ASSERT_EQ(end.size(), 1u) << text;
  EXPECT_EQ(end[0]["status"], "interrupted");
  const int frames = end[0]["frames"];
  EXPECT_GE(frames, 10);
  EXPECT_LT(frames, long_scene.frames);
  EXPECT_FALSE(with_key(lines, "summary").empty()) << text;
  cv::Size size;
  double fps = 0;
  EXPECT_EQ(count_frames(out, &size, &fps), frames);
  EXPECT_EQ(size, long_scene.size);
}

TEST_F(FerPredictVideo, PicturesAndVideosInOneRun) {
  const fs::path root = tmp_->path();
  cv::Mat picture = synth_video::draw_frame(one_, synth_video::background(one_), 0);
  ASSERT_TRUE(cv::imwrite((root / "still.png").string(), picture));
  const auto r = run_command(predict(file("one.avi") + " " + file("still.png")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("still.png (640x480)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("face 1  box"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("one.avi (640x480, 25.00 fps): 60 frame(s), 1 track(s)"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("  track 1  "), std::string::npos) << r.output;
}

TEST_F(FerPredictVideo, UsageErrorsExitWith2) {
  for (const char* args :
       {"--every 0", "--smooth 1", "--start 2 --end 1", "--annotate out.webm", "--max-missed -1"}) {
    const auto r = run_command(predict(std::string(args) + " " + file("one.avi")));
    EXPECT_EQ(r.exit_code, 2) << args << ": " << r.output;
  }
  // One annotated video file for two videos.
  const auto r = run_command(predict("--annotate " + quote(tmp_->path() / "x.avi") + " " +
                                     file("one.avi") + " " + file("two.avi")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("give a folder"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace fer
