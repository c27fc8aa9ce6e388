// Dataset format v1 shard files: one HDF5 file per shard (see DESIGN.md).
//   /images  uint8 [N,H,W,C], chunked by whole images, optional deflate
//   /labels  uint8 [N]
//   /ids     variable-length strings [N]: the source name of each image
//   root attributes: format, version, split, shard_index, num_shards
// The writer and the reader are the single definition of this layout. HDF5 stays out of this
// header. Not thread-safe: one writer/reader per thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace fer {

inline constexpr int kDefaultChunkImages = 256;  // images per HDF5 chunk

// "<split>-00003-of-00010.h5"
std::string shard_file_name(const std::string& split, int shard_index, int num_shards);

struct ShardLayout {
  std::string split;     // "train" | "val" | "test"
  int shard_index = 0;   // 0-based
  int num_shards = 1;
  int height = 0;
  int width = 0;
  int channels = 0;
};

class ShardWriter {
 public:
  // Creates the file (truncating). compress_level 0 = none, 1..9 = deflate. Throws IoError.
  ShardWriter(const std::filesystem::path& path, const ShardLayout& layout, int compress_level,
              int chunk_images = kDefaultChunkImages);
  ~ShardWriter();  // closes without throwing; call close() to see errors
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends one HWC image (height*width*channels bytes). Buffered: written a chunk at a time.
  void append(const std::uint8_t* image, std::uint8_t label, const std::string& id);
  std::int64_t count() const { return count_; }
  // Writes what is buffered, sets the final sizes and closes the file. Throws IoError.
  void close();

 private:
  struct Impl;
  void flush_buffer();
  std::unique_ptr<Impl> impl_;
  std::filesystem::path path_;
  ShardLayout layout_;
  int chunk_images_;
  std::int64_t count_ = 0;
  std::vector<std::uint8_t> image_buffer_;
  std::vector<std::uint8_t> label_buffer_;
  std::vector<std::string> id_buffer_;
};

// What a reader expects of a shard; usually filled from the manifest.
struct ShardExpectation {
  ShardLayout layout;
  std::int64_t count = -1;  // -1 = do not check
  int num_classes = 256;    // labels must be < num_classes
};

class ShardReader {
 public:
  // Opens and validates format, version, attributes and shapes against `expect`. Throws DataError
  // naming the file and the mismatch (IoError when the file cannot be opened at all).
  ShardReader(const std::filesystem::path& path, const ShardExpectation& expect);
  // The same for a shard held in memory (an HDF5 file image of `size` bytes, copied); `name`
  // stands for the file in errors. For tests and fuzzing. Throws DataError.
  ShardReader(const std::string& name, const void* image, std::size_t size,
              const ShardExpectation& expect);
  ~ShardReader();
  ShardReader(ShardReader&&) noexcept;
  ShardReader& operator=(ShardReader&&) noexcept;

  std::int64_t count() const { return count_; }
  const std::filesystem::path& path() const { return path_; }
  // Images per HDF5 chunk: read ranges aligned to it for speed.
  std::int64_t chunk_images() const { return chunk_images_; }

  // Reads images [start, start+n) into out (n*H*W*C bytes).
  void read_images(std::int64_t start, std::int64_t n, std::uint8_t* out) const;
  // Reads labels [start, start+n); DataError when one is >= num_classes.
  void read_labels(std::int64_t start, std::int64_t n, std::uint8_t* out) const;
  std::vector<std::string> read_ids(std::int64_t start, std::int64_t n) const;

 private:
  struct Impl;
  // Checks attributes and shapes of the open file against `expect` (limits first).
  void validate(const ShardExpectation& expect);
  std::unique_ptr<Impl> impl_;
  std::filesystem::path path_;
  std::int64_t count_ = 0;
  std::int64_t chunk_images_ = 0;
  int num_classes_ = 256;
};

}  // namespace fer
