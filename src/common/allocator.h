// Allocator tuning for long-running training processes.
#pragma once

#include <string>

namespace fer {

// Makes glibc malloc keep freed memory for reuse instead of returning it to the kernel: no
// trimming of the heap top, and mmap only for blocks over 32 MiB (fixed; glibc's own threshold
// starts at 128 KiB and adapts). A training step frees and re-allocates the same activation
// tensors (tens of MiB) every step; by default glibc serves many of them with fresh mappings or
// trims them away, so every step pays page faults and the kernel zeroing those pages (~20% of a
// CPU training step at width 0.25). Blocks over 32 MiB stay mmapped: served from the heap too (no
// mmap at all, the earlier setting) they fragment it, and the step's peak RSS was 1.31x the
// PyTorch reference's instead of 1.04-1.10x, at the same speed (width 1, batch 64; this setting
// is 10% faster at width 0.25). Skipped when the user tunes malloc through the environment
// (MALLOC_*_ or GLIBC_TUNABLES). Returns what was done, for the log.
std::string keep_freed_memory_for_reuse();

}  // namespace fer
