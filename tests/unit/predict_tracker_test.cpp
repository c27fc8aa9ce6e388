// The video pipeline's bookkeeping without any video: boxes keep their track ids through motion,
// tracks end after the allowed misses, boxes move along their velocity between detection rounds,
// the moving average of probabilities follows its formula and reduces label changes, and the
// per-track summaries count what they should.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "common/errors.h"
#include "predict/tracker.h"

namespace fer {
namespace {

FaceBox box_at(int x, int y, int side = 60) { return {x, y, side, side}; }

std::vector<int> ids(const std::vector<TrackedFace>& faces) {
  std::vector<int> out;
  out.reserve(faces.size());
  for (const auto& f : faces) out.push_back(f.track);
  return out;
}

TEST(Iou, IsOverlapOverUnion) {
  EXPECT_DOUBLE_EQ(iou(box_at(0, 0, 10), box_at(0, 0, 10)), 1.0);
  EXPECT_DOUBLE_EQ(iou(box_at(0, 0, 10), box_at(10, 0, 10)), 0.0);  // touching edges
  EXPECT_DOUBLE_EQ(iou(box_at(0, 0, 10), box_at(5, 0, 10)), 50.0 / 150.0);
  EXPECT_DOUBLE_EQ(iou(FaceBox{}, box_at(0, 0, 10)), 0.0);  // empty box
}

TEST(FaceTracker, TwoMovingFacesKeepTheirIdsWhileTheyCrossTheFrame) {
  FaceTracker tracker;
  for (int frame = 0; frame < 100; ++frame) {
    // One face moves right, the other down, 4 px per frame; given in varying order.
    std::vector<FaceBox> detections = {box_at(10 + 4 * frame, 50), box_at(400, 10 + 4 * frame)};
    if (frame % 2) std::swap(detections[0], detections[1]);
    const auto faces = tracker.update(frame, detections);
    ASSERT_EQ(ids(faces), (std::vector<int>{1, 2})) << "frame " << frame;
    EXPECT_EQ(faces[0].box.y, 50) << "track 1 is the face moving right";
    EXPECT_EQ(faces[1].box.x, 400) << "track 2 is the face moving down";
    EXPECT_TRUE(faces[0].detected);
  }
  EXPECT_EQ(tracker.tracks_started(), 2);
}

TEST(FaceTracker, AFaceThatAppearsGetsTheNextIdAndIdsAreNeverReused) {
  TrackerOptions options;
  options.max_missed = 0;
  FaceTracker tracker(options);
  EXPECT_EQ(ids(tracker.update(0, {box_at(0, 0)})), std::vector<int>{1});
  EXPECT_EQ(ids(tracker.update(1, {box_at(0, 0), box_at(200, 0)})), (std::vector<int>{1, 2}));
  EXPECT_EQ(ids(tracker.update(2, {})), std::vector<int>{});
  // Both tracks ended (no miss allowed): the same places start new tracks.
  EXPECT_EQ(ids(tracker.update(3, {box_at(0, 0), box_at(200, 0)})), (std::vector<int>{3, 4}));
}

TEST(FaceTracker, ATrackSurvivesMaxMissedRoundsAndEndsAfterOneMore) {
  TrackerOptions options;
  options.max_missed = 2;
  FaceTracker tracker(options);
  tracker.update(0, {box_at(100, 100)});
  tracker.update(1, {});
  tracker.update(2, {});  // two misses: still live
  EXPECT_EQ(tracker.live_tracks(), 1);
  EXPECT_EQ(ids(tracker.update(3, {box_at(100, 100)})), std::vector<int>{1});
  for (int frame = 4; frame < 7; ++frame) tracker.update(frame, {});  // three misses: ended
  EXPECT_EQ(tracker.live_tracks(), 0);
  EXPECT_EQ(ids(tracker.update(7, {box_at(100, 100)})), std::vector<int>{2});
}

TEST(FaceTracker, BetweenDetectionRoundsBoxesMoveAlongTheirVelocity) {
  FaceTracker tracker;
  tracker.update(0, {box_at(100, 200, 40)});
  tracker.update(1, {box_at(110, 200, 40)});  // 10 px per frame to the right
  const auto predicted = tracker.predict(3);
  ASSERT_EQ(predicted.size(), 1u);
  EXPECT_EQ(predicted[0].box.x, 130);
  EXPECT_EQ(predicted[0].box.y, 200);
  EXPECT_FALSE(predicted[0].detected);
  // 30 px further at frame 4: against the last detected box the overlap is 10/70 < min_iou, but
  // against the predicted box it is complete, so the face keeps its id.
  ASSERT_LT(iou(box_at(110, 200, 40), box_at(140, 200, 40)), TrackerOptions{}.min_iou);
  EXPECT_EQ(ids(tracker.update(4, {box_at(140, 200, 40)})), std::vector<int>{1});
}

TEST(FaceTracker, EachDetectionGoesToTheTrackItOverlapsMost) {
  FaceTracker tracker;
  tracker.update(0, {box_at(0, 0, 100), box_at(60, 0, 100)});  // two overlapping faces
  // Each moved 5 px towards the other; the detections come in the other order.
  const auto faces = tracker.update(1, {box_at(55, 0, 100), box_at(5, 0, 100)});
  ASSERT_EQ(faces.size(), 2u);
  EXPECT_EQ(faces[0].track, 1);
  EXPECT_EQ(faces[0].box.x, 5);
  EXPECT_EQ(faces[1].track, 2);
  EXPECT_EQ(faces[1].box.x, 55);
}

TEST(FaceTracker, PredictLeavesOutTracksThatMissedTheLastRound) {
  FaceTracker tracker;
  tracker.update(0, {box_at(0, 0), box_at(300, 0)});
  tracker.update(1, {box_at(0, 0)});
  EXPECT_EQ(ids(tracker.predict(2)), std::vector<int>{1});
  EXPECT_EQ(tracker.live_tracks(), 2);  // track 2 may come back
  EXPECT_EQ(ids(tracker.update(3, {box_at(0, 0), box_at(300, 0)})), (std::vector<int>{1, 2}));
}

TEST(FaceTracker, RejectsBadOptions) {
  TrackerOptions bad;
  bad.min_iou = 0;
  EXPECT_THROW(FaceTracker{bad}, ConfigError);
  bad = {};
  bad.max_missed = -1;
  EXPECT_THROW(FaceTracker{bad}, ConfigError);
}

TEST(EmotionSmoother, FollowsTheMovingAverageFormula) {
  EmotionSmoother smoother(0.75);
  EXPECT_EQ(smoother.update(1, {0.2f, 0.8f}), (std::vector<float>{0.2f, 0.8f}));  // first frame
  const auto& s = smoother.update(1, {1.0f, 0.0f});
  EXPECT_FLOAT_EQ(s[0], 0.75f * 0.2f + 0.25f * 1.0f);
  EXPECT_FLOAT_EQ(s[1], 0.75f * 0.8f);
  EXPECT_FLOAT_EQ(s[0] + s[1], 1.0f);
  // Another track starts from its own first frame.
  EXPECT_EQ(smoother.update(2, {1.0f, 0.0f}), (std::vector<float>{1.0f, 0.0f}));
}

TEST(EmotionSmoother, ZeroPassesTheProbabilitiesThrough) {
  EmotionSmoother smoother(0.0);
  smoother.update(1, {0.9f, 0.1f});
  EXPECT_EQ(smoother.update(1, {0.3f, 0.7f}), (std::vector<float>{0.3f, 0.7f}));
}

TEST(EmotionSmoother, ReducesLabelChangesOfAFlickeringFace) {
  // A face that is "happy" (class 1) with frame-to-frame noise that makes a near tie with class
  // 0 flip now and then, then truly changes to class 2 at frame 60.
  std::vector<std::vector<float>> frames;
  for (int i = 0; i < 120; ++i) {
    const float noise = 0.12f * static_cast<float>(std::sin(i * 2.3));
    if (i < 60) {
      frames.push_back({0.4f + noise, 0.45f - noise, 0.15f});
    } else {
      frames.push_back({0.1f, 0.2f + noise, 0.7f - noise});
    }
  }
  const auto changes = [&](double smooth) {
    EmotionSmoother smoother(smooth);
    int n = 0, last = -1;
    for (const auto& p : frames) {
      const int label = argmax(smoother.update(1, p));
      if (last >= 0 && label != last) ++n;
      last = label;
    }
    return std::make_pair(n, last);
  };
  const auto [raw, raw_last] = changes(0.0);
  const auto [smoothed, smoothed_last] = changes(0.8);
  EXPECT_GT(raw, 10);
  EXPECT_LE(smoothed, 2);       // at most: a settling flip at the start, and the real change
  EXPECT_EQ(smoothed_last, 2);  // the real change still comes through
  EXPECT_EQ(raw_last, 2);
}

TEST(EmotionSmoother, RejectsValuesOutsideZeroToOne) {
  EXPECT_THROW(EmotionSmoother(-0.1), ConfigError);
  EXPECT_THROW(EmotionSmoother(1.0), ConfigError);
  EXPECT_NO_THROW(EmotionSmoother(0.99));
}

TEST(TrackSummaries, CountTimesFramesAndTheShareOfEachLabel) {
  TrackSummaries summaries(3);
  summaries.add(2, 0.5, {0.1f, 0.8f, 0.1f});
  summaries.add(1, 0.0, {0.7f, 0.2f, 0.1f});
  summaries.add(1, 0.04, {0.6f, 0.3f, 0.1f});
  summaries.add(1, 0.08, {0.2f, 0.3f, 0.5f});
  summaries.add(1, 0.12, {0.5f, 0.4f, 0.1f});
  const auto all = summaries.summaries();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].track, 1);  // by track id
  EXPECT_DOUBLE_EQ(all[0].first_s, 0.0);
  EXPECT_DOUBLE_EQ(all[0].last_s, 0.12);
  EXPECT_EQ(all[0].frames, 4);
  EXPECT_EQ(all[0].dominant, 0);
  EXPECT_EQ(all[0].share, (std::vector<double>{0.75, 0.0, 0.25}));
  EXPECT_EQ(all[1].track, 2);
  EXPECT_EQ(all[1].dominant, 1);
  EXPECT_EQ(all[1].frames, 1);
}

TEST(TrackSummaries, TiesGoToTheLowerClassIndex) {
  TrackSummaries summaries(3);
  summaries.add(1, 0.0, {0.0f, 0.0f, 1.0f});
  summaries.add(1, 0.1, {0.0f, 1.0f, 0.0f});
  EXPECT_EQ(summaries.summaries()[0].dominant, 1);
}

}  // namespace
}  // namespace fer
