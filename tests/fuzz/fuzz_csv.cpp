// libFuzzer target: Kaggle fer2013.csv indexing (dataset_tools/fer2013_csv.*) and the second pass
// that re-reads each indexed row. The input is served as a file through memfd (no disk I/O).
// Input: the CSV bytes. Options vary with the first byte so small images and strict mode are
// reached too. fer::Error is the documented way to refuse input; anything else escaping is a bug.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/errors.h"
#include "fer2013_csv.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const int fd = ::memfd_create("fer2013.csv", 0);
  if (fd < 0) return 0;
  std::size_t written = 0;
  while (written < size) {
    const ssize_t n = ::write(fd, data + written, size - written);
    if (n <= 0) break;
    written += static_cast<std::size_t>(n);
  }
  fer::tools::CsvOptions options;
  const std::uint8_t knob = size > 0 ? data[0] : 0;
  options.pixels = (knob & 1) ? 4 : 48 * 48;  // 2x2 images make valid rows easy to reach
  options.num_classes = (knob & 2) ? 2 : 7;
  options.strict = (knob & 4) != 0;
  try {
    fer::tools::Fer2013Csv csv("/proc/self/fd/" + std::to_string(fd), options);
    std::vector<std::uint8_t> pixels(static_cast<std::size_t>(options.pixels));
    for (const auto& row : csv.rows()) {
      if (row.label >= options.num_classes) __builtin_trap();  // the index promises this
      csv.read_pixels(row, pixels.data());
    }
  } catch (const fer::Error&) {
  }
  ::close(fd);
  return 0;
}
