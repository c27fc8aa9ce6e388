#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstdlib>
#include <cstring>

#include "common/allocator.h"

namespace fer {
namespace {

// Allocates `bytes`, writes every page, frees it; the pointer escapes so nothing is elided.
void touch_and_free(std::size_t bytes) {
  char* p = static_cast<char*>(std::malloc(bytes));
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, bytes);
  asm volatile("" : : "r"(p) : "memory");
  std::free(p);
}

long minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

TEST(Allocator, FreedLargeBlocksAreReusedWithoutNewPageFaults) {
#if defined(__SANITIZE_ADDRESS__)  // GCC
  GTEST_SKIP() << "AddressSanitizer replaces malloc";
#elif defined(__has_feature)  // clang
#if __has_feature(address_sanitizer)
  GTEST_SKIP() << "AddressSanitizer replaces malloc";
#endif
#endif
  if (std::getenv("GLIBC_TUNABLES") || std::getenv("MALLOC_MMAP_MAX_")) {
    GTEST_SKIP() << "malloc is tuned through the environment";
  }
  constexpr std::size_t kBlock = 48u << 20;  // above glibc's largest mmap threshold (32 MiB)
  const long pages = static_cast<long>(kBlock / 4096);
  // Default glibc: a block this large is a fresh mapping each time, every page faults again.
  touch_and_free(kBlock);
  long before = minor_faults();
  touch_and_free(kBlock);
  const long default_faults = minor_faults() - before;

  EXPECT_NE(keep_freed_memory_for_reuse().find("keeps freed memory"), std::string::npos);
  touch_and_free(kBlock);  // grows the heap once
  before = minor_faults();
  touch_and_free(kBlock);
  const long tuned_faults = minor_faults() - before;
  EXPECT_GT(default_faults, pages / 2) << "the default allocator was expected to map anew";
  EXPECT_LT(tuned_faults, pages / 20) << "freed memory was not reused";
}

}  // namespace
}  // namespace fer
