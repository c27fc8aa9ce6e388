#include "real_images.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace fer::testing {
namespace {

namespace fs = std::filesystem;

constexpr std::uint32_t kImagesMagic = 0x00000803;  // IDX: unsigned byte, 3 dimensions
constexpr std::uint32_t kLabelsMagic = 0x00000801;  // IDX: unsigned byte, 1 dimension
constexpr char kPackageHint[] =
    " (Debian package dataset-fashion-mnist; launch/install-deps.sh installs it)";

// A gzip file read whole or in part; closes itself.
class GzFile {
 public:
  explicit GzFile(const std::string& path) : path_(path), file_(gzopen(path.c_str(), "rb")) {
    if (file_ == nullptr) throw std::runtime_error("cannot open " + path + kPackageHint);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;
  ~GzFile() { gzclose(file_); }

  void read(void* out, std::size_t bytes) {
    auto* p = static_cast<char*>(out);
    while (bytes > 0) {
      const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(bytes, 1u << 30));
      const int got = gzread(file_, p, chunk);
      if (got <= 0) throw std::runtime_error("truncated or corrupt gzip file " + path_);
      p += got;
      bytes -= static_cast<std::size_t>(got);
    }
  }
  std::uint32_t read_be32() {
    unsigned char b[4];
    read(b, 4);
    return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) |
           std::uint32_t{b[3]};
  }
  // Skips `bytes` bytes (gzip streams can only be read forward).
  void skip(std::size_t bytes) {
    std::vector<char> sink(1 << 16);
    while (bytes > 0) {
      const std::size_t n = std::min(bytes, sink.size());
      read(sink.data(), n);
      bytes -= n;
    }
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  gzFile file_;
};

std::string file_prefix(const std::string& split) {
  if (split == "train") return "train";
  if (split == "test") return "t10k";
  throw std::invalid_argument("load_fashion_mnist: split must be \"train\" or \"test\", got \"" +
                              split + "\"");
}

void check_range(const std::string& path, int64_t available, int64_t first, int64_t count) {
  if (first < 0 || count < 0 || first + count > available) {
    throw std::runtime_error(path + " holds " + std::to_string(available) + " items; asked for [" +
                             std::to_string(first) + ", " + std::to_string(first + count) + ")");
  }
}

}  // namespace

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> kClasses = {
      "t-shirt_top", "trouser", "pullover", "dress", "coat",
      "sandal",      "shirt",   "sneaker",  "bag",   "ankle_boot"};
  return kClasses;
}

bool fashion_mnist_available(const std::string& dir) {
  for (const char* name : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                           "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}) {
    if (!fs::is_regular_file(fs::path(dir) / name)) return false;
  }
  return true;
}

RealImageSet load_fashion_mnist(const std::string& split, int64_t first, int64_t count,
                                const std::string& dir) {
  const std::string prefix = (fs::path(dir) / file_prefix(split)).string();
  RealImageSet set;

  GzFile images(prefix + "-images-idx3-ubyte.gz");
  if (images.read_be32() != kImagesMagic) {
    throw std::runtime_error(images.path() + ": not an IDX image file" + kPackageHint);
  }
  const int64_t n_images = images.read_be32();
  set.height = images.read_be32();
  set.width = images.read_be32();
  check_range(images.path(), n_images, first, count);
  const auto image_bytes = static_cast<std::size_t>(set.height * set.width);
  images.skip(static_cast<std::size_t>(first) * image_bytes);
  set.count = count;
  set.pixels.resize(static_cast<std::size_t>(count) * image_bytes);
  images.read(set.pixels.data(), set.pixels.size());

  GzFile labels(prefix + "-labels-idx1-ubyte.gz");
  if (labels.read_be32() != kLabelsMagic) {
    throw std::runtime_error(labels.path() + ": not an IDX label file" + kPackageHint);
  }
  const int64_t n_labels = labels.read_be32();
  if (n_labels != n_images) {
    throw std::runtime_error(labels.path() + ": " + std::to_string(n_labels) + " labels for " +
                             std::to_string(n_images) + " images");
  }
  labels.skip(static_cast<std::size_t>(first));
  set.labels.resize(static_cast<std::size_t>(count));
  labels.read(set.labels.data(), set.labels.size());
  const auto classes = static_cast<std::uint8_t>(fashion_mnist_classes().size());
  for (const auto label : set.labels) {
    if (label >= classes) throw std::runtime_error(labels.path() + ": label out of range");
  }
  return set;
}

RealImageSet upscale(const RealImageSet& images, int64_t size) {
  RealImageSet out;
  out.count = images.count;
  out.height = size;
  out.width = size;
  out.labels = images.labels;
  out.pixels.resize(static_cast<std::size_t>(images.count * size * size));
  // Source coordinate of output pixel i: (i + 0.5) * in / out - 0.5, clamped to the image.
  auto taps = [size](int64_t in, int64_t i, int64_t* lo, int64_t* hi, double* frac) {
    const double s = std::max(0.0, (static_cast<double>(i) + 0.5) * in / size - 0.5);
    *lo = std::min(static_cast<int64_t>(s), in - 1);
    *hi = std::min(*lo + 1, in - 1);
    *frac = s - static_cast<double>(*lo);
  };
  for (int64_t n = 0; n < images.count; ++n) {
    const std::uint8_t* src = images.pixels.data() + n * images.height * images.width;
    std::uint8_t* dst = out.pixels.data() + n * size * size;
    for (int64_t y = 0; y < size; ++y) {
      int64_t y0, y1;
      double fy;
      taps(images.height, y, &y0, &y1, &fy);
      for (int64_t x = 0; x < size; ++x) {
        int64_t x0, x1;
        double fx;
        taps(images.width, x, &x0, &x1, &fx);
        auto at = [&](int64_t r, int64_t c) {
          return static_cast<double>(src[r * images.width + c]);
        };
        const double top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx;
        const double bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx;
        const double v = top * (1 - fy) + bottom * fy;
        dst[y * size + x] = static_cast<std::uint8_t>(std::clamp(std::lround(v), 0L, 255L));
      }
    }
  }
  return out;
}

std::pair<double, double> pixel_mean_std(const RealImageSet& images) {
  if (images.pixels.empty()) return {0.0, 1.0};
  double sum = 0;
  for (const auto p : images.pixels) sum += p / 255.0;
  const double mean = sum / static_cast<double>(images.pixels.size());
  double m2 = 0;
  for (const auto p : images.pixels) m2 += (p / 255.0 - mean) * (p / 255.0 - mean);
  return {mean, std::sqrt(m2 / static_cast<double>(images.pixels.size()))};
}

std::vector<float> normalized(const RealImageSet& images, double mean, double std) {
  std::vector<float> out(images.pixels.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<float>((images.pixels[i] / 255.0 - mean) / std);
  }
  return out;
}

std::vector<int64_t> labels_int64(const RealImageSet& images) {
  return std::vector<int64_t>(images.labels.begin(), images.labels.end());
}

void write_image_folder(const std::string& root,
                        const std::vector<std::pair<std::string, RealImageSet>>& splits) {
  const auto& classes = fashion_mnist_classes();
  for (const auto& [split, images] : splits) {
    for (const auto& name : classes) fs::create_directories(fs::path(root) / split / name);
    const auto image_bytes = static_cast<std::size_t>(images.height * images.width);
    for (int64_t n = 0; n < images.count; ++n) {
      char file[32];
      std::snprintf(file, sizeof file, "%06lld.pgm", static_cast<long long>(n));
      const fs::path path = fs::path(root) / split / classes.at(images.labels[n]) / file;
      std::ofstream out(path, std::ios::binary);
      out << "P5\n" << images.width << ' ' << images.height << "\n255\n";
      out.write(reinterpret_cast<const char*>(images.pixels.data() + n * image_bytes),
                static_cast<std::streamsize>(image_bytes));
      if (!out) throw std::runtime_error("cannot write " + path.string());
    }
  }
}

}  // namespace fer::testing
