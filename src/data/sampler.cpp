#include "data/sampler.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "common/errors.h"
#include "common/random.h"

namespace fer {

DistributedSampler::DistributedSampler(std::int64_t num_samples, int world_size, int rank,
                                       int batch_per_rank, std::uint64_t seed)
    : num_samples_(num_samples),
      world_size_(world_size),
      rank_(rank),
      batch_per_rank_(batch_per_rank),
      seed_(seed),
      steps_per_epoch_(0) {
  FER_CHECK(world_size >= 1, ConfigError, "world size must be >= 1, got ", world_size);
  FER_CHECK(rank >= 0 && rank < world_size, ConfigError, "rank ", rank,
            " is outside [0, world size ", world_size, ")");
  FER_CHECK(batch_per_rank >= 1, ConfigError, "batch per rank must be >= 1, got ", batch_per_rank);
  FER_CHECK(num_samples >= 0, ConfigError, "sample count must be >= 0, got ", num_samples);
  const std::int64_t global_batch = std::int64_t{world_size} * batch_per_rank;
  if (num_samples < global_batch) {
    throw ConfigError(
        detail::concat("the global batch (world size ", world_size, " x batch ", batch_per_rank,
                       " = ", global_batch, " images per step) is larger than the training split (",
                       num_samples, " images): an epoch would have no step"),
        "lower the per-rank batch size or the number of ranks");
  }
  steps_per_epoch_ = num_samples / global_batch;
}

std::vector<std::int64_t> DistributedSampler::epoch_permutation(std::int64_t epoch) const {
  FER_CHECK(epoch >= 0, ConfigError, "epoch must be >= 0, got ", epoch);
  std::vector<std::int64_t> permutation(static_cast<std::size_t>(num_samples_));
  std::iota(permutation.begin(), permutation.end(), std::int64_t{0});
  std::mt19937_64 rng(derive_seed({seed_, kSamplerSeedTag, static_cast<std::uint64_t>(epoch)}));
  shuffle_in_place(permutation, rng);
  return permutation;
}

std::vector<std::int64_t> DistributedSampler::batch_indices(std::int64_t epoch,
                                                            std::int64_t step) const {
  FER_CHECK(step >= 0 && step < steps_per_epoch_, ConfigError, "step ", step,
            " is outside the epoch's [0, ", steps_per_epoch_, ")");
  std::shared_ptr<const std::vector<std::int64_t>> permutation;
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cached_epoch_ != epoch || !cached_) {
      // Computed under the lock so concurrent callers of a new epoch shuffle only once.
      cached_ = std::make_shared<const std::vector<std::int64_t>>(epoch_permutation(epoch));
      cached_epoch_ = epoch;
    }
    permutation = cached_;
  }
  const std::int64_t begin =
      step * world_size_ * std::int64_t{batch_per_rank_} + std::int64_t{rank_} * batch_per_rank_;
  return std::vector<std::int64_t>(permutation->begin() + begin,
                                   permutation->begin() + begin + batch_per_rank_);
}

EvalRange eval_range(std::int64_t n, int world_size, int rank) {
  FER_CHECK(world_size >= 1, ConfigError, "world size must be >= 1, got ", world_size);
  FER_CHECK(rank >= 0 && rank < world_size, ConfigError, "rank ", rank,
            " is outside [0, world size ", world_size, ")");
  FER_CHECK(n >= 0, ConfigError, "sample count must be >= 0, got ", n);
  const std::int64_t base = n / world_size;
  const std::int64_t extra = n % world_size;  // the first `extra` ranks take one more
  EvalRange range;
  range.begin = rank * base + std::min<std::int64_t>(rank, extra);
  range.end = range.begin + base + (rank < extra ? 1 : 0);
  return range;
}

}  // namespace fer
