#include "predict/video.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <ctime>  // clock_gettime, std::clock
#include <deque>
#include <exception>
#include <mutex>
#include <opencv2/core/utility.hpp>
#include <thread>

#include "common/cancel.h"
#include "common/errors.h"

namespace fer {
namespace {

using Clock = std::chrono::steady_clock;

// Batches waiting for the inference thread: enough to keep it busy while detection runs ahead,
// few enough that a camera's frames are not held back for long.
constexpr std::size_t kQueuedBatches = 2;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// CPU time of the calling thread, seconds.
double thread_cpu_s() {
  timespec t{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// A predicted box clipped to the frame; empty (width 0) when less than half of it is inside:
// the face is leaving the picture and its crop would be mostly repeated border pixels.
FaceBox clip_to_frame(const FaceBox& b, int width, int height) {
  const int x0 = std::max(0, b.x), y0 = std::max(0, b.y);
  const int x1 = std::min(width, b.x + b.width), y1 = std::min(height, b.y + b.height);
  if (x1 <= x0 || y1 <= y0) return {};
  const long inside = static_cast<long>(x1 - x0) * (y1 - y0);
  if (2 * inside < static_cast<long>(b.width) * b.height) return {};
  return {x0, y0, x1 - x0, y1 - y0};
}

// Frames whose faces are prepared for the model (frame after frame, in stream order).
struct Batch {
  std::vector<VideoFrame> frames;
  std::vector<float> faces;
};

// The second stage: classifies a batch, smooths each track in frame order, keeps the summaries
// and hands the frames to the observer. Used by one thread at a time.
class Classifier {
 public:
  Classifier(Predictor& predictor, const VideoOptions& options, FrameObserver& observer)
      : predictor_(predictor),
        observer_(observer),
        smoother_(options.smooth),
        summaries_(static_cast<int>(predictor.classes().size())) {}

  void process(Batch& batch) {
    const double cpu0 = thread_cpu_s();
    const std::size_t classes = predictor_.classes().size();
    const int rows = static_cast<int>(batch.faces.size() / predictor_.face_floats());
    Clock::time_point t0 = Clock::now();
    std::vector<float> probs;
    if (rows > 0) {
      probs = predictor_.classify(batch.faces.data(), rows);
      ++stats_.batches;
    }
    stats_.infer_s += seconds_since(t0);
    t0 = Clock::now();
    std::size_t row = 0;
    for (VideoFrame& frame : batch.frames) {
      for (VideoFace& face : frame.faces) {
        const float* p = probs.data() + row++ * classes;
        face.probabilities.assign(p, p + classes);
        face.smoothed = smoother_.update(face.tracked.track, face.probabilities);
        summaries_.add(face.tracked.track, frame.time_s, face.smoothed);
      }
      stats_.faces += static_cast<std::int64_t>(frame.faces.size());
      ++stats_.frames;
      observer_.on_frame(frame);
    }
    stats_.output_s += seconds_since(t0);
    stats_.infer_cpu_s += thread_cpu_s() - cpu0;
  }

  std::vector<TrackSummary> summaries() const { return summaries_.summaries(); }
  const VideoStats& stats() const { return stats_; }

 private:
  Predictor& predictor_;
  FrameObserver& observer_;
  EmotionSmoother smoother_;
  TrackSummaries summaries_;
  VideoStats stats_;  // frames, faces, batches, infer_s, output_s
};

// Runs a Classifier on its own thread, fed through a bounded queue. An exception there (the
// observer's IoError) is rethrown to the feeding thread by the next submit() or by finish().
class InferenceThread {
 public:
  InferenceThread(Classifier& classifier, int torch_threads)
      : classifier_(classifier), thread_([this, torch_threads] { run(torch_threads); }) {}
  ~InferenceThread() {
    if (thread_.joinable()) {
      close();
      thread_.join();
    }
  }

  // Queues a batch, waiting while kQueuedBatches are queued. Bounded: the thread drains the
  // queue or stops with an error.
  void submit(Batch batch) {
    std::unique_lock<std::mutex> lock(mutex_);
    has_space_.wait(lock, [&] { return queue_.size() < kQueuedBatches || error_; });
    if (error_) std::rethrow_exception(error_);
    queue_.push_back(std::move(batch));
    has_batch_.notify_one();
  }

  // Processes what is queued, joins the thread, rethrows its error.
  void finish() {
    close();
    thread_.join();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    has_batch_.notify_one();
  }

  void run(int torch_threads) {
    set_compute_threads(torch_threads, cv::getNumThreads());  // LibTorch's count is per thread
    for (;;) {
      Batch batch;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        has_batch_.wait(lock, [&] { return !queue_.empty() || closed_; });
        if (queue_.empty()) return;  // closed and drained
        batch = std::move(queue_.front());
        queue_.pop_front();
        has_space_.notify_one();
      }
      try {
        classifier_.process(batch);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        error_ = std::current_exception();
        queue_.clear();
        has_space_.notify_all();
        return;
      }
    }
  }

  Classifier& classifier_;
  std::mutex mutex_;
  std::condition_variable has_batch_, has_space_;
  std::deque<Batch> queue_;  // guarded by mutex_, as are closed_ and error_
  bool closed_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: started once the members above exist
};

// The first stage: frames in, faces detected or tracked, prepared and batched.
class Pipeline {
 public:
  Pipeline(Predictor& predictor, const VideoOptions& options, FrameObserver& observer,
           int inference_threads)
      : predictor_(predictor),
        options_(options),
        observer_(observer),
        tracker_(options.tracker),
        classifier_(predictor, options, observer),
        face_floats_(predictor.face_floats()) {
    if (inference_threads > 0) {
      worker_ = std::make_unique<InferenceThread>(classifier_, inference_threads);
    }
  }

  void add(Frame frame) {
    const double cpu0 = thread_cpu_s();
    Clock::time_point t0 = Clock::now();
    const cv::Mat image = predictor_.from_bgr(frame.bgr);
    std::vector<TrackedFace> faces;
    if (processed_ % options_.every == 0) {
      faces = tracker_.update(frame.index, predictor_.detect(image, options_.detect));
      ++detections_;
    } else {
      faces = tracker_.predict(frame.index);
    }
    detect_s_ += seconds_since(t0);

    t0 = Clock::now();
    VideoFrame out;
    out.index = frame.index;
    out.time_s = frame.time_s;
    if (observer_.needs_pixels()) out.bgr = std::move(frame.bgr);
    for (TrackedFace& face : faces) {
      face.box = clip_to_frame(face.box, image.cols, image.rows);
      if (face.box.width == 0) continue;
      batch_.faces.resize(batch_.faces.size() + face_floats_);
      predictor_.prepare(image, face.box, batch_.faces.data() + batch_.faces.size() - face_floats_);
      out.faces.push_back({face, {}, {}});
    }
    prepare_s_ += seconds_since(t0);
    detect_cpu_s_ += thread_cpu_s() - cpu0;
    batch_.frames.push_back(std::move(out));
    ++processed_;
    if (static_cast<int>(batch_.frames.size()) >= options_.batch_frames) flush();
  }

  // Hands the pending frames to the classifier (its thread, or this one).
  void flush() {
    if (batch_.frames.empty()) return;
    if (worker_) {
      worker_->submit(std::move(batch_));
    } else {
      classifier_.process(batch_);
    }
    batch_ = Batch();
  }

  // Flushes and waits for the classifier; rethrows its error.
  void finish() {
    flush();
    if (worker_) worker_->finish();
  }

  std::vector<TrackSummary> summaries() const { return classifier_.summaries(); }
  VideoStats stats() const {
    VideoStats s = classifier_.stats();
    s.detections = detections_;
    s.detect_s = detect_s_;
    s.prepare_s = prepare_s_;
    s.detect_cpu_s = detect_cpu_s_;
    return s;
  }

 private:
  Predictor& predictor_;
  const VideoOptions& options_;
  const FrameObserver& observer_;
  FaceTracker tracker_;
  Classifier classifier_;
  const std::size_t face_floats_;
  std::unique_ptr<InferenceThread> worker_;  // after classifier_: joined before it goes
  std::int64_t processed_ = 0, detections_ = 0;
  double detect_s_ = 0, prepare_s_ = 0, detect_cpu_s_ = 0;
  Batch batch_;
};

}  // namespace

VideoResult process_video(Predictor& predictor, const VideoSource& source,
                          const VideoOptions& options, FrameObserver& observer) {
  FER_CHECK(options.every >= 1, ConfigError, "--every must be at least 1, got ", options.every);
  FER_CHECK(options.batch_frames >= 1, ConfigError, "batch_frames must be at least 1");
  FER_CHECK(options.threads >= 0, ConfigError, "--threads must be at least 0");
  const Clock::time_point start = Clock::now();
  const std::clock_t cpu_start = std::clock();
  VideoResult result;
  result.source = source.name();
  // Threads: T >= 2 overlaps detection (this thread) and inference (another): ceil(T/2) for
  // inference, floor(T/2) for detection; the old OpenCV count is restored at the end.
  const int threads = options.threads > 0
                          ? options.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const int inference_threads = threads >= 2 ? (threads + 1) / 2 : 0;
  const int opencv_before = cv::getNumThreads();
  if (threads >= 2) cv::setNumThreads(threads / 2);
  struct RestoreOpenCvThreads {
    int count;
    ~RestoreOpenCvThreads() { cv::setNumThreads(count); }
  } restore{opencv_before};

  // Checks the tracker and smoother options before opening the source.
  Pipeline pipeline(predictor, options, observer, inference_threads);
  std::unique_ptr<FrameReader> reader;
  try {
    reader = std::make_unique<FrameReader>(source, options.limits, options.queue_frames);
  } catch (const DataError& e) {
    result.error = e.what();
    pipeline.finish();
    return result;
  }
  result.info = reader->info();
  observer.on_open(source, result.info);
  Frame frame;
  // Bounded: the reader ends at the end of the stream, a limit, or stop().
  while (!cancel_requested() && reader->next(&frame)) pipeline.add(std::move(frame));
  if (cancel_requested()) {
    result.interrupted = true;
    reader->stop();
  }
  pipeline.finish();
  const DecodeReport report = reader->report();
  result.frames = pipeline.stats().frames;
  result.error = report.problem;
  result.variable_rate = report.variable_rate;
  result.min_interval_s = report.min_interval_s;
  result.max_interval_s = report.max_interval_s;
  result.tracks = pipeline.summaries();
  result.stats = pipeline.stats();
  result.stats.decode_s = report.decode_s;
  result.stats.wait_s = reader->wait_s();
  result.stats.wall_s = seconds_since(start);
  result.stats.cpu_s = static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC;
  return result;
}

}  // namespace fer
