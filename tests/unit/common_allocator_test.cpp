#include <gtest/gtest.h>
#include <sys/resource.h>

#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/allocator.h"

namespace fer {
namespace {

// Allocates `count` blocks of `bytes` at once, writes every page, frees them; the pointers escape
// so nothing is elided.
void touch_and_free(std::size_t bytes, int count = 1) {
  std::vector<char*> blocks;
  for (int i = 0; i < count; ++i) {
    char* p = static_cast<char*>(std::malloc(bytes));
    ASSERT_NE(p, nullptr);
    std::memset(p, 1, bytes);
    asm volatile("" : : "r"(p) : "memory");
    blocks.push_back(p);
  }
  for (char* p : blocks) std::free(p);
}

long minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

bool skip_reason(std::string* why) {
#if defined(__SANITIZE_ADDRESS__)  // GCC
  *why = "AddressSanitizer replaces malloc";
  return true;
#elif defined(__has_feature)  // clang
#if __has_feature(address_sanitizer)
  *why = "AddressSanitizer replaces malloc";
  return true;
#endif
#endif
  if (std::getenv("GLIBC_TUNABLES") || std::getenv("MALLOC_MMAP_MAX_") ||
      std::getenv("MALLOC_MMAP_THRESHOLD_") || std::getenv("MALLOC_TRIM_THRESHOLD_")) {
    *why = "malloc is tuned through the environment";
    return true;
  }
  return false;
}

// Activation-sized blocks (under 32 MiB), several alive at once as in a training step: glibc's
// default trims the freed heap top (its trim threshold follows the mmap threshold, ~2 blocks) so
// every round faults its pages in again; tuned, the heap is kept and a round faults nothing.
TEST(Allocator, FreedActivationSizedBlocksAreReusedWithoutNewPageFaults) {
  std::string why;
  if (skip_reason(&why)) GTEST_SKIP() << why;
  constexpr std::size_t kBlock = 24u << 20;
  constexpr int kCount = 4;
  const long pages = static_cast<long>(kBlock / 4096) * kCount;
  touch_and_free(kBlock, kCount);  // mmapped; raises glibc's dynamic thresholds
  touch_and_free(kBlock, kCount);  // from the heap, then trimmed
  long before = minor_faults();
  touch_and_free(kBlock, kCount);
  const long default_faults = minor_faults() - before;

  EXPECT_NE(keep_freed_memory_for_reuse().find("keeps freed memory"), std::string::npos);
  touch_and_free(kBlock, kCount);  // grows the heap once
  before = minor_faults();
  touch_and_free(kBlock, kCount);
  const long tuned_faults = minor_faults() - before;
  EXPECT_GT(default_faults, pages / 2) << "the default allocator was expected to trim and fault anew";
  EXPECT_LT(tuned_faults, pages / 20) << "freed memory was not reused";
}

// Blocks over 32 MiB stay mmapped when tuned (kept in the heap they fragmented it: a step's peak
// RSS grew to 1.3x the reference's), smaller ones come from the heap.
TEST(Allocator, OnlyBlocksOver32MiBAreMapped) {
  std::string why;
  if (skip_reason(&why)) GTEST_SKIP() << why;
  EXPECT_NE(keep_freed_memory_for_reuse().find("keeps freed memory"), std::string::npos);
  const auto mapped = [](std::size_t bytes) {
    void* p = std::malloc(bytes);
    asm volatile("" : : "r"(p) : "memory");
    const std::size_t in_mmap = mallinfo2().hblkhd;
    std::free(p);
    return in_mmap;
  };
  const std::size_t baseline = mallinfo2().hblkhd;
  EXPECT_GE(mapped(48u << 20), baseline + (48u << 20));
  EXPECT_EQ(mapped(24u << 20), baseline);
}

}  // namespace
}  // namespace fer
