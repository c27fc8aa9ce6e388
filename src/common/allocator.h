// Allocator tuning for long-running training processes.
#pragma once

#include <string>

namespace fer {

// Makes glibc malloc keep freed memory for reuse instead of returning it to the kernel: no mmap
// for large blocks, no trimming of the heap top. A training step frees and re-allocates the same
// activation tensors (tens of MiB) every step; by default glibc serves blocks over its mmap
// threshold (at most 32 MiB) with fresh mappings, so every step pays page faults and the kernel
// zeroing those pages (~12% of a CPU training step measured at width 0.25). Skipped when the user
// tunes malloc through the environment (MALLOC_*_ or GLIBC_TUNABLES). Returns what was done, for
// the log.
std::string keep_freed_memory_for_reuse();

}  // namespace fer
