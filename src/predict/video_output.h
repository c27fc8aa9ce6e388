// What fer-predict makes of a processed video besides JSON lines: the annotated copy (boxes,
// track ids, smoothed label and a confidence bar on every frame) and the emotion timeline of each
// track (fer-report's line charts, src/report/plot.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "predict/video.h"

namespace fer {

// Draws each face of `frame` onto `bgr` (the frame's own pixels or a copy): its box, "#track
// label NN%" with the smoothed label, and under the box a bar as long as the box filled to the
// smoothed probability. Colours follow the track id, so a face keeps its colour.
void draw_video_annotations(cv::Mat& bgr, const VideoFrame& frame,
                            const std::vector<std::string>& classes);

// The codec fer-predict writes for an annotated video path, by its extension: .avi and .mkv
// MJPG (OpenCV's own AVI writer / FFmpeg's matroska muxer), .mp4/.m4v/.mov MPEG-4 Part 2
// ("mp4v", FFmpeg's encoder). Throws ConfigError for another extension.
int annotated_video_fourcc(const std::filesystem::path& path);

// An annotated video written under a temporary name beside `path` ("<dir>/.<name>.tmp-<pid>.<ext>",
// the container follows the extension) and renamed to `path` by finish(), so `path` is either
// absent or a complete, playable file (the container's index written on close). The destructor
// without finish() removes the temporary file.
class AnnotatedVideoWriter {
 public:
  // Throws IoError when the file cannot be created or no encoder is available, ConfigError for
  // an unknown extension. `fps` outside [1, 240] is written as 25 (cameras that report none).
  AnnotatedVideoWriter(const std::filesystem::path& path, double fps, cv::Size size);
  ~AnnotatedVideoWriter();
  AnnotatedVideoWriter(const AnnotatedVideoWriter&) = delete;
  AnnotatedVideoWriter& operator=(const AnnotatedVideoWriter&) = delete;

  void write(const cv::Mat& bgr);  // frame of the constructor's size
  // Closes the file and renames it into place. Throws IoError.
  void finish();
  std::int64_t frames() const { return frames_; }
  double fps() const { return fps_; }

 private:
  struct Handle;
  std::unique_ptr<Handle> handle_;
  std::filesystem::path path_, temp_;
  double fps_ = 25;
  std::int64_t frames_ = 0;
};

// The smoothed probabilities of every track over time, drawn per track as one line chart (one
// line per class, time on x) and the charts stacked in one picture.
class TimelineRecorder {
 public:
  explicit TimelineRecorder(std::vector<std::string> classes) : classes_(std::move(classes)) {}
  void add(const VideoFrame& frame);
  // The charts of the `max_tracks` tracks seen on most frames, in track id order, one under the
  // other (the note under the title says how many were left out). A picture saying "no face
  // tracked" when there was none.
  cv::Mat draw(const std::string& title, int max_tracks = 8) const;
  // draw() encoded as PNG and written atomically. Throws IoError.
  void write_png(const std::filesystem::path& path, const std::string& title) const;
  bool empty() const { return tracks_.empty(); }

 private:
  struct Series {
    std::vector<double> time_s;
    std::vector<std::vector<double>> probability;  // [class][point]
  };
  std::vector<std::string> classes_;
  std::map<int, Series> tracks_;
};

}  // namespace fer
