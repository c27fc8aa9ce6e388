#include "predict/tracker.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "common/errors.h"

namespace fer {
namespace {

// Weight of a new velocity measurement against the previous estimate: detector boxes jitter by a
// few pixels, so one measurement alone would make predicted boxes wobble.
constexpr double kVelocityBlend = 0.5;

double centre_x(const FaceBox& b) { return b.x + b.width / 2.0; }
double centre_y(const FaceBox& b) { return b.y + b.height / 2.0; }

}  // namespace

FaceTracker::FaceTracker(const TrackerOptions& options) : options_(options) {
  FER_CHECK(options.min_iou > 0 && options.min_iou <= 1, ConfigError,
            "the tracker's minimum IoU must be in (0, 1], got ", options.min_iou);
  FER_CHECK(options.max_missed >= 0, ConfigError, "--max-missed must be at least 0, got ",
            options.max_missed);
}

FaceBox FaceTracker::moved(const Track& track, std::int64_t frame) {
  const double dt = static_cast<double>(std::max<std::int64_t>(0, frame - track.frame));
  FaceBox box = track.box;
  box.x += static_cast<int>(std::lround(track.vx * dt));
  box.y += static_cast<int>(std::lround(track.vy * dt));
  return box;
}

std::vector<TrackedFace> FaceTracker::update(std::int64_t frame,
                                             const std::vector<FaceBox>& detections) {
  // Every (track, detection) pair that overlaps enough, best first; ties by track then detection
  // index so the outcome does not depend on the sort's stability.
  std::vector<std::tuple<double, std::size_t, std::size_t>> pairs;
  for (std::size_t t = 0; t < tracks_.size(); ++t) {
    const FaceBox predicted = moved(tracks_[t], frame);
    for (std::size_t d = 0; d < detections.size(); ++d) {
      const double overlap = iou(predicted, detections[d]);
      if (overlap >= options_.min_iou) pairs.emplace_back(overlap, t, d);
    }
  }
  std::sort(pairs.begin(), pairs.end(), [](const auto& a, const auto& b) {
    if (std::get<0>(a) != std::get<0>(b)) return std::get<0>(a) > std::get<0>(b);
    return std::make_pair(std::get<1>(a), std::get<2>(a)) <
           std::make_pair(std::get<1>(b), std::get<2>(b));
  });
  std::vector<bool> track_taken(tracks_.size(), false), detection_taken(detections.size(), false);
  std::vector<TrackedFace> out;
  for (const auto& [overlap, t, d] : pairs) {
    if (track_taken[t] || detection_taken[d]) continue;
    track_taken[t] = detection_taken[d] = true;
    Track& track = tracks_[t];
    const FaceBox& box = detections[d];
    const double dt = static_cast<double>(std::max<std::int64_t>(1, frame - track.frame));
    const double vx = (centre_x(box) - centre_x(track.box)) / dt;
    const double vy = (centre_y(box) - centre_y(track.box)) / dt;
    // The first measurement is the estimate; later ones are blended in.
    const double blend = track.hits == 1 ? 1.0 : kVelocityBlend;
    track.vx = blend * vx + (1 - blend) * track.vx;
    track.vy = blend * vy + (1 - blend) * track.vy;
    track.box = box;
    track.frame = frame;
    track.missed = 0;
    ++track.hits;
    out.push_back({track.id, box, /*detected=*/true});
  }
  for (std::size_t t = 0; t < tracks_.size(); ++t) {
    if (!track_taken[t]) ++tracks_[t].missed;
  }
  tracks_.erase(std::remove_if(tracks_.begin(), tracks_.end(),
                               [&](const Track& t) { return t.missed > options_.max_missed; }),
                tracks_.end());
  // New tracks in detection order (the detector's reading order), so ids are predictable.
  for (std::size_t d = 0; d < detections.size(); ++d) {
    if (detection_taken[d]) continue;
    Track track;
    track.id = next_id_++;
    track.box = detections[d];
    track.frame = frame;
    track.hits = 1;
    tracks_.push_back(track);
    out.push_back({track.id, track.box, /*detected=*/true});
  }
  std::sort(out.begin(), out.end(),
            [](const TrackedFace& a, const TrackedFace& b) { return a.track < b.track; });
  return out;
}

std::vector<TrackedFace> FaceTracker::predict(std::int64_t frame) const {
  std::vector<TrackedFace> out;
  for (const Track& track : tracks_) {  // tracks_ is in id order: ids only grow
    if (track.missed == 0) out.push_back({track.id, moved(track, frame), /*detected=*/false});
  }
  return out;
}

EmotionSmoother::EmotionSmoother(double smooth) : smooth_(smooth) {
  FER_CHECK(smooth >= 0 && smooth < 1, ConfigError, "--smooth must be in [0, 1), got ", smooth);
}

const std::vector<float>& EmotionSmoother::update(int track,
                                                  const std::vector<float>& probabilities) {
  auto [it, first] = state_.try_emplace(track, probabilities);
  std::vector<float>& s = it->second;
  if (!first) {
    FER_CHECK(s.size() == probabilities.size(), ConfigError, "track ", track, " had ", s.size(),
              " classes, now ", probabilities.size());
    const float keep = static_cast<float>(smooth_);
    for (std::size_t i = 0; i < s.size(); ++i) s[i] = keep * s[i] + (1 - keep) * probabilities[i];
  }
  return s;
}

int argmax(const std::vector<float>& values) {
  return values.empty()
             ? 0
             : static_cast<int>(std::max_element(values.begin(), values.end()) - values.begin());
}

void TrackSummaries::add(int track, double time_s, const std::vector<float>& smoothed) {
  auto [it, first] = tracks_.try_emplace(track);
  Counts& c = it->second;
  if (first) {
    c.first_s = time_s;
    c.labelled.assign(classes_, 0);
  }
  c.last_s = time_s;
  const int label = argmax(smoothed);
  if (label < classes_) ++c.labelled[label];
}

std::vector<TrackSummary> TrackSummaries::summaries() const {
  std::vector<TrackSummary> out;
  for (const auto& [track, c] : tracks_) {
    TrackSummary s;
    s.track = track;
    s.first_s = c.first_s;
    s.last_s = c.last_s;
    for (const std::int64_t n : c.labelled) s.frames += n;
    s.share.assign(classes_, 0.0);
    const double frames = static_cast<double>(std::max<std::int64_t>(1, s.frames));
    for (int i = 0; i < classes_; ++i) {
      s.share[i] = static_cast<double>(c.labelled[i]) / frames;
      if (c.labelled[i] > c.labelled[s.dominant]) s.dominant = i;
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace fer
