// Image decoding and resizing shared by fer-pack and fer-predict: one definition, so that
// fer-predict prepares a face crop exactly like fer-pack prepared the training images.
// OpenCV only; no torch, no MPI, no HDF5. Every function is thread-safe and never throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

namespace fer {

// True for jpg/jpeg/png/bmp/webp/tif/tiff/pgm/ppm in any letter case.
bool has_image_extension(const std::filesystem::path& path);

// Decodes an image file to size x size with `channels` (1: grayscale, 3: RGB), uint8, HWC
// row-major into out[size*size*channels]. Alpha is dropped, 16-bit scaled to 8-bit, CMYK
// converted; shrinking uses area interpolation. Returns false with a reason (empty, truncated,
// not an image, unreadable, not a regular file) instead of throwing; a FIFO is never waited on.
bool decode_image_file(const std::filesystem::path& path, int size, int channels, std::uint8_t* out,
                       std::string* reason);

// The same for bytes already in memory.
bool decode_image_bytes(const std::vector<std::uint8_t>& bytes, int size, int channels,
                        std::uint8_t* out, std::string* reason);

// The two steps of decode_image_bytes:
// Decodes `bytes` (any depth and channel count) and converts to 8-bit with `channels` (1: gray
// with ITU-R 601 weights, 3: RGB; alpha dropped). Empty Mat and a reason on failure.
cv::Mat decode_to_channels(const std::uint8_t* bytes, std::size_t size, int channels,
                           std::string* reason);
// Resizes to width x height as fer-pack does: area interpolation when shrinking in both
// dimensions, bilinear otherwise; the image itself (not a copy) when the size already fits.
cv::Mat resize_like_pack(const cv::Mat& image, int width, int height);

}  // namespace fer
