#include "image/image_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>
#include <exception>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <system_error>

#include "common/errors.h"

namespace fer {
namespace {

namespace fs = std::filesystem;

// Lower-case extensions (without the dot) that count as images.
constexpr std::array<const char*, 9> kImageExtensions = {"jpg", "jpeg", "png", "bmp", "webp",
                                                         "tif", "tiff", "pgm", "ppm"};

// cv::IMREAD_UNCHANGED keeps 16-bit depth and the alpha channel, which we then reduce ourselves
// with documented rules. (It is -1, so OR-ing IMREAD_ANYDEPTH|IMREAD_ANYCOLOR into it changes
// nothing; they are written out to state the intent.) It also ignores EXIF orientation: that is
// acceptable and matches torchvision's PIL loader, which does not apply exif_transpose either.
constexpr int kDecodeFlags = cv::IMREAD_UNCHANGED | cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR;

// strerror text for errno value `err`; thread-safe (unlike strerror()).
std::string errno_text(int err) { return std::generic_category().message(err); }

// Converts any OpenCV depth to CV_8U: 16-bit is scaled by 1/257 (65535 -> 255, rounded), float is
// taken to be in [0,1]; other depths are saturated as they are.
cv::Mat to_8bit(const cv::Mat& image) {
  cv::Mat out;
  switch (image.depth()) {
    case CV_8U:
      return image;
    case CV_16U:
      image.convertTo(out, CV_8U, 1.0 / 257.0);
      return out;
    case CV_32F:
    case CV_64F:
      image.convertTo(out, CV_8U, 255.0);
      return out;
    default:
      image.convertTo(out, CV_8U);
      return out;
  }
}

// Reduces an 8-bit image with 1..4 channels (gray, gray+alpha, BGR, BGRA) to `channels`
// (1: gray with the ITU-R 601 weights PIL's "L" uses, 3: RGB). Alpha is dropped, not composited,
// as PIL's convert("RGB") does. Returns an empty Mat for other channel counts.
cv::Mat to_channels(const cv::Mat& image, int channels) {
  cv::Mat out;
  switch (image.channels()) {
    case 1:
      if (channels == 1) return image;
      cv::cvtColor(image, out, cv::COLOR_GRAY2RGB);
      return out;
    case 2: {
      cv::Mat gray;
      cv::extractChannel(image, gray, 0);
      return to_channels(gray, channels);
    }
    case 3:
      cv::cvtColor(image, out, channels == 1 ? cv::COLOR_BGR2GRAY : cv::COLOR_BGR2RGB);
      return out;
    case 4:
      cv::cvtColor(image, out, channels == 1 ? cv::COLOR_BGRA2GRAY : cv::COLOR_BGRA2RGB);
      return out;
    default:
      return out;
  }
}

}  // namespace

bool has_image_extension(const fs::path& path) {
  std::string ext = path.extension().native();
  if (ext.size() < 2) return false;
  ext.erase(0, 1);  // the dot
  for (char& c : ext) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return std::find_if(kImageExtensions.begin(), kImageExtensions.end(),
                      [&](const char* known) { return ext == known; }) != kImageExtensions.end();
}

bool decode_image_bytes(const std::vector<std::uint8_t>& bytes, int size, int channels,
                        std::uint8_t* out, std::string* reason) {
  std::string unused;
  if (reason == nullptr) reason = &unused;
  if (size <= 0 || (channels != 1 && channels != 3) || out == nullptr) {
    *reason = detail::concat("invalid decode arguments: size ", size, ", channels ", channels);
    return false;
  }
  if (bytes.empty()) {
    *reason = "empty file";
    return false;
  }
  if (bytes.size() > static_cast<std::size_t>(INT_MAX)) {
    *reason = "file too large to decode";
    return false;
  }
  const cv::Mat image = decode_to_channels(bytes.data(), bytes.size(), channels, reason);
  if (image.empty()) return false;
  try {
    const cv::Mat sized = resize_like_pack(image, size, size);
    const std::size_t row_bytes = static_cast<std::size_t>(size) * channels;
    for (int y = 0; y < size; ++y) {
      std::memcpy(out + y * row_bytes, sized.ptr<std::uint8_t>(y), row_bytes);
    }
    return true;
  } catch (const cv::Exception& e) {
    *reason = e.what();
    return false;
  } catch (const std::exception& e) {
    *reason = detail::concat("decode failed: ", e.what());
    return false;
  }
}

cv::Mat decode_to_channels(const std::uint8_t* bytes, std::size_t size, int channels,
                           std::string* reason) {
  std::string unused;
  if (reason == nullptr) reason = &unused;
  if (size == 0) {
    *reason = "empty file";
    return {};
  }
  if (size > static_cast<std::size_t>(INT_MAX)) {
    *reason = "file too large to decode";
    return {};
  }
  try {
    // imdecode only reads the buffer; the const_cast is what wrapping it without a copy needs.
    const cv::Mat raw(1, static_cast<int>(size), CV_8UC1, const_cast<std::uint8_t*>(bytes));
    const cv::Mat decoded = cv::imdecode(raw, kDecodeFlags);
    if (decoded.empty()) {
      *reason = "not a decodable image (truncated or not an image)";
      return {};
    }
    // CMYK JPEGs already arrive as 3-channel BGR: OpenCV's JPEG decoder converts them.
    cv::Mat image = to_channels(to_8bit(decoded), channels);
    if (image.empty()) *reason = detail::concat("unsupported channel count ", decoded.channels());
    return image;
  } catch (const cv::Exception& e) {
    *reason = e.what();
    return {};
  } catch (const std::exception& e) {
    // bad_alloc for absurd dimensions and the like: still bad data, not a bug.
    *reason = detail::concat("decode failed: ", e.what());
    return {};
  }
}

cv::Mat resize_like_pack(const cv::Mat& image, int width, int height) {
  if (image.cols == width && image.rows == height) return image;
  // Area averaging avoids aliasing when shrinking; it needs no enlargement in either dimension
  // (a 96x48 -> 48x48 resize is a pure shrink along x and uses it too).
  const bool shrink = image.cols >= width && image.rows >= height;
  cv::Mat resized;
  cv::resize(image, resized, cv::Size(width, height), 0, 0,
             shrink ? cv::INTER_AREA : cv::INTER_LINEAR);
  return resized;
}

bool decode_image_file(const fs::path& path, int size, int channels, std::uint8_t* out,
                       std::string* reason) {
  std::string unused;
  if (reason == nullptr) reason = &unused;
  // O_NONBLOCK: opening a FIFO must not wait for a writer; fstat() then rejects it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    *reason = "cannot read: " + errno_text(errno);
    return false;
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    *reason = "cannot read: " + errno_text(errno);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    *reason = "cannot read: " +
              (S_ISDIR(st.st_mode) ? errno_text(EISDIR) : std::string("not a regular file"));
    return false;
  }
  // Sized from fstat() plus one byte so that end-of-file is seen without growing; grown anyway
  // if the file gets longer while it is read.
  std::vector<std::uint8_t> bytes;
  std::size_t used = 0;
  try {
    bytes.resize(static_cast<std::size_t>(std::max<off_t>(st.st_size, 0)) + 1);
    for (;;) {
      if (used == bytes.size()) bytes.resize(bytes.size() * 2);
      const ssize_t n = ::read(fd, bytes.data() + used, bytes.size() - used);
      if (n < 0) {
        if (errno == EINTR) continue;
        *reason = "cannot read: " + errno_text(errno);
        return false;
      }
      if (n == 0) break;
      used += static_cast<std::size_t>(n);
    }
  } catch (const std::exception&) {
    *reason = "cannot read: file too large";
    return false;
  }
  bytes.resize(used);
  return decode_image_bytes(bytes, size, channels, out, reason);
}

}  // namespace fer
