// Faces followed across the frames of one video, and their emotions smoothed over time, so that a
// face keeps one id and its label does not flicker from frame to frame. Pure bookkeeping on boxes
// and probability vectors: no OpenCV, no model (tests/unit/predict_tracker_test.cpp).
//
// Threading: every class here is used from one thread (the video pipeline's consumer).
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "predict/face_box.h"

namespace fer {

struct TrackerOptions {
  double min_iou = 0.3;  // a detection continues a track when it overlaps the track's predicted
                         // box at least this much (intersection over union)
  int max_missed = 5;    // detection rounds in a row a track may go unmatched before it ends (K)
};

struct TrackedFace {
  int track = 0;          // 1, 2, ... in order of first appearance; never reused in one tracker
  FaceBox box;            // this frame's box: the detection, or predicted from the track's motion
  bool detected = false;  // the box is a detection on this frame (not a prediction)
};

// Matches detections to tracks by box overlap (IoU against each track's box predicted to the
// detection's frame, greedily, best pairs first), so a face moving between detection rounds keeps
// its id. Between rounds (fer-predict --every N) a track's box moves at its velocity, measured
// from its last detections.
class FaceTracker {
 public:
  // Throws ConfigError for min_iou outside (0, 1] or max_missed < 0.
  explicit FaceTracker(const TrackerOptions& options = {});

  // A frame on which the detector ran. Each detection continues the live track it overlaps most
  // (at least min_iou), else starts a new track; a live track that no detection continues counts
  // a miss and ends after max_missed + 1 misses in a row. Returns the tracks detected on this
  // frame, ordered by track id. `frame` numbers must not decrease across update/predict calls.
  std::vector<TrackedFace> update(std::int64_t frame, const std::vector<FaceBox>& detections);

  // A frame without detection: the tracks detected at the last round, boxes moved along their
  // velocity to `frame`, ordered by track id. Tracks that missed the last round are not returned
  // (they may be gone) but stay live until they end.
  std::vector<TrackedFace> predict(std::int64_t frame) const;

  int tracks_started() const { return next_id_ - 1; }
  int live_tracks() const { return static_cast<int>(tracks_.size()); }

 private:
  struct Track {
    int id = 0;
    FaceBox box;             // last detected box
    std::int64_t frame = 0;  // frame of that detection
    double vx = 0, vy = 0;   // velocity of the box centre, pixels per frame
    int hits = 0;            // detections so far
    int missed = 0;          // detection rounds missed in a row
  };
  static FaceBox moved(const Track& track, std::int64_t frame);

  TrackerOptions options_;
  std::vector<Track> tracks_;  // live tracks, by id
  int next_id_ = 1;
};

// Exponential moving average of each track's class probabilities, one step per processed frame of
// the track:  s = smooth * s + (1 - smooth) * p,  s = p on the track's first frame.
// smooth = 0 passes the probabilities through; the larger, the longer a change must last before
// the label follows: a clear change (0.9 for the old class, then 0.9 for a new one) wins after
// n frames with smooth^n < 1/2, i.e. 2 frames at 0.6, 4 at 0.8 (fer-predict's default: 0.16 s at
// 25 fps), 7 at 0.9; a single outlier frame never overturns such a clear label.
class EmotionSmoother {
 public:
  // Throws ConfigError unless 0 <= smooth < 1 (1 would freeze the first frame's label).
  explicit EmotionSmoother(double smooth);

  // Adds a track's probabilities of its next frame; returns its smoothed ones (the same length,
  // still summing to 1). The reference stays valid until the next call for the same track.
  const std::vector<float>& update(int track, const std::vector<float>& probabilities);

 private:
  double smooth_;
  std::map<int, std::vector<float>> state_;  // by track id
};

// Per track: when it was seen and which emotion it showed for what share of its frames (by the
// smoothed label, the one an annotated video shows).
struct TrackSummary {
  int track = 0;
  double first_s = 0, last_s = 0;  // times of its first and last processed frame
  std::int64_t frames = 0;         // processed frames on which it was seen
  int dominant = 0;                // class index with the largest share (lowest index on ties)
  std::vector<double> share;       // per class: fraction of its frames labelled so; sums to 1
};

class TrackSummaries {
 public:
  explicit TrackSummaries(int classes) : classes_(classes) {}
  // One processed frame of `track` at `time_s` with its smoothed probabilities (classes long).
  void add(int track, double time_s, const std::vector<float>& smoothed);
  // Ordered by track id.
  std::vector<TrackSummary> summaries() const;

 private:
  struct Counts {
    double first_s = 0, last_s = 0;
    std::vector<std::int64_t> labelled;  // frames per class
  };
  int classes_;
  std::map<int, Counts> tracks_;
};

// Index of the largest value (the first one on ties); 0 for an empty vector.
int argmax(const std::vector<float>& values);

}  // namespace fer
