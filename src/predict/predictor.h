// fer-predict's work: find faces in pictures (OpenCV's frontal-face Haar cascade), crop each with a
// margin, preprocess it exactly like fer-pack + the trainer prepared training images (channels,
// resize, normalization from the checkpoint), classify all faces in batches and return the top-k
// emotions per face. The checkpoint alone describes the model (classes, normalization, image
// shape, model options).
//
// Threading: a Predictor is used from one thread at a time (the model and the cascade are not
// shared-safe); LibTorch parallelizes each batch internally.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

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
};

struct FaceBox {
  int x = 0, y = 0, width = 0, height = 0;  // pixels of the original image
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

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Expands IMAGE_OR_DIR arguments: a file is taken as is (even with an odd extension, so a bad
// one is reported), a folder contributes its image files (by extension, recursively, sorted,
// hidden entries skipped). A path that does not exist is kept as a file: predict() reports it
// like any unreadable picture. Throws IoError when a folder cannot be listed.
std::vector<std::filesystem::path> collect_images(const std::vector<std::string>& arguments);

// Writes a copy of `result.path` with every face box and its best label drawn to `out` (PNG,
// atomically). Throws IoError / DataError.
void write_annotated(const ImageResult& result, const std::filesystem::path& out);

}  // namespace fer
