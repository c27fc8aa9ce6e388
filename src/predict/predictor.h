// fer-predict's work: find faces in pictures (OpenCV's frontal-face Haar cascade), crop each with a
// margin, preprocess it exactly like fer-pack + the trainer prepared training images (channels,
// resize, normalization from the checkpoint), classify all faces in batches and return the top-k
// emotions per face. The checkpoint alone describes the model (classes, normalization, image
// shape, model options).
//
// Threading: detect()/prepare() and classify() may run at the same time on two threads (the
// cascade and the model share no mutable state; the video pipeline overlaps them); otherwise a
// Predictor is used from one thread at a time. LibTorch parallelizes each batch internally,
// OpenCV each detection.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "predict/face_box.h"

namespace fer {

// Debian's opencv-data package installs it here.
inline constexpr const char* kDefaultCascade =
    "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml";

struct PredictOptions {
  std::filesystem::path checkpoint;  // a fer-dist-train checkpoint (.pt)
  bool detect_faces = true;          // false: classify each whole image as one face
  std::filesystem::path cascade = kDefaultCascade;
  double margin = 0.15;        // added on every side, fraction of the box side
  int min_face = 24;           // smallest face the detector reports, pixels
  int top_k = 3;               // emotions listed per face (capped at the classes)
  int batch_size = 64;         // faces per forward pass
  std::string device = "cpu";  // cpu | cuda | cuda:N | auto
  int threads = 0;             // > 0: LibTorch's and OpenCV's worker threads, process-wide;
                               // 0 keeps their defaults (all cores)
  // Test-time augmentation, as the trainer's eval.tta (src/model/tta.h, the same views and
  // averaging): none | flip (2 forward passes per face) | ten_crop (10; the crops of the
  // default pad, kDefaultTtaPad, as fer-dist-train --eval-only).
  std::string tta = "none";
};

// How the cascade scans an image. Its cost grows with the pixels, the edges in them and the
// number of window sizes: on a textured 640x480 frame (tests/bench/predict) a full-size scan in
// 1.1 steps took ~110 ms of CPU, at 320 px width ~35 ms, at 320 px in 1.2 steps ~20 ms, finding
// the same faces.
struct DetectScan {
  int max_width = 0;        // a wider image is scanned scaled down to this width (0: full size);
                            // faces below 24 px at that scale (the cascade's window) are missed
  double scale_step = 1.1;  // size ratio of successive windows (OpenCV's scaleFactor), > 1
};

struct ClassScore {
  std::string label;
  double probability = 0.0;  // softmax over all classes
};

struct FacePrediction {
  FaceBox box;                  // the detector's box (the whole image with --no-detect)
  std::vector<ClassScore> top;  // best first, top_k entries
};

struct ImageResult {
  std::filesystem::path path;
  bool ok = false;  // false: could not be read or decoded (see error)
  std::string error;
  int width = 0, height = 0;
  std::vector<FacePrediction> faces;  // empty with ok: no face found
};

class Predictor {
 public:
  // Loads the checkpoint and the cascade. Throws CheckpointError (unreadable checkpoint),
  // ConfigError (missing cascade, bad option values).
  explicit Predictor(const PredictOptions& options);
  ~Predictor();
  Predictor(const Predictor&) = delete;
  Predictor& operator=(const Predictor&) = delete;

  // Processes every image; an unreadable one gets ok=false and a reason, the others go on.
  // Results are in input order.
  std::vector<ImageResult> predict(const std::vector<std::filesystem::path>& images);

  const std::vector<std::string>& classes() const;
  // The test-time augmentation in use: "none", "flip" or "ten_crop".
  const char* tta_name() const;

  // The steps predict() is made of, for callers with frames instead of files (src/predict/video.h):
  // detect, prepare every face, classify the prepared faces in batches.

  // An 8-bit BGR picture (OpenCV's decoders' order) in the checkpoint's channels (gray or RGB).
  cv::Mat from_bgr(const cv::Mat& bgr) const;
  // Face boxes in `image` (the checkpoint's channels), in pixels of `image`, in reading order;
  // the whole image when face detection is off. The defaults scan pictures as fer-predict always
  // did; the video pipeline scans coarser and smaller, as its frame rate depends on it.
  std::vector<FaceBox> detect(const cv::Mat& image, const DetectScan& scan = {});
  // Floats of one prepared face: channels x height x width of the checkpoint.
  std::size_t face_floats() const;
  // The face at `box` of `image` (the checkpoint's channels) as the model takes it: cropped with
  // the margin (border pixels repeated outside the image), resized like fer-pack, normalized with
  // the checkpoint's mean/std; written to out[face_floats()].
  void prepare(const cv::Mat& image, const FaceBox& box, float* out) const;
  // Softmax probabilities of `n` prepared faces (n * face_floats() floats, one after the other):
  // n rows of classes().size() values, row-major, averaged over the views of the test-time
  // augmentation when there is one. n may exceed batch_size (split internally).
  std::vector<float> classify(const float* faces, int n);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Worker threads of the calling thread's LibTorch forward passes and of OpenCV (process-wide),
// each at least 1. LibTorch's OpenMP thread count is a per-thread setting: a thread that runs
// forward passes calls this itself.
void set_compute_threads(int torch_threads, int opencv_threads);

// The k best of `probabilities` (one per label), best first; equal values in label order.
std::vector<ClassScore> top_scores(const float* probabilities,
                                   const std::vector<std::string>& labels, int k);

// Expands IMAGE_OR_DIR arguments: a file is taken as is (even with an odd extension, so a bad
// one is reported), a folder contributes its image files (by extension, recursively, sorted,
// hidden entries skipped). A path that does not exist is kept as a file: predict() reports it
// like any unreadable picture. Throws IoError when a folder cannot be listed.
std::vector<std::filesystem::path> collect_images(const std::vector<std::string>& arguments);

// Writes a copy of `result.path` with every face box and its best label drawn to `out` (PNG,
// atomically). Throws IoError / DataError.
void write_annotated(const ImageResult& result, const std::filesystem::path& out);

}  // namespace fer
