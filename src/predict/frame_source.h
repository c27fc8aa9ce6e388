// Frames of a video file (OpenCV's videoio through Debian's FFmpeg backend: mp4, avi, mkv, webm,
// ...) or of a camera, decoded on their own thread into a bounded queue so that decoding overlaps
// detection and inference.
//
// The reader also judges the stream: a file that cannot be opened, has no frames, or ends before
// the frame count its container declares (truncated or damaged) is reported with a reason; a file
// whose timestamps are not evenly spaced (variable frame rate) is noted, and its frames carry the
// stream's own timestamps.
//
// Threading: one consumer thread calls next()/stop()/report(); the decoder thread is internal and
// joined by stop() and the destructor. Every decode loop is bounded: end of stream, the limits,
// or stop().
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <opencv2/core.hpp>
#include <string>

namespace fer {

struct VideoSource {
  std::filesystem::path path;  // a video file, or empty for a camera
  int camera = -1;             // a camera index (OpenCV's: /dev/videoN on Linux) when path is empty

  bool is_camera() const { return path.empty(); }
  // "clip.mp4" as given, or "camera 0": how messages and JSON name the source.
  std::string name() const;
};

// True for the extensions fer-predict treats as video files: mp4 m4v mov avi mkv webm mpg mpeg
// wmv flv ogv 3gp ts mts m2ts (any letter case).
bool has_video_extension(const std::filesystem::path& path);

struct SourceLimits {
  double start_s = 0;                                      // frames before this time are skipped
  double end_s = std::numeric_limits<double>::infinity();  // frames from this time on are not read
  std::int64_t max_frames = 0;                             // frames delivered at most; 0 = no limit
};

struct SourceInfo {
  int width = 0, height = 0;
  double fps = 0;                     // the container's nominal rate; 0 when unknown (some cameras)
  std::int64_t declared_frames = -1;  // the container's frame count; -1 when unknown (cameras)
};

struct Frame {
  std::int64_t index = 0;  // frame number in the stream: 0 is the file's first frame (also when
                           // --start skipped some), or the camera's first after opening
  double time_s = 0;       // the stream's timestamp (files), seconds since opening (cameras)
  cv::Mat bgr;             // 8-bit BGR, info().width x info().height
};

// What the decoder saw, complete once next() has returned false.
struct DecodeReport {
  std::int64_t frames = 0;     // frames delivered by next()
  double decode_s = 0;         // time the decoder thread spent reading and decoding
  bool stopped = false;        // stop() ended it before the end of the stream or a limit
  std::string problem;         // empty, or why the stream is bad (no frames, truncated, camera
                               // stopped): the caller reports it as bad input
  bool variable_rate = false;  // timestamps unevenly spaced (more than 25% off 1/fps)
  double min_interval_s = 0, max_interval_s = 0;  // between consecutive timestamps seen
};

class FrameReader {
 public:
  // Opens the source and starts decoding. Throws DataError naming the source when it cannot be
  // opened (missing, unreadable, not a video, no such camera) or has no video size.
  FrameReader(const VideoSource& source, const SourceLimits& limits, int queue_frames = 8);
  ~FrameReader();
  FrameReader(const FrameReader&) = delete;
  FrameReader& operator=(const FrameReader&) = delete;

  const SourceInfo& info() const;
  // The next frame in stream order, waiting for the decoder; false at the end (end of stream, a
  // limit, stop(), or a decoding failure, see report()).
  bool next(Frame* frame);
  // Seconds next() spent waiting for the decoder so far (the pipeline starved of frames).
  double wait_s() const;
  // Ends decoding after the frame being read (Ctrl-C): next() returns false from then on. Joins
  // the decoder thread; a camera read in progress finishes first (it returns within its driver's
  // timeout, ~10 s for V4L2).
  void stop();
  // Valid after next() returned false.
  DecodeReport report() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace fer
