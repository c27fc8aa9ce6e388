// torchvision-style ImageFolder discovery and image decoding for fer-pack.
//
// Layouts: (a) split folders train/ val/ (or validation/, valid/) test/ each holding class
// folders (val may be missing: fer-pack carves it from train); (b) class folders directly.
// Classes are the sorted class-folder names; images in sub-folders of a class folder belong to
// that class. Hidden entries (leading '.') and files without an image extension are ignored.
// Symlinks are followed, each real directory is visited once (no loops).
#pragma once

#include <opencv2/core.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace fer::tools {

struct ImageFile {
  std::filesystem::path path;  // full path to read
  std::string id;              // "<class>/<relative path>" inside the split (raw bytes)
  int label = 0;               // index into classes
};

struct ImageFolderScan {
  bool has_splits = false;                 // layout (a)
  std::vector<std::string> classes;        // sorted names
  // Layout (a): "train", "val", "test" (present ones); layout (b): "all". Each sorted by id.
  std::map<std::string, std::vector<ImageFile>> splits;
  std::int64_t ignored_files = 0;          // non-image, hidden, or not regular files
};

// True for jpg/jpeg/png/bmp/webp/tif/tiff/pgm/ppm in any letter case.
bool has_image_extension(const std::filesystem::path& path);

// Scans SRC. Throws DataError when SRC is missing or not a folder, has no class folders, has
// split folders whose class sets differ (the message lists the difference), or has no images.
ImageFolderScan scan_image_folder(const std::filesystem::path& src);

// Decodes an image file to size x size with `channels` (1: grayscale, 3: RGB), uint8, HWC
// row-major into out[size*size*channels]. Alpha is dropped, 16-bit scaled to 8-bit, CMYK
// converted; shrinking uses area interpolation. Returns false with a reason (empty, truncated,
// not an image, unreadable) instead of throwing. Thread-safe.
bool decode_image_file(const std::filesystem::path& path, int size, int channels,
                       std::uint8_t* out, std::string* reason);

// The same for bytes already in memory (used by decode_image_file and tests).
bool decode_image_bytes(const std::vector<std::uint8_t>& bytes, int size, int channels,
                        std::uint8_t* out, std::string* reason);

// The steps of decode_image_bytes, exposed so that fer-predict prepares a face crop exactly like
// fer-pack prepared the training images:
// Decodes `bytes` (any depth and channel count) and converts to 8-bit with `channels` (1: gray
// with ITU-R 601 weights, 3: RGB; alpha dropped). Empty Mat and a reason on failure; no throw.
cv::Mat decode_to_channels(const std::uint8_t* bytes, std::size_t size, int channels,
                           std::string* reason);
// Resizes to width x height as fer-pack does: area interpolation when shrinking in both
// dimensions, bilinear otherwise; the image itself when the size already fits.
cv::Mat resize_like_pack(const cv::Mat& image, int width, int height);

}  // namespace fer::tools
