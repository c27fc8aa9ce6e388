// A real image set for tests that must not run on drawn data: Fashion-MNIST (Zalando's product
// photos, 28x28 grayscale, 10 classes; 60,000 train + 10,000 test images) as shipped by Debian's
// `dataset-fashion-mnist` package (launch/install-deps.sh installs it):
//   /usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
// (IDX format, big-endian header, gzip; about 30 MB for all four files).
//
// Why this set: real photographs with natural pixel statistics (unlike fer-synth's drawn faces),
// one channel like FER2013, 10 classes, no extra runtime dependency (zlib only), and the files
// are in the Debian archive, so CI machines get them with apt.
//
// Two uses:
//   - model-level tests: load_fashion_mnist() + upscale() + normalized() give a float batch
//     [N, 1, S, S] in row-major order for torch::from_blob;
//   - tool-level tests: write_image_folder() writes the ImageFolder layout that
//     `fer-pack imagefolder` packs (train/val/test/<class>/NNNNN.pgm).
// Torch-free on purpose, so torch-free tests can use it too. No shared state: calls are
// independent and may run on any thread.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace fer::testing {

// Where Debian's dataset-fashion-mnist package installs the four files.
inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

// Class names in label order (file names of the ImageFolder classes; no spaces or slashes).
const std::vector<std::string>& fashion_mnist_classes();

// Grayscale images and their labels, row-major.
struct RealImageSet {
  int64_t count = 0;
  int64_t height = 0;
  int64_t width = 0;
  std::vector<std::uint8_t> pixels;  // [count, height, width], 0..255
  std::vector<std::uint8_t> labels;  // [count], 0..classes-1
};

// True when the four files are present under `dir`.
bool fashion_mnist_available(const std::string& dir = kFashionMnistDir);

// Reads images [first, first + count) of split "train" (60,000) or "test" (10,000), in file order
// (the classes are interleaved, so any run of a few hundred images holds every class). Throws
// std::runtime_error naming the file and the package when a file is missing or malformed.
RealImageSet load_fashion_mnist(const std::string& split, int64_t first, int64_t count,
                                const std::string& dir = kFashionMnistDir);

// Bilinear resize to size x size (half-pixel centres, edge clamped, as OpenCV's INTER_LINEAR and
// torch's interpolate(align_corners=false)), rounded to uint8: the tensor path and the
// ImageFolder path see the same pixels.
RealImageSet upscale(const RealImageSet& images, int64_t size);

// Pixel mean and standard deviation of `images` in [0, 1] units (population std), as fer-pack's
// manifest normalization.
std::pair<double, double> pixel_mean_std(const RealImageSet& images);

// (pixel / 255 - mean) / std as float, [count, 1, height, width] row-major.
std::vector<float> normalized(const RealImageSet& images, double mean, double std);

// Labels as int64 (the dtype cross-entropy wants), [count].
std::vector<int64_t> labels_int64(const RealImageSet& images);

// Writes root/<split>/<class>/<index>.pgm (binary PGM, which fer-pack imagefolder reads) for each
// (split name, images) pair, e.g. {{"train", a}, {"val", b}, {"test", c}}. Creates folders;
// throws std::runtime_error when a file cannot be written.
void write_image_folder(const std::string& root,
                        const std::vector<std::pair<std::string, RealImageSet>>& splits);

}  // namespace fer::testing
