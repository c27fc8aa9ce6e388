#include "predict/video_output.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include "common/errors.h"
#include "common/fs_util.h"
#include "report/plot.h"

namespace fer {
namespace {

namespace fs = std::filesystem;

constexpr double kMinFps = 1, kMaxFps = 240;  // outside: the container's or camera's guess
constexpr double kDefaultFps = 25;

std::string lower_extension(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

const cv::Scalar& track_color(int track) {
  const auto& palette = report::palette();
  return palette[static_cast<std::size_t>(std::max(0, track - 1)) % palette.size()];
}

}  // namespace

void draw_video_annotations(cv::Mat& bgr, const VideoFrame& frame,
                            const std::vector<std::string>& classes) {
  const int side = std::min(bgr.cols, bgr.rows);
  const int thickness = std::max(1, side / 250);
  const double scale = std::clamp(side / 900.0, 0.4, 1.2);
  const cv::Scalar white(255, 255, 255);
  for (const VideoFace& face : frame.faces) {
    const FaceBox& b = face.tracked.box;
    const cv::Rect box(b.x, b.y, b.width, b.height);
    const cv::Scalar& color = track_color(face.tracked.track);
    cv::rectangle(bgr, box, color, thickness + 1);
    const int label = argmax(face.smoothed);
    const double confidence = face.smoothed.empty() ? 0.0 : face.smoothed[label];
    char text[160];
    std::snprintf(text, sizeof text, "#%d %s %.0f%%", face.tracked.track,
                  label < static_cast<int>(classes.size()) ? classes[label].c_str() : "?",
                  100.0 * confidence);
    int baseline = 0;
    const cv::Size size =
        cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, scale, thickness, &baseline);
    // Above the box when there is room, else inside its top edge.
    const int height = size.height + baseline + 6;
    const int top = box.y - height >= 0 ? box.y - height : box.y;
    cv::rectangle(bgr, {box.x, top}, {box.x + size.width + 6, top + height}, color, cv::FILLED);
    cv::putText(bgr, text, {box.x + 3, top + size.height + 3}, cv::FONT_HERSHEY_SIMPLEX, scale,
                white, thickness, cv::LINE_AA);
    // The confidence bar: under the box when there is room, else inside its bottom edge.
    const int bar_h = std::max(4, side / 80);
    const int bar_y = box.y + box.height + 2 + bar_h <= bgr.rows ? box.y + box.height + 2
                                                                 : box.y + box.height - bar_h;
    const int filled = static_cast<int>(std::lround(box.width * std::clamp(confidence, 0.0, 1.0)));
    cv::rectangle(bgr, {box.x, bar_y}, {box.x + filled, bar_y + bar_h}, color, cv::FILLED);
    cv::rectangle(bgr, {box.x, bar_y}, {box.x + box.width, bar_y + bar_h}, white, 1);
  }
}

int annotated_video_fourcc(const fs::path& path) {
  const std::string ext = lower_extension(path);
  if (ext == ".avi" || ext == ".mkv") return cv::VideoWriter::fourcc('M', 'J', 'P', 'G');
  if (ext == ".mp4" || ext == ".m4v" || ext == ".mov") {
    return cv::VideoWriter::fourcc('m', 'p', '4', 'v');
  }
  throw ConfigError("cannot write an annotated video named " + path.string(),
                    "name it .avi or .mkv (MJPG) or .mp4 (MPEG-4)");
}

struct AnnotatedVideoWriter::Handle {
  cv::VideoWriter writer;
};

AnnotatedVideoWriter::AnnotatedVideoWriter(const fs::path& path, double fps, cv::Size size)
    : handle_(std::make_unique<Handle>()), path_(path) {
  const int fourcc = annotated_video_fourcc(path);
  fps_ = fps >= kMinFps && fps <= kMaxFps ? fps : kDefaultFps;
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  temp_ = dir / ("." + path.stem().string() + ".tmp-" + std::to_string(::getpid()) +
                 path.extension().string());
  if (!handle_->writer.open(temp_.string(), fourcc, fps_, size, /*isColor=*/true)) {
    std::error_code ec;
    fs::remove(temp_, ec);
    throw IoError("cannot write the annotated video " + path.string(),
                  "check that its folder exists and is writable");
  }
}

AnnotatedVideoWriter::~AnnotatedVideoWriter() {
  if (temp_.empty()) return;  // finished
  handle_->writer.release();
  std::error_code ec;
  fs::remove(temp_, ec);
}

void AnnotatedVideoWriter::write(const cv::Mat& bgr) {
  handle_->writer.write(bgr);
  ++frames_;
}

void AnnotatedVideoWriter::finish() {
  handle_->writer.release();  // writes the container's index: the file is playable from here on
  std::error_code ec;
  if (!fs::is_regular_file(temp_, ec) || fs::file_size(temp_, ec) == 0) {
    throw IoError("the annotated video " + path_.string() + " was not written (disk full?)");
  }
  fsync_path(temp_);
  fs::rename(temp_, path_, ec);
  if (ec)
    throw IoError("cannot rename " + temp_.string() + " to " + path_.string() + ": " +
                  ec.message());
  temp_.clear();
}

void TimelineRecorder::add(const VideoFrame& frame) {
  for (const VideoFace& face : frame.faces) {
    Series& s = tracks_[face.tracked.track];
    if (s.probability.empty()) s.probability.resize(classes_.size());
    s.time_s.push_back(frame.time_s);
    for (std::size_t c = 0; c < classes_.size() && c < face.smoothed.size(); ++c) {
      s.probability[c].push_back(face.smoothed[c]);
    }
  }
}

cv::Mat TimelineRecorder::draw(const std::string& title, int max_tracks) const {
  const cv::Size chart_size(900, 300);
  // The tracks seen on most frames (spurious detections make short tracks), then in id order.
  std::vector<std::pair<std::size_t, int>> by_length;
  for (const auto& [track, s] : tracks_) by_length.emplace_back(s.time_s.size(), track);
  std::stable_sort(by_length.begin(), by_length.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  const std::size_t shown = std::min<std::size_t>(by_length.size(), std::max(0, max_tracks));
  std::vector<int> ids;
  for (std::size_t i = 0; i < shown; ++i) ids.push_back(by_length[i].second);
  std::sort(ids.begin(), ids.end());

  std::string note = std::to_string(tracks_.size()) + " track(s)";
  if (shown < tracks_.size()) note += ", the " + std::to_string(shown) + " longest shown";
  if (tracks_.empty()) note = "no face tracked";
  cv::Mat header(60, chart_size.width, CV_8UC3, cv::Scalar(255, 255, 255));
  cv::putText(header, title, {12, 26}, cv::FONT_HERSHEY_SIMPLEX, 0.7, cv::Scalar(0, 0, 0), 2,
              cv::LINE_AA);
  cv::putText(header, note, {12, 50}, cv::FONT_HERSHEY_SIMPLEX, 0.5, cv::Scalar(80, 80, 80), 1,
              cv::LINE_AA);
  std::vector<cv::Mat> parts{header};
  for (const int id : ids) {
    const Series& s = tracks_.at(id);
    report::LineChart chart;
    char head[128];
    std::snprintf(head, sizeof head, "track %d (%.2f-%.2f s, %zu frames)", id, s.time_s.front(),
                  s.time_s.back(), s.time_s.size());
    chart.title = head;
    chart.x.label = "time (s)";
    chart.y.label = "smoothed probability";
    chart.y.min = 0.0;
    chart.y.max = 1.0;
    for (std::size_t c = 0; c < classes_.size(); ++c) {
      report::Series line;
      line.label = classes_[c];
      line.x = s.time_s;
      line.y = s.probability[c];
      chart.series.push_back(std::move(line));
    }
    parts.push_back(report::draw_line_chart(chart, chart_size));
  }
  cv::Mat out;
  cv::vconcat(parts, out);
  return out;
}

void TimelineRecorder::write_png(const fs::path& path, const std::string& title) const {
  report::write_png(path, draw(title));
}

}  // namespace fer
