// Reader for Kaggle's fer2013.csv (columns emotion, pixels, Usage; any order; extra columns
// ignored; Usage optional).
//
// Two passes so that packing stays streaming: the constructor scans the file once, validating every
// row and keeping only a small index (byte offset, line, label, usage); read_pixels() later
// re-reads one row by offset. Malformed rows are skipped with a warning naming their line number
// (or throw DataError with `strict`).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace fer::tools {

// FER2013 label order (the value in the `emotion` column is the index).
const std::vector<std::string>& fer2013_class_names();

enum class CsvUsage : std::int8_t { kNone = -1, kTrain = 0, kVal = 1, kTest = 2 };

struct CsvRowRef {
  std::int64_t line = 0;     // 1-based line number where the record starts
  std::uint64_t offset = 0;  // byte offset of the record in the file
  std::uint32_t length = 0;  // bytes of the record, without the line terminator
  std::uint8_t label = 0;    // emotion value, < num_classes
  CsvUsage usage = CsvUsage::kNone;  // kNone when the file has no Usage column
};

struct CsvOptions {
  int pixels = 48 * 48;  // pixels per row (the image is square: sqrt(pixels) per side)
  int num_classes = 7;   // labels must be in [0, num_classes)
  bool strict = false;   // first malformed row -> DataError instead of a skipped row
};

class Fer2013Csv {
 public:
  // Opens and indexes the file. Throws IoError (cannot open/read) or DataError (no header with
  // `emotion` and `pixels` columns; a malformed row in strict mode).
  Fer2013Csv(const std::filesystem::path& path, const CsvOptions& options);
  ~Fer2013Csv();
  Fer2013Csv(const Fer2013Csv&) = delete;
  Fer2013Csv& operator=(const Fer2013Csv&) = delete;

  bool has_usage() const { return has_usage_; }
  // Valid rows in file order.
  const std::vector<CsvRowRef>& rows() const { return rows_; }
  // Malformed rows skipped during indexing.
  std::int64_t skipped() const { return skipped_; }
  const std::filesystem::path& path() const { return path_; }

  // Reads the pixels of a row from rows() into out[0, options.pixels). Thread-safe (pread).
  // Throws DataError if the file changed since indexing.
  void read_pixels(const CsvRowRef& row, std::uint8_t* out) const;

 private:
  std::filesystem::path path_;
  CsvOptions options_;
  int fd_ = -1;
  bool has_usage_ = false;
  int pixels_column_ = -1;  // column index of `pixels`
  std::vector<CsvRowRef> rows_;
  std::int64_t skipped_ = 0;
};

}  // namespace fer::tools
