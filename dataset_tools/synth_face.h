// fer-synth: synthetic grayscale faces whose brows, eyes and mouth follow one of the seven FER2013
// expressions, with random position, scale, rotation, face shape, skin tone, lighting gradient,
// blur and noise. The embedded default dataset: deterministic by seed, hard enough that a
// nearest-class-mean classifier on raw pixels stays below 60%, learnable by a small CNN.
#pragma once

#include <opencv2/core.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace fer::tools {

// The seven classes in sorted folder-name order (the label is the index):
// angry, disgust, fear, happy, neutral, sad, surprise.
const std::vector<std::string>& synth_class_names();

// One face of class `label`, CV_8UC1, size x size. A pure function of (label, seed, index).
cv::Mat draw_synth_face(int label, std::uint64_t seed, std::uint64_t index, int size);

struct SynthOptions {
  int per_class = 200;          // images per class, all splits together
  int size = 48;                // image side in pixels
  std::uint64_t seed = 1;       // everything drawn follows from it
  std::string layout = "split"; // split: train/val/test (80/10/10 per class); flat: class folders
  int threads = 0;              // 0 = all cores
  bool overwrite = false;       // replace an existing OUT
};

// Writes PNGs OUT/[split/]class/NNNNNN.png, built in a temporary folder and renamed into place.
// Throws ConfigError (bad options), IoError.
void write_synth_dataset(const std::filesystem::path& out, const SynthOptions& options);

}  // namespace fer::tools
