// libFuzzer target: ShardReader (src/data/shard.*) on an in-memory HDF5 file image (core driver,
// nothing on disk): open + validate against an 8x8x1 expectation, then read every image, label
// and id in chunk-sized blocks. Errors must be fer::DataError/IoError; labels must come back in
// range. Note: libhdf5 itself is not instrumented; a crash inside it is an HDF5 bug to report
// upstream (and to guard against here if it is reachable from a plausible file).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/errors.h"
#include "data/shard.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fer::ShardExpectation expect;
  expect.layout = fer::ShardLayout{"train", 0, 1, 8, 8, 1};
  expect.count = -1;
  expect.num_classes = 7;
  try {
    fer::ShardReader reader("fuzz.h5", data, size, expect);
    const std::int64_t block = std::max<std::int64_t>(1, std::min<std::int64_t>(reader.chunk_images(), 64));
    std::vector<std::uint8_t> images(static_cast<std::size_t>(block) * 64), labels(block);
    // Bounded work per input: a valid header may claim many (unwritten) images.
    const std::int64_t limit = std::min<std::int64_t>(reader.count(), 1024);
    for (std::int64_t start = 0; start < limit; start += block) {
      const std::int64_t n = std::min(block, limit - start);
      reader.read_images(start, n, images.data());
      reader.read_labels(start, n, labels.data());
      for (std::int64_t i = 0; i < n; ++i) {
        if (labels[i] >= expect.num_classes) __builtin_trap();
      }
      reader.read_ids(start, n);
    }
  } catch (const fer::Error&) {
  }
  return 0;
}
