// SyncBatchNorm2d (DESIGN.md "Distributed contracts" -> SyncBatchNorm): BatchNorm2d whose training
// statistics are those of the global batch, the concatenation of every rank's local batch.
//
// Contract:
// - Training mode: one all-reduce per forward (per-channel sum, sum of squares and count, packed
//   as [2C+1] float64) and one per backward (per-channel sum(dy) and sum(dy * (x - mean)), packed
//   as [2C] float64). Both are issued unconditionally, so every rank must run the same layers in
//   the same order, all in training mode (collective order, as for the communicator). The forward
//   reads the global count on the host (one device sync per layer on CUDA, as PyTorch's does) and
//   throws on every rank alike when it is <= 1.
// - Unequal per-rank batch sizes (even an empty one) are right: the statistics are count-weighted.
// - Gradients: grad_input is the gradient of the SUM of every rank's loss with respect to this
//   rank's slice of the input; grad_weight / grad_bias are this rank's share only (as in PyTorch):
//   the gradient all-reduce (GradSync) sums/averages them like any other parameter's.
// - Running statistics: updated with the global mean and the unbiased variance of the global
//   count (momentum 0.1 by default), from the same all-reduced numbers, hence identically on every
//   rank provided the all-reduce returns the same values everywhere.
// - Eval mode: plain batch_norm with the running statistics, no communication.
// - Parameters and buffers are those of torch::nn::BatchNorm2d (weight, bias, running_mean,
//   running_var, num_batches_tracked): checkpoints are interchangeable. With an empty AllReduceSum
//   (a world of 1) the module equals torch::nn::BatchNorm2d.
//
// Precision: the local statistics are computed with ATen's var_mean (Welford, stable) in the input
// dtype (float32 for float16/bfloat16), then turned into sum and sum of squares in float64. The
// global variance E[x^2] - mean^2 is formed in float64, so the cancellation that makes it unusable
// in float32 (relative error ~1e-7 * mean^2 / var) is ~1e-16 * mean^2 / var instead. The packets
// are a few KB, so float64 costs nothing measurable on the wire. The elementwise step is
// y = x * (w * invstd) + (b - mean * w * invstd) in the input dtype, as aten's CPU kernel does
// (same rounding as BatchNorm2d; in float32 it loses ~1e-7 * |mean| / std absolute).
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
