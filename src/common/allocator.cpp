#include "common/allocator.h"

#include <malloc.h>

#include <cstdlib>

namespace fer {

std::string keep_freed_memory_for_reuse() {
  for (const char* name : {"GLIBC_TUNABLES", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_",
                           "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"}) {
    if (std::getenv(name) != nullptr) {
      return std::string("malloc left as configured by ") + name;
    }
  }
#if defined(__GLIBC__)
  // 32 MiB: the largest fixed mmap threshold glibc takes (HEAP_MAX_SIZE / 2 on 64-bit).
  const bool ok =
      mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
  return ok ? "malloc keeps freed memory for reuse (no trim; mmap only above 32 MiB)"
            : "malloc tuning refused by the C library";
#else
  return "malloc tuning skipped (not glibc)";
#endif
}

}  // namespace fer
