#include "predict/frame_source.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>
#include <thread>

#include "common/errors.h"

namespace fer {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr double kMaxSaneFps = 1000.0;   // above: a container's guess, not a frame rate
constexpr double kFallbackFps = 25.0;    // to extrapolate missing timestamps without a rate
constexpr double kRateTolerance = 0.25;  // an interval this far off 1/fps makes the rate variable

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// FFmpeg and OpenCV print their own warnings (GStreamer probing a camera, "moov atom not found",
// MJPEG overreads) on stderr; fer-predict names the source and the reason itself, so they are
// silenced unless the user asked for them (OPENCV_FFMPEG_LOGLEVEL / OPENCV_LOG_LEVEL set).
void quiet_video_backends() {
  static std::once_flag once;
  std::call_once(once, [] {
    ::setenv("OPENCV_FFMPEG_LOGLEVEL", "-8", /*overwrite=*/0);  // AV_LOG_QUIET
    if (std::getenv("OPENCV_LOG_LEVEL") == nullptr) {
      cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_ERROR);
    }
  });
}

}  // namespace

std::string VideoSource::name() const {
  return is_camera() ? "camera " + std::to_string(camera) : path.string();
}

bool has_video_extension(const fs::path& path) {
  static const std::array<const char*, 16> kExtensions = {
      ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg",  ".mpeg",
      ".wmv", ".flv", ".ogv", ".3gp", ".ts",  ".mts",  ".m2ts", ".mjpeg"};
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return std::find(kExtensions.begin(), kExtensions.end(), ext) != kExtensions.end();
}

struct FrameReader::State {
  VideoSource source;
  SourceLimits limits;
  SourceInfo info;
  cv::VideoCapture capture;
  std::size_t capacity = 8;
  std::int64_t first_index = 0;  // stream index of the first frame read (after a --start seek)

  std::mutex mutex;
  std::condition_variable has_frame, has_space;
  std::deque<Frame> queue;  // guarded by mutex, as are the fields below
  bool stop = false;
  bool done = false;  // the decoder thread will push no more
  DecodeReport report;
  double wait_s = 0;  // consumer only

  std::thread decoder;

  void decode_loop();
  // Pushes a frame, waiting for room; false when stop() was called meanwhile.
  bool push(Frame frame);
  void finish(const std::string& problem);
};

bool FrameReader::State::push(Frame frame) {
  std::unique_lock<std::mutex> lock(mutex);
  has_space.wait(lock, [&] { return queue.size() < capacity || stop; });
  if (stop) return false;
  queue.push_back(std::move(frame));
  ++report.frames;
  has_frame.notify_one();
  return true;
}

void FrameReader::State::finish(const std::string& problem) {
  std::lock_guard<std::mutex> lock(mutex);
  report.problem = problem;
  done = true;
  has_frame.notify_all();
}

void FrameReader::State::decode_loop() {
  const bool camera = source.is_camera();
  const double nominal = 1.0 / (info.fps > 0 ? info.fps : kFallbackFps);
  std::int64_t index = first_index;  // of the next frame read
  std::int64_t delivered = 0;
  double last_time = 0;
  bool have_time = false, end_of_stream = false;
  double decode_s = 0, min_dt = 0, max_dt = 0;
  bool variable = false, have_dt = false;
  const Clock::time_point opened = Clock::now();
  std::string problem;
  try {
    for (;;) {  // bounded: end of stream, end_s, max_frames, stop
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (stop) {
          report.stopped = true;
          break;
        }
      }
      if (limits.max_frames > 0 && delivered >= limits.max_frames) break;
      cv::Mat raw;
      const Clock::time_point t0 = Clock::now();
      const bool ok = capture.read(raw);
      decode_s += seconds_since(t0);
      if (!ok || raw.empty()) {
        end_of_stream = true;
        break;
      }
      double time_s;
      if (camera) {
        time_s = seconds_since(opened);
      } else {
        // The stream's timestamp when it moves forward; decoders report 0 or repeat one for the
        // frames they flush at the end (B-frames), which are then spaced at the nominal rate.
        const double stamp = capture.get(cv::CAP_PROP_POS_MSEC) / 1000.0;
        const bool valid = std::isfinite(stamp) && stamp >= 0 && (!have_time || stamp > last_time);
        if (valid) {
          if (have_time) {
            const double dt = stamp - last_time;
            min_dt = have_dt ? std::min(min_dt, dt) : dt;
            max_dt = have_dt ? std::max(max_dt, dt) : dt;
            have_dt = true;
            if (std::abs(dt - nominal) > kRateTolerance * nominal) variable = true;
          }
          time_s = stamp;
        } else {
          time_s = have_time ? last_time + nominal : static_cast<double>(index) * nominal;
        }
      }
      last_time = time_s;
      have_time = true;
      const std::int64_t this_index = index++;
      if (time_s >= limits.end_s) break;
      if (time_s < limits.start_s - 1e-6) continue;  // the seek landed before --start
      Frame frame;
      frame.index = this_index;
      frame.time_s = time_s;
      if (raw.type() == CV_8UC3) {
        frame.bgr = raw;
      } else if (raw.type() == CV_8UC1) {
        cv::cvtColor(raw, frame.bgr, cv::COLOR_GRAY2BGR);
      } else if (raw.type() == CV_8UC4) {
        cv::cvtColor(raw, frame.bgr, cv::COLOR_BGRA2BGR);
      } else {
        problem =
            "unsupported decoded pixel format (OpenCV type " + std::to_string(raw.type()) + ")";
        break;
      }
      // A stream whose size changes midway is scaled to its first size: one size per output.
      if (frame.bgr.cols != info.width || frame.bgr.rows != info.height) {
        cv::resize(frame.bgr, frame.bgr, cv::Size(info.width, info.height), 0, 0, cv::INTER_AREA);
      }
      if (!push(std::move(frame))) {
        std::lock_guard<std::mutex> lock(mutex);
        report.stopped = true;
        break;
      }
      ++delivered;
    }
  } catch (const std::exception& e) {  // cv::Exception from a decoder: the stream is bad
    problem = std::string("decoding failed: ") + e.what();
  }
  if (problem.empty() && end_of_stream) {
    if (camera) {
      problem = delivered == 0
                    ? "the camera delivered no frame"
                    : "the camera stopped delivering frames after " + std::to_string(delivered);
    } else if (delivered == 0) {
      problem = limits.start_s > 0
                    ? "no frames at or after --start " + std::to_string(limits.start_s) + " s"
                    : "no frames (an empty video)";
    } else if (info.declared_frames > 0) {
      // Containers that estimate their count from the duration can be off by a frame or two.
      const std::int64_t tolerance = std::max<std::int64_t>(2, info.declared_frames / 50);
      if (index < info.declared_frames - tolerance) {
        problem = "truncated or damaged: the stream ended after " + std::to_string(index) +
                  " of the " + std::to_string(info.declared_frames) +
                  " frames its container declares";
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(mutex);
    report.decode_s = decode_s;
    report.variable_rate = variable;
    report.min_interval_s = min_dt;
    report.max_interval_s = max_dt;
  }
  finish(problem);
}

FrameReader::FrameReader(const VideoSource& source, const SourceLimits& limits, int queue_frames)
    : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.source = source;
  s.limits = limits;
  s.capacity = static_cast<std::size_t>(std::max(1, queue_frames));
  FER_CHECK(limits.start_s >= 0 && limits.end_s > limits.start_s && limits.max_frames >= 0,
            ConfigError, "bad frame limits: --start ", limits.start_s, " --end ", limits.end_s,
            " --max-frames ", limits.max_frames);
  quiet_video_backends();
  const std::string name = source.name();
  if (source.is_camera()) {
    FER_CHECK(source.camera >= 0, ConfigError, "camera index must be at least 0, got ",
              source.camera);
    s.capture.open(source.camera, cv::CAP_ANY);
    if (!s.capture.isOpened()) {
      throw DataError(name + ": cannot open the camera",
                      "check that it exists (ls /dev/video*), is not in use by another program, "
                      "and that you may read it (group video)");
    }
  } else {
    std::error_code ec;
    const fs::file_status status = fs::status(source.path, ec);
    if (!fs::exists(status)) throw DataError(name + ": no such file");
    // A FIFO or device would make FFmpeg wait for data that may never come.
    if (!fs::is_regular_file(status)) throw DataError(name + ": not a regular file");
    s.capture.open(source.path.string(), cv::CAP_FFMPEG);
    if (!s.capture.isOpened()) {
      throw DataError(name +
                      ": cannot open as a video (not a video, damaged or truncated, or a "
                      "codec Debian's FFmpeg lacks)");
    }
  }
  s.info.width = static_cast<int>(s.capture.get(cv::CAP_PROP_FRAME_WIDTH));
  s.info.height = static_cast<int>(s.capture.get(cv::CAP_PROP_FRAME_HEIGHT));
  if (s.info.width <= 0 || s.info.height <= 0) throw DataError(name + ": no video stream");
  const double fps = s.capture.get(cv::CAP_PROP_FPS);
  s.info.fps = std::isfinite(fps) && fps > 0 && fps <= kMaxSaneFps ? fps : 0.0;
  if (!source.is_camera()) {
    const double count = s.capture.get(cv::CAP_PROP_FRAME_COUNT);
    s.info.declared_frames =
        std::isfinite(count) && count > 0 && count < 1e12 ? static_cast<std::int64_t>(count) : -1;
    // Seek close to --start; the decoder then skips what lies before it. Where the container
    // cannot seek, frames are read and skipped from the beginning (still bounded by its end).
    if (limits.start_s > 0 && s.capture.set(cv::CAP_PROP_POS_MSEC, limits.start_s * 1000.0)) {
      const double next = s.capture.get(cv::CAP_PROP_POS_FRAMES);
      s.first_index = std::isfinite(next) && next > 0 ? static_cast<std::int64_t>(next) : 0;
    }
  }
  s.decoder = std::thread([&s] { s.decode_loop(); });
}

FrameReader::~FrameReader() { stop(); }

const SourceInfo& FrameReader::info() const { return state_->info; }

bool FrameReader::next(Frame* frame) {
  State& s = *state_;
  const Clock::time_point t0 = Clock::now();
  std::unique_lock<std::mutex> lock(s.mutex);
  s.has_frame.wait(lock, [&] { return !s.queue.empty() || s.done || s.stop; });
  s.wait_s += seconds_since(t0);
  if (s.stop || s.queue.empty()) return false;
  *frame = std::move(s.queue.front());
  s.queue.pop_front();
  s.has_space.notify_one();
  return true;
}

double FrameReader::wait_s() const { return state_->wait_s; }

void FrameReader::stop() {
  State& s = *state_;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.stop = true;
    s.queue.clear();
  }
  s.has_space.notify_all();
  s.has_frame.notify_all();
  if (s.decoder.joinable()) s.decoder.join();
}

DecodeReport FrameReader::report() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->report;
}

}  // namespace fer
