// Which sample indices each rank trains on, step by step (DESIGN.md "Sampling and augmentation").
//
// Epoch e permutes all N indices with std::mt19937_64 seeded by
// derive_seed({seed, kSamplerSeedTag, e}) and shuffle_in_place. With world size W and per-rank
// batch B, global batch k is the permutation slice [k*W*B, (k+1)*W*B) and rank r takes its
// contiguous sub-slice [r*B, (r+1)*B). So the global batch at step k is the same for every W with
// the same W*B: W ranks with batch B reproduce one rank with batch W*B. Every rank runs
// floor(N / (W*B)) steps per epoch (the last partial global batch is dropped), so step counts
// agree by construction.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace fer {

// Mixed into the sampler's seed so it never shares a stream with other seeded draws.
inline constexpr std::uint64_t kSamplerSeedTag = 0x53414d504c455231ULL;  // "SAMPLER1"

class DistributedSampler {
 public:
  // Throws ConfigError for world_size < 1, rank outside [0, world_size), batch_per_rank < 1,
  // num_samples < 0, or a global batch (world_size * batch_per_rank) larger than num_samples.
  DistributedSampler(std::int64_t num_samples, int world_size, int rank, int batch_per_rank,
                     std::uint64_t seed);

  std::int64_t num_samples() const { return num_samples_; }
  int world_size() const { return world_size_; }
  int rank() const { return rank_; }
  int batch_per_rank() const { return batch_per_rank_; }
  // floor(num_samples / (world_size * batch_per_rank)), the same on every rank.
  std::int64_t steps_per_epoch() const { return steps_per_epoch_; }

  // The batch_per_rank indices this rank trains on at `step` (0-based, < steps_per_epoch()) of
  // `epoch` (>= 0). Thread-safe: concurrent calls share a cache of the last epoch's permutation,
  // guarded by a mutex; a call for another epoch recomputes it (O(N)).
  std::vector<std::int64_t> batch_indices(std::int64_t epoch, std::int64_t step) const;

  // The whole permutation of epoch `epoch` (what every rank slices). Deterministic in
  // (num_samples, seed, epoch) only.
  std::vector<std::int64_t> epoch_permutation(std::int64_t epoch) const;

 private:
  std::int64_t num_samples_;
  int world_size_;
  int rank_;
  int batch_per_rank_;
  std::uint64_t seed_;
  std::int64_t steps_per_epoch_;

  mutable std::mutex cache_mutex_;
  mutable std::int64_t cached_epoch_ = -1;                           // guarded by cache_mutex_
  mutable std::shared_ptr<const std::vector<std::int64_t>> cached_;  // guarded by cache_mutex_
};

// Half-open range [begin, end) of sample indices.
struct EvalRange {
  std::int64_t begin = 0;
  std::int64_t end = 0;
  std::int64_t size() const { return end - begin; }
};

// The part of an evaluation split of n samples that `rank` of `world_size` evaluates: contiguous,
// disjoint across ranks, together covering [0, n) exactly once (no padding, no duplicates); part
// sizes differ by at most one, the lower ranks taking the extra samples. A rank may get an empty
// range when n < world_size. Throws ConfigError for a bad world_size/rank or n < 0.
EvalRange eval_range(std::int64_t n, int world_size, int rank);

}  // namespace fer
