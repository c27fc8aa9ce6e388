// SyncBatchNorm2d (DESIGN.md "Distributed contracts" -> SyncBatchNorm): BatchNorm2d whose training
// statistics are those of the global batch, the concatenation of every rank's local batch.
//
// Contract:
// - Training mode: one all-reduce per forward (per channel: count, sum, between-rank and
//   within-rank parts of the centred sum of squares, packed as [3C+1] float64) and one per
//   backward (per-channel sum(dy) and sum(dy * (x - mean)) * invstd, packed as [2C] float64). Both
//   are issued unconditionally, so every rank must run the same layers in the same order, all in
//   training mode (collective order, as for the communicator).
// - Host reads: none on the common path (the statistics stay on the input's device). A rank that
//   holds at most one value per channel reads the global count (one device sync) and throws when
//   it is <= 1; if the global count is <= 1 every rank holds at most one value, so all ranks throw
//   alike (no hang). Without momentum (cumulative average) num_batches_tracked is read, as in
//   torch::nn::BatchNorm2d.
// - Unequal per-rank batch sizes (even an empty one) are right: the statistics are combined with
//   the counts (Chan et al.'s parallel variance), the backward sums are plain sums.
// - Gradients: grad_input is the gradient of the SUM of every rank's loss with respect to this
//   rank's slice of the input; grad_weight / grad_bias are this rank's share only (as in PyTorch):
//   the gradient all-reduce (GradSync) sums/averages them like any other parameter's.
// - Running statistics: updated with the global mean and the unbiased variance of the global
//   count (momentum 0.1 by default), from the same all-reduced numbers, hence identically on every
//   rank provided the all-reduce returns the same values everywhere.
// - Eval mode: plain batch_norm with the running statistics, no communication.
// - Parameters and buffers are those of torch::nn::BatchNorm2d (weight, bias, running_mean,
//   running_var, num_batches_tracked): checkpoints are interchangeable.
//
// Precision (the reason for the design): a world of 1 - an empty AllReduceSum or one that leaves
// the packets unchanged - reproduces torch::nn::BatchNorm2d BIT FOR BIT in float32 on CPU (outputs,
// all gradients; running_var to 1 ulp; invstd is formed from aten's variance rounded to float32,
// which can move it by 1 ulp when the per-channel count is not a power of two - not seen in the
// tests). That is the only way to meet "within
// 1e-6 per-step loss for 20 training steps": training amplifies rounding ~10x per step, so any
// other rounding - even a more accurate one - drifts past 1e-6 (measured on real images:
// BatchNorm2d at 1 vs 2 threads is 2e-6 apart at step 13). How:
// - Statistics: local mean and variance from aten's batch norm statistics kernel (the kernel
//   BatchNorm2d uses: float64 sum for the mean, centred two-pass sum of squares), combined in
//   float64: mean = sum(n_r mean_r) / N, M2 = sum(n_r var_r) + (sum(n_r mean_r^2) - N mean^2).
//   For float32 input every n_r * value product is exact in float64 (n_r < 2^29), so a world of 1
//   gets its own mean and variance back exactly; the between-rank term's cancellation costs
//   ~1e-16 * mean^2 / var, nothing in float32 terms.
// - Forward: aten's inference kernel with running_mean = global mean, running_var = 1, eps = 0
//   and weight = invstd * w, so its alpha = invstd * w and beta = b - mean * alpha are exactly
//   those of its training path (CPU: y = x * alpha + beta; CUDA: (x - mean) * alpha + b).
// - Backward: aten's training backward on the local batch given the global mean and invstd
//   (centred: (dy - mean(dy) - (x - mean) * k) * invstd * w, no a * x - c cancellation), plus the
//   per-channel difference between the global and the local projection, (x - mean) * c1 + c0,
//   from the all-reduced sums in float64; c0 and c1 are exactly 0 in a world of 1.
// With several ranks the sums are added in another order than in one process; the per-element
// error stays at float32 rounding (~1e-7 relative; tests/mpi/sync_bn_mpi_test.cpp prints it).
// The packets are a few KB, so float64 costs nothing measurable on the wire.
//
// The AllReduceSum is called from the forward and from inside autograd's backward, interleaved
// with GradSync's bucket all-reduces (issued from hooks on the same thread, in the same order on
// every rank). Build it on the same Communicator (allreduce + wait) so that issue order is the
// order ranks match on; a side channel that bypasses the communicator's queue could reorder.
//
// Threading: one forward/backward at a time per module (the all-reduce is a blocking collective).
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/options/batchnorm.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <functional>
#include <ostream>

namespace fer {

// Sums a CPU/CUDA tensor in place over all ranks (blocking); supplied by the dist layer so the
// model library does not depend on MPI. world_size 1 → may be empty. SyncBatchNorm2d passes
// contiguous float64 tensors on the input's device.
using AllReduceSum = std::function<void(torch::Tensor&)>;

// Drop-in for torch::nn::BatchNorm2d (input [N, C, H, W]); see the file comment. The public members
// mirror BatchNorm2dImpl's so code written for one works with the other.
class SyncBatchNorm2dImpl : public torch::nn::Cloneable<SyncBatchNorm2dImpl> {
 public:
  explicit SyncBatchNorm2dImpl(const torch::nn::BatchNormOptions& options,
                               AllReduceSum allreduce = {});

  torch::Tensor forward(const torch::Tensor& input);

  // Replaces the all-reduce used from the next forward on (empty: no communication).
  void set_allreduce(AllReduceSum allreduce) { allreduce_ = std::move(allreduce); }
  bool has_allreduce() const { return static_cast<bool>(allreduce_); }

  void reset() override;
  void reset_running_stats();
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::nn::BatchNormOptions options;
  torch::Tensor weight;               // [C], undefined when !affine
  torch::Tensor bias;                 // [C], undefined when !affine
  torch::Tensor running_mean;         // [C], undefined when !track_running_stats
  torch::Tensor running_var;          // [C], undefined when !track_running_stats
  torch::Tensor num_batches_tracked;  // scalar int64, undefined when !track_running_stats

 private:
  AllReduceSum allreduce_;
};
TORCH_MODULE(SyncBatchNorm2d);

}  // namespace fer
