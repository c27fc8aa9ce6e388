// fer-predict on a video file or a camera: frames decoded on their own thread (frame_source.h),
// faces detected every N-th frame and tracked in between (tracker.h), the faces of several frames
// classified in one batch, each track's probabilities smoothed over time; every processed frame
// is then handed, in order, to a FrameObserver (JSON lines, annotated video, timeline).
//
// Threading: process_video runs on the calling thread, plus the decoder thread inside and, with
// 2 or more threads, an inference thread that also calls the observer (in frame order, never
// concurrently with itself).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "predict/frame_source.h"
#include "predict/predictor.h"
#include "predict/tracker.h"

namespace fer {

struct VideoOptions {
  int every = 1;  // run the detector on every N-th processed frame, track in between
  // Scaled to 320 px wide, faces from 48 px of a 640x480 frame are found; steps of 1.2 instead
  // of 1.1 halve the scan, the tracker carrying the boxes across frames.
  DetectScan detect{/*max_width=*/320, /*scale_step=*/1.2};
  SourceLimits limits;     // --start/--end (seconds), --max-frames
  double smooth = 0.8;     // EMA weight of the past per frame (EmotionSmoother), in [0, 1)
  TrackerOptions tracker;  // IoU matching, misses before a track ends (--max-missed)
  int batch_frames = 8;    // frames whose faces go through the model in one batch (latency
                           // of a camera stream: this many frames)
  int threads = 0;         // compute threads (fer-predict --threads; 0: all cores). From 2 on,
                           // detection and inference overlap on two threads that share them
                           // (inference ceil(T/2), detection floor(T/2)): no OpenMP barriers
                           // across the two, which stall when other jobs share the cores
  int queue_frames = 8;    // decoded frames waiting for the pipeline, at most
};

struct VideoFace {
  TrackedFace tracked;
  std::vector<float> probabilities;  // this frame's softmax, one per class
  std::vector<float> smoothed;       // the track's moving average after this frame
};

struct VideoFrame {
  std::int64_t index = 0;        // frame number in the stream
  double time_s = 0;             // its timestamp, seconds
  cv::Mat bgr;                   // the decoded frame (8-bit BGR)
  std::vector<VideoFace> faces;  // by track id; empty when no face is tracked on this frame
};

// Seconds spent per stage over one source. With one thread the stages add up to about wall_s;
// with more, detection (with preparing) and inference (with output) overlap.
struct VideoStats {
  std::int64_t frames = 0, faces = 0, batches = 0, detections = 0;
  double wall_s = 0;     // from opening to the last frame handed to the observer
  double cpu_s = 0;      // CPU time of the whole process meanwhile (all threads)
  double decode_s = 0;   // the decoder thread reading and decoding (overlaps the rest)
  double wait_s = 0;     // the pipeline waiting for decoded frames
  double detect_s = 0;   // face detection (colour conversion included)
  double prepare_s = 0;  // cropping, resizing, normalizing faces
  double infer_s = 0;    // the model's forward passes
  double output_s = 0;   // the observer (JSON, drawing, encoding the annotated video)
  // CPU time of the two stages' own threads (robust to other jobs on the machine): detection
  // with preparing, inference with output. Exact while each stage's library runs on its caller
  // (--threads 1 and 2); above, their worker threads are not counted.
  double detect_cpu_s = 0, infer_cpu_s = 0;
};

struct VideoResult {
  std::string source;          // VideoSource::name()
  SourceInfo info;             // size, nominal rate, declared frame count
  std::int64_t frames = 0;     // processed
  std::string error;           // empty, or why the source is bad input (exit code 3)
  bool interrupted = false;    // Ctrl-C (cancel_requested) ended it
  bool variable_rate = false;  // see DecodeReport
  double min_interval_s = 0, max_interval_s = 0;
  std::vector<TrackSummary> tracks;
  VideoStats stats;
};

class FrameObserver {
 public:
  virtual ~FrameObserver() = default;
  // The source opened; called before any on_frame.
  virtual void on_open(const VideoSource& source, const SourceInfo& info) = 0;
  // Every processed frame, in stream order, after its faces were classified and smoothed. The
  // pipeline is done with frame.bgr's pixels: the observer may draw on them.
  virtual void on_frame(const VideoFrame& frame) = 0;
  // False: frame.bgr is left empty, so frames waiting for inference hold no pixels (a 4K frame
  // is 24 MiB). Asked once per frame, after on_open.
  virtual bool needs_pixels() const { return true; }
};

// Processes one source to its end, its limits, or Ctrl-C (cancel_requested(): the frames read so
// far are finished and the result says interrupted). Bad input (cannot open, no frames,
// truncated) is returned in `error` with the frames processed before it was found; errors of
// the observer (IoError writing outputs) and ConfigError for bad options are thrown.
VideoResult process_video(Predictor& predictor, const VideoSource& source,
                          const VideoOptions& options, FrameObserver& observer);

}  // namespace fer
