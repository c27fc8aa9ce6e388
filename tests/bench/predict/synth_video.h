// A synthetic video for fer-predict's video tests and benchmark: fer-synth faces (the training
// set's drawing code, dataset_tools/synth_face.h) pasted at moving positions over a textured
// background, their expressions changing every few seconds. Everything is a pure function of the
// options, so a test knows where each face is on every frame.
//
// Header-only: used by tests/unit/predict_video_test.cpp and bench_make_video.cpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>
#include <vector>

#include "synth_face.h"

namespace fer::synth_video {

struct SceneOptions {
  cv::Size size{640, 480};  // frame size, pixels
  int faces = 2;            // 1 or 2
  int face_size = 128;      // side of each pasted face, pixels
  double fps = 25;
  int frames = 100;
  std::uint64_t seed = 1;       // background texture and faces
  double label_period_s = 2.0;  // a face's expression changes this often
  double speed = 3.0;           // pixels per frame, along each face's path
};

// Expressions the frontal-face cascade finds reliably on fer-synth faces (tests/unit/
// predict_test.cpp: angry, happy, neutral, sad; `surprise` is often missed).
inline const std::vector<int>& detectable_labels() {
  static const std::vector<int> kLabels = {0, 3, 4, 5};
  return kLabels;
}

// Face i's square at `frame`: face 0 goes back and forth along the left part of the picture,
// face 1 up and down the right part, so the two never overlap and each moves `speed` pixels
// per frame.
inline cv::Rect face_rect(const SceneOptions& o, int face, int frame) {
  const int s = o.face_size;
  const auto triangle = [&](int span) {  // 0..span..0 at `speed` px per frame
    if (span <= 0) return 0;
    const double t = std::fmod(o.speed * frame, 2.0 * span);
    return static_cast<int>(std::lround(t <= span ? t : 2.0 * span - t));
  };
  if (face == 0) {
    const int span = o.size.width / 2 - s - 20;
    return {10 + triangle(span), o.size.height / 2 - s / 2 - 40, s, s};
  }
  const int span = o.size.height - s - 20;
  return {o.size.width - s - 60, 10 + triangle(span), s, s};
}

// Face i's expression at `frame` (an index into synth_class_names()).
inline int face_label(const SceneOptions& o, int face, int frame) {
  const auto& labels = detectable_labels();
  const int period = std::max(1, static_cast<int>(std::lround(o.label_period_s * o.fps)));
  return labels[(frame / period + 2 * face) % labels.size()];
}

// The textured grey background: blurred noise and random lines (deterministic by seed).
inline cv::Mat background(const SceneOptions& o) {
  cv::Mat bg(o.size, CV_8UC1);
  cv::RNG rng(o.seed);
  rng.fill(bg, cv::RNG::UNIFORM, 40, 220);
  cv::GaussianBlur(bg, bg, cv::Size(0, 0), 2.5);
  for (int i = 0; i < 20; ++i) {
    cv::line(bg, {rng.uniform(0, bg.cols), rng.uniform(0, bg.rows)},
             {rng.uniform(0, bg.cols), rng.uniform(0, bg.rows)}, cv::Scalar(rng.uniform(30, 230)),
             rng.uniform(1, 4), cv::LINE_AA);
  }
  return bg;
}

// Frame `frame` of the scene, 8-bit BGR (grey content, as the faces are grey).
inline cv::Mat draw_frame(const SceneOptions& o, const cv::Mat& bg, int frame) {
  cv::Mat picture = bg.clone();
  for (int f = 0; f < o.faces; ++f) {
    // The drawing's index is the face's number: each face keeps its shape, only its expression
    // changes (every label_period_s), while its square moves.
    tools::draw_synth_face(face_label(o, f, frame), o.seed, static_cast<std::uint64_t>(f),
                           o.face_size)
        .copyTo(picture(face_rect(o, f, frame)));
  }
  cv::Mat bgr;
  cv::cvtColor(picture, bgr, cv::COLOR_GRAY2BGR);
  return bgr;
}

// Writes the scene with `fourcc` (e.g. MJPG in .avi: OpenCV's own writer, no FFmpeg encoder
// needed). Returns false when the writer cannot open.
inline bool write_video(const std::filesystem::path& path, const SceneOptions& o,
                        int fourcc = cv::VideoWriter::fourcc('M', 'J', 'P', 'G')) {
  cv::VideoWriter writer(path.string(), fourcc, o.fps, o.size, /*isColor=*/true);
  if (!writer.isOpened()) return false;
  const cv::Mat bg = background(o);
  for (int i = 0; i < o.frames; ++i) writer.write(draw_frame(o, bg, i));
  writer.release();
  return true;
}

}  // namespace fer::synth_video
