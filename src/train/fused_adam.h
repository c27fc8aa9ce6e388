// FusedAdam: Adam (L2 weight decay, as torch.optim.Adam) and AdamW over flat buffers, bit-identical
// to LibTorch 1.13's torch::optim::Adam / AdamW step for step (DESIGN.md "Order of a step": clip,
// then step).
//
// Why: LibTorch's optimizers launch ~10 kernels per parameter (ResNet9: 34 parameters), and
// clip_grad_value_ one more per parameter. Here every parameter, its gradient and its two moments
// are views into one flat buffer per (dtype, device), so a step is 9 tensor ops per buffer whatever
// the parameter count, and clipping by value is one. The ops are plain ATen ops (add_out, mul_,
// addcmul_, sqrt_out, div_, add_, addcdiv_), so the same code runs on CUDA tensors. (On the CPU
// the step walks each buffer in cache-sized slices: see kCpuSliceBytes.)
//
// Bit-identity: the update is LibTorch's own sequence of elementwise ops with the same scalars
// (double host arithmetic for the bias corrections and the step size, converted to the tensor
// type by the kernels), applied to the concatenation of the per-parameter tensors. An
// elementwise kernel's result for an element does not depend on where the element sits in its
// tensor (vectorised body or scalar tail, thread chunk), which tests/unit/train_fused_adam_test.cpp
// pins down. The global gradient norm keeps LibTorch's two-level reduction (one norm per parameter,
// in registration order, then the norm of those), because a single reduction over the flat buffer
// would round differently.
//
// Layout contract (GradSync's buckets are slices of the same flat gradient buffers, see
// flat_gradients()): parameters are grouped by (dtype, device) into buffers, numbered by their
// first parameter in registration order. Inside a buffer, parameters lie in REVERSE registration
// order (the order in which backward produces gradients, as GradSync's buckets), each starting at a
// multiple of kAlignBytes bytes; the gaps are zero in all four buffers and stay zero through clip
// and step. layout()[i] says where parameter i (registration order) lives; a parameter's view
// keeps the parameter's own strides (e.g. channels_last), and its gradient view has the same ones.
//
// Gradients: after construction every parameter's .grad() is a view into its flat gradient buffer.
// zero_grad() zeroes the buffers; backward then accumulates into the views in place (autograd's
// AccumulateGrad adds into a defined gradient when not building a graph), so no copy is needed.
// If something replaced a .grad() in between (set_to_none, GradSync pointing it at its own
// bucket), clip_*() and step() copy it into the flat buffer and point .grad() back at the view
// (last_copied() counts those copies). GradSync built over flat_gradients() averages straight
// into the views and points .grad() at them, so nothing is copied.
// Every parameter must have a gradient when clip_*() or step() runs (LibTorch skips a parameter
// without one; a flat update cannot), as GradSync requires too.
//
// Parameters must not be re-allocated after construction (model->to(device), Module::load's
// set_data): build FusedAdam once the model is on its device; load weights with copy_ (as
// load_checkpoint_into does). step() throws std::logic_error if a parameter stopped aliasing its
// buffer. The flat buffers' in-place updates do not bump the parameters' autograd version
// counters (LibTorch's per-parameter ops would); they happen between backward and the next
// forward, where no saved tensor is alive.
//
// Checkpoints: the state has torch::optim::Adam's names and shapes (per parameter: step, exp_avg,
// exp_avg_sq). to_libtorch() gives a LibTorch Adam/AdamW holding a copy of it, which
// save_checkpoint() writes unchanged; to resume, load_checkpoint_into() a to_libtorch() twin and
// import_state() from it.
//
// Threading: not thread-safe; call everything from the thread that runs backward. No host waits:
// nothing reads a device value (clip_grad_norm returns the norm as a tensor).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "train/optimizer.h"

namespace torch::optim {
class Optimizer;
}

namespace fer {

struct FlatGradients;  // dist/grad_sync.h

struct FusedAdamOptions {
  OptimizerKind kind = OptimizerKind::kAdam;  // kAdam: grad += wd * p; kAdamW: p *= 1 - lr * wd
  double lr = 1e-3;                           // learning rate, set before every step
  double beta1 = 0.9;                         // first-moment decay, set before every step
  double beta2 = 0.999;                       // second-moment decay
  double eps = 1e-8;                          // added to the bias-corrected sqrt(exp_avg_sq)
  double weight_decay = 0.0;                  // L2 (kAdam) or decoupled (kAdamW) decay
};

// The recipe's optimizer (optim.name, betas, eps, weight_decay) at learning rate `lr`.
FusedAdamOptions fused_adam_options(const OptimConfig& o, double lr);

// Where one parameter lives: elements [offset, offset + numel) of flat buffer `buffer`.
struct FlatSlot {
  int buffer = 0;
  std::int64_t offset = 0;
  std::int64_t numel = 0;
};

class FusedAdam {
 public:
  // Alignment of every parameter's first element in its buffer: a cache line on the CPU, and
  // enough for CUDA's vectorised loads and cuDNN.
  static constexpr std::int64_t kAlignBytes = 64;
  // On the CPU step() runs its 9 ops over slices of this many bytes per buffer, one slice after
  // the other, so that the slice's five arrays stay in the cache across the ops: the step is
  // memory-bound, and whole 26 MB buffers (ResNet9 width 1) would stream through DRAM 9 times
  // (measured ~1.4x faster at one thread). Elementwise results do not depend on the slicing. On
  // other devices the step runs over whole buffers (fewest kernel launches).
  static constexpr std::int64_t kCpuSliceBytes = 1 << 20;

  // `params` in registration order (model->parameters()): dense leaf tensors (any strides without
  // gaps or overlaps), each once. Their values move into the flat buffers (the tensors stay the
  // same objects, now views); existing gradients are copied into the flat gradient buffers.
  // Throws std::invalid_argument.
  FusedAdam(std::vector<at::Tensor> params, const FusedAdamOptions& options);
  ~FusedAdam();
  FusedAdam(const FusedAdam&) = delete;
  FusedAdam& operator=(const FusedAdam&) = delete;

  // Zeroes the flat gradient buffers (one op per buffer) and points every .grad() at its view.
  void zero_grad();
  // torch::nn::utils::clip_grad_value_ semantics: clamps every gradient to [-clip, clip].
  void clip_grad_value(double clip_value);
  // torch::nn::utils::clip_grad_norm_ (L2) semantics, bit for bit: total = norm of the
  // per-parameter norms, gradients scaled by min(1, max_norm / (total + 1e-6)). Returns the total
  // norm before clipping as a 0-dim tensor on the parameters' device (read it with .item() only
  // where the host needs it). All parameters must share one device.
  at::Tensor clip_grad_norm(double max_norm);
  // One Adam/AdamW step with the current options, as torch::optim::Adam(W)::step().
  void step();

  // The one-cycle schedule's hold on the optimizer: both may change before every step.
  void set_lr_and_beta1(double lr, double beta1);
  const FusedAdamOptions& options() const { return options_; }
  // Steps taken (LibTorch's per-parameter `step`, equal for all parameters here).
  std::int64_t step_count() const { return step_; }

  // The parameters, in registration order, as given.
  const std::vector<at::Tensor>& params() const { return params_; }
  // layout()[i]: where params()[i] lives.
  const std::vector<FlatSlot>& layout() const { return layout_; }
  int num_buffers() const { return static_cast<int>(buffers_.size()); }
  // 1-D flat buffers of buffer b (params()[i] is a view of flat_params(layout()[i].buffer)).
  const at::Tensor& flat_params(int b) const;
  const at::Tensor& flat_grads(int b) const;
  // Indices into params() of buffer b's parameters, in layout (reverse registration) order.
  const std::vector<int>& buffer_members(int b) const;
  // params()[i]'s slot of its flat gradient buffer, with params()[i]'s sizes and strides: where
  // clip_*() and step() read its gradient (.grad() pointing here needs no copy).
  const at::Tensor& grad_view(int i) const { return grad_views_.at(i); }
  // The flat gradient buffers as GradSync's bucket storage (buffers, slots and grad_view()s).
  FlatGradients flat_gradients() const;
  // Gradients the last clip_*() or step() had to copy into the flat buffers because .grad() was
  // not its grad_view() (0 when backward or GradSync wrote them in place).
  int last_copied() const { return last_copied_; }

  // A torch::optim::Adam (kAdam) or AdamW (kAdamW) over params() with these options and a copy
  // of this state (none before the first step, as LibTorch's): what checkpoint.cpp saves.
  std::unique_ptr<torch::optim::Optimizer> to_libtorch() const;
  // Writes a copy of this state into `optimizer` (Adam or AdamW, one parameter group whose i-th
  // parameter has params()[i]'s shape; its tensors may live on another device), replacing its
  // state. Throws std::invalid_argument.
  void export_state(torch::optim::Optimizer& optimizer) const;
  // Reads the state of `optimizer` (as above) into the flat buffers, e.g. after
  // load_checkpoint_into(). All parameters must have a state with the same step, or none has one
  // (a fresh optimizer: the state becomes zero). Options are not read: the config sets them.
  // Throws CheckpointError on an inconsistent state, std::invalid_argument on a misfit.
  void import_state(const torch::optim::Optimizer& optimizer);

 private:
  struct Buffer {
    at::Tensor params, grads, exp_avg, exp_avg_sq;  // 1-D, same length; gaps are zero
    at::Tensor scratch;        // one slice: the L2-decayed gradient, then the denominator
    std::int64_t slice = 0;    // elements per step() slice (the whole buffer off the CPU)
    std::vector<int> members;  // indices into params_, layout order
  };

  // params()[i]'s slot of `flat` (one of its buffer's tensors) with params()[i]'s sizes/strides.
  at::Tensor slot_view(const at::Tensor& flat, int i) const;
  // Checks that every parameter still aliases its slot; copies foreign gradients into the flat
  // buffers and points .grad() back at the views. Throws std::logic_error.
  void bind_gradients();

  std::vector<at::Tensor> params_;
  std::vector<FlatSlot> layout_;
  std::vector<at::Tensor> grad_views_;  // grad_views_[i]: slot_view(grads, i)
  std::vector<Buffer> buffers_;
  FusedAdamOptions options_;
  std::int64_t step_ = 0;
  int last_copied_ = 0;
};

}  // namespace fer
