#include "train/fused_adam.h"

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_set>
#include <utility>

#include "common/errors.h"
#include "dist/grad_sync.h"

namespace fer {
namespace {

// LibTorch 1.13's key of a parameter in Optimizer::state().
std::string state_key(const at::Tensor& param) {
  return c10::guts::to_string(param.unsafeGetTensorImpl());
}

std::int64_t round_up(std::int64_t n, std::int64_t multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

std::string param_name(std::size_t i) { return "parameter " + std::to_string(i); }

// The single parameter group of a LibTorch optimizer that mirrors `params` index by index.
const std::vector<at::Tensor>& mirrored_params(const torch::optim::Optimizer& optimizer,
                                               const std::vector<at::Tensor>& params) {
  if (optimizer.param_groups().size() != 1) {
    throw std::invalid_argument("FusedAdam: the LibTorch optimizer must have one parameter group");
  }
  const auto& theirs = optimizer.param_groups()[0].params();
  if (theirs.size() != params.size()) {
    throw std::invalid_argument("FusedAdam: the LibTorch optimizer has " +
                                std::to_string(theirs.size()) + " parameters, FusedAdam " +
                                std::to_string(params.size()));
  }
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (!theirs[i].sizes().equals(params[i].sizes())) {
      throw std::invalid_argument("FusedAdam: " + param_name(i) +
                                  " has another shape in the LibTorch optimizer");
    }
  }
  return theirs;
}

bool is_adamw(const torch::optim::Optimizer& optimizer) {
  if (dynamic_cast<const torch::optim::AdamW*>(&optimizer)) return true;
  if (dynamic_cast<const torch::optim::Adam*>(&optimizer)) return false;
  throw std::invalid_argument("FusedAdam: the LibTorch optimizer must be Adam or AdamW");
}

// State (AdamParamState or AdamWParamState: the same fields) -> optimizer, per parameter.
template <typename State, typename ViewOf>
void write_states(torch::optim::Optimizer& optimizer, const std::vector<at::Tensor>& theirs,
                  std::int64_t step, const ViewOf& view_of) {
  for (std::size_t i = 0; i < theirs.size(); ++i) {
    // A copy with the parameter's strides on the receiving parameter's device, as LibTorch's
    // zeros_like(p, Preserve) state would be.
    const auto copy = [&](const at::Tensor& view) {
      return view.to(theirs[i].device(), view.scalar_type(), /*non_blocking=*/false,
                     /*copy=*/true, at::MemoryFormat::Preserve);
    };
    const auto& [exp_avg, exp_avg_sq] = view_of(static_cast<int>(i));
    auto state = std::make_unique<State>();
    state->step(step);
    state->exp_avg(copy(exp_avg));
    state->exp_avg_sq(copy(exp_avg_sq));
    optimizer.state()[state_key(theirs[i])] = std::move(state);
  }
}

// Optimizer -> per-parameter (step, exp_avg, exp_avg_sq); nullptr where a parameter has none.
template <typename State>
std::vector<const State*> read_states(const torch::optim::Optimizer& optimizer,
                                      const std::vector<at::Tensor>& theirs) {
  std::vector<const State*> states;
  for (const auto& p : theirs) {
    const auto it = optimizer.state().find(state_key(p));
    states.push_back(it == optimizer.state().end() ? nullptr
                                                   : static_cast<const State*>(it->second.get()));
  }
  return states;
}

}  // namespace

FusedAdamOptions fused_adam_options(const OptimConfig& o, double lr) {
  FusedAdamOptions f;
  f.kind = optimizer_kind(o);
  f.lr = lr;
  f.beta1 = o.betas.at(0);
  f.beta2 = o.betas.at(1);
  f.eps = o.eps;
  f.weight_decay = o.weight_decay;
  return f;
}

FusedAdam::FusedAdam(std::vector<at::Tensor> params, const FusedAdamOptions& options)
    : params_(std::move(params)), layout_(params_.size()), options_(options) {
  torch::NoGradGuard no_grad;
  std::unordered_set<const void*> seen;
  // Buffers keyed by (dtype, device), numbered by their first parameter in registration order.
  std::map<std::pair<at::ScalarType, std::string>, int> buffer_of;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i];
    if (!p.defined() || !p.is_leaf() || !p.is_non_overlapping_and_dense() || p.is_sparse()) {
      throw std::invalid_argument("FusedAdam: " + param_name(i) +
                                  " must be a dense leaf tensor without gaps or overlaps");
    }
    if (!seen.insert(p.unsafeGetTensorImpl()).second) {
      throw std::invalid_argument("FusedAdam: " + param_name(i) + " is given twice");
    }
    const auto key = std::make_pair(p.scalar_type(), p.device().str());
    const auto [it, inserted] = buffer_of.emplace(key, static_cast<int>(buffers_.size()));
    if (inserted) buffers_.emplace_back();
    layout_[i].buffer = it->second;
    layout_[i].numel = p.numel();
  }
  // Reverse registration order inside each buffer (GradSync's bucket order), aligned slots.
  for (int i = static_cast<int>(params_.size()) - 1; i >= 0; --i) {
    buffers_[layout_[i].buffer].members.push_back(i);
  }
  for (Buffer& b : buffers_) {
    const at::Tensor& first = params_[b.members.front()];
    const std::int64_t align = std::max<std::int64_t>(1, kAlignBytes / first.element_size());
    std::int64_t cursor = 0;
    for (const int i : b.members) {
      layout_[i].offset = round_up(cursor, align);
      cursor = layout_[i].offset + layout_[i].numel;
    }
    const std::int64_t numel = round_up(cursor, align);
    const auto options = at::TensorOptions().dtype(first.scalar_type()).device(first.device());
    b.params = at::zeros({numel}, options);
    b.grads = at::zeros({numel}, options);
    b.exp_avg = at::zeros({numel}, options);
    b.exp_avg_sq = at::zeros({numel}, options);
    b.slice = first.is_cpu() ? std::max<std::int64_t>(align, kCpuSliceBytes / first.element_size())
                             : std::max<std::int64_t>(1, numel);
    b.scratch = at::empty({std::min(numel, b.slice)}, options);
  }
  // Move the values in and make every parameter (the same TensorImpl, so modules and LibTorch
  // optimizer state keys still see it) a view of its slot.
  grad_views_.resize(params_.size());
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const Buffer& b = buffers_[layout_[i].buffer];
    at::Tensor value = slot_view(b.params, static_cast<int>(i));
    value.copy_(params_[i]);
    grad_views_[i] = slot_view(b.grads, static_cast<int>(i));
    if (params_[i].grad().defined()) grad_views_[i].copy_(params_[i].grad());
    params_[i].set_data(value);
    params_[i].mutable_grad() = grad_views_[i];
  }
}

FusedAdam::~FusedAdam() = default;

at::Tensor FusedAdam::slot_view(const at::Tensor& flat, int i) const {
  const at::Tensor& p = params_[i];
  return flat.as_strided(p.sizes(), p.strides(), layout_[i].offset);
}

const at::Tensor& FusedAdam::flat_params(int b) const { return buffers_.at(b).params; }
const at::Tensor& FusedAdam::flat_grads(int b) const { return buffers_.at(b).grads; }
const std::vector<int>& FusedAdam::buffer_members(int b) const { return buffers_.at(b).members; }

FlatGradients FusedAdam::flat_gradients() const {
  FlatGradients flat;
  for (const Buffer& b : buffers_) flat.buffers.push_back(b.grads);
  for (std::size_t i = 0; i < params_.size(); ++i) {
    flat.buffer.push_back(layout_[i].buffer);
    flat.offset.push_back(layout_[i].offset);
    flat.views.push_back(grad_views_[i]);
  }
  return flat;
}

void FusedAdam::bind_gradients() {
  torch::NoGradGuard no_grad;
  last_copied_ = 0;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i];
    const Buffer& b = buffers_[layout_[i].buffer];
    const char* slot =
        static_cast<const char*>(b.params.data_ptr()) + layout_[i].offset * b.params.element_size();
    if (p.data_ptr() != slot || !p.strides().equals(grad_views_[i].strides())) {
      throw std::logic_error("FusedAdam: " + param_name(i) +
                             " no longer aliases its flat buffer (re-allocated by .to() or "
                             "set_data after FusedAdam was built?)");
    }
    const at::Tensor& g = p.grad();
    if (!g.defined()) {
      throw std::logic_error("FusedAdam: " + param_name(i) +
                             " has no gradient (every parameter needs one per step)");
    }
    if (g.data_ptr() == grad_views_[i].data_ptr() && g.strides().equals(p.strides())) continue;
    grad_views_[i].copy_(g);
    p.mutable_grad() = grad_views_[i];
    ++last_copied_;
  }
}

void FusedAdam::zero_grad() {
  for (Buffer& b : buffers_) b.grads.zero_();
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& g = params_[i].grad();
    if (!g.defined() || g.data_ptr() != grad_views_[i].data_ptr()) {
      params_[i].mutable_grad() = grad_views_[i];
    }
  }
}

void FusedAdam::clip_grad_value(double clip_value) {
  bind_gradients();
  torch::NoGradGuard no_grad;
  for (Buffer& b : buffers_) b.grads.clamp_(-clip_value, clip_value);
}

at::Tensor FusedAdam::clip_grad_norm(double max_norm) {
  bind_gradients();
  torch::NoGradGuard no_grad;
  if (params_.empty()) return torch::zeros({});
  // LibTorch's two-level reduction, in registration order: the flat buffers' single norm would
  // sum in another order and round differently.
  std::vector<at::Tensor> norms;
  norms.reserve(params_.size());
  for (const at::Tensor& g : grad_views_) norms.push_back(g.norm(2.0));
  at::Tensor total = norms.size() == 1 ? norms[0] : torch::stack(norms).norm(2.0);
  const auto clip_coef = max_norm / (total + 1e-6);
  const auto clip_coef_clamped = torch::clamp(clip_coef, c10::nullopt /* min */, 1.0 /* max */);
  for (Buffer& b : buffers_) b.grads.mul_(clip_coef_clamped);
  return total;
}

void FusedAdam::set_lr_and_beta1(double lr, double beta1) {
  options_.lr = lr;
  options_.beta1 = beta1;
}

namespace {

// The scalars of one step, as LibTorch computes them (doubles; the kernels convert them).
struct StepScalars {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled;  // AdamW
  double bias_correction2, step_size;
};

// torch::optim::Adam(W)::step() of LibTorch 1.13 (torch/csrc/api/src/optim/adam.cpp, adamw.cpp)
// for one parameter, applied to a slice of the flat buffers: the same ops in the same order with
// the same double scalars. Only the temporaries live in `scratch` instead of fresh tensors.
void adam_update(const at::Tensor& params, const at::Tensor& grads, const at::Tensor& exp_avg,
                 const at::Tensor& exp_avg_sq, at::Tensor scratch, const StepScalars& k) {
  if (k.decoupled && k.weight_decay != 0) params.mul_(1 - k.lr * k.weight_decay);
  at::Tensor grad = grads;
  if (!k.decoupled && k.weight_decay != 0) {
    at::add_out(scratch, grads, params, k.weight_decay);  // grad = grad.add(p, weight_decay)
    grad = scratch;
  }
  exp_avg.mul_(k.beta1).add_(grad, 1 - k.beta1);
  exp_avg_sq.mul_(k.beta2).addcmul_(grad, grad, 1 - k.beta2);
  // denom = (exp_avg_sq.sqrt() / sqrt(bias_correction2)).add_(eps), over the decayed gradient
  // (no longer needed).
  at::sqrt_out(scratch, exp_avg_sq);
  scratch.div_(std::sqrt(k.bias_correction2)).add_(k.eps);
  params.addcdiv_(exp_avg, scratch, -k.step_size);
}

}  // namespace

void FusedAdam::step() {
  bind_gradients();
  torch::NoGradGuard no_grad;
  ++step_;
  StepScalars k;
  k.lr = options_.lr;
  k.beta1 = options_.beta1;
  k.beta2 = options_.beta2;
  k.eps = options_.eps;
  k.weight_decay = options_.weight_decay;
  k.decoupled = options_.kind == OptimizerKind::kAdamW;
  const auto bias_correction1 = 1 - std::pow(k.beta1, step_);
  k.bias_correction2 = 1 - std::pow(k.beta2, step_);
  k.step_size = k.lr / bias_correction1;
  for (Buffer& b : buffers_) {
    const std::int64_t numel = b.params.numel();
    for (std::int64_t begin = 0; begin < numel; begin += b.slice) {
      const std::int64_t n = std::min(b.slice, numel - begin);
      adam_update(b.params.narrow(0, begin, n), b.grads.narrow(0, begin, n),
                  b.exp_avg.narrow(0, begin, n), b.exp_avg_sq.narrow(0, begin, n),
                  b.scratch.narrow(0, 0, n), k);
    }
  }
}

std::unique_ptr<torch::optim::Optimizer> FusedAdam::to_libtorch() const {
  const auto betas = std::make_tuple(options_.beta1, options_.beta2);
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (options_.kind == OptimizerKind::kAdamW) {
    torch::optim::AdamWOptions o(options_.lr);
    o.betas(betas).eps(options_.eps).weight_decay(options_.weight_decay);
    optimizer = std::make_unique<torch::optim::AdamW>(params_, o);
  } else {
    torch::optim::AdamOptions o(options_.lr);
    o.betas(betas).eps(options_.eps).weight_decay(options_.weight_decay);
    optimizer = std::make_unique<torch::optim::Adam>(params_, o);
  }
  export_state(*optimizer);
  return optimizer;
}

void FusedAdam::export_state(torch::optim::Optimizer& optimizer) const {
  const auto& theirs = mirrored_params(optimizer, params_);
  const bool adamw = is_adamw(optimizer);
  torch::NoGradGuard no_grad;
  optimizer.state().clear();
  if (step_ == 0) return;  // LibTorch creates the state at the first step
  const auto view_of = [this](int i) {
    const Buffer& b = buffers_[layout_[i].buffer];
    return std::make_pair(slot_view(b.exp_avg, i), slot_view(b.exp_avg_sq, i));
  };
  if (adamw) {
    write_states<torch::optim::AdamWParamState>(optimizer, theirs, step_, view_of);
  } else {
    write_states<torch::optim::AdamParamState>(optimizer, theirs, step_, view_of);
  }
}

void FusedAdam::import_state(const torch::optim::Optimizer& optimizer) {
  const auto& theirs = mirrored_params(optimizer, params_);
  // AdamParamState and AdamWParamState have the same fields; read through the right type.
  struct Entry {
    std::int64_t step;
    at::Tensor exp_avg, exp_avg_sq, max_exp_avg_sq;
  };
  std::vector<std::optional<Entry>> entries;
  const auto collect = [&](const auto& states) {
    for (const auto* s : states) {
      if (s == nullptr) {
        entries.emplace_back();
      } else {
        entries.push_back(Entry{s->step(), s->exp_avg(), s->exp_avg_sq(), s->max_exp_avg_sq()});
      }
    }
  };
  if (is_adamw(optimizer)) {
    collect(read_states<torch::optim::AdamWParamState>(optimizer, theirs));
  } else {
    collect(read_states<torch::optim::AdamParamState>(optimizer, theirs));
  }
  std::size_t present = 0;
  for (const auto& e : entries) present += e.has_value();
  torch::NoGradGuard no_grad;
  if (present == 0) {  // a fresh optimizer
    for (Buffer& b : buffers_) {
      b.exp_avg.zero_();
      b.exp_avg_sq.zero_();
    }
    step_ = 0;
    return;
  }
  if (present != entries.size()) {
    throw CheckpointError("Adam state covers " + std::to_string(present) + " of " +
                          std::to_string(entries.size()) + " parameters");
  }
  const std::int64_t step = entries[0]->step;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = *entries[i];
    if (e.step != step) {
      throw CheckpointError("Adam state: " + param_name(i) + " is at step " +
                            std::to_string(e.step) + ", parameter 0 at step " +
                            std::to_string(step) + " (FusedAdam steps all parameters together)");
    }
    if (e.max_exp_avg_sq.defined()) {
      throw CheckpointError("Adam state: amsgrad (max_exp_avg_sq) is not supported by FusedAdam");
    }
    if (!e.exp_avg.defined() || !e.exp_avg_sq.defined() ||
        !e.exp_avg.sizes().equals(params_[i].sizes()) ||
        !e.exp_avg_sq.sizes().equals(params_[i].sizes())) {
      throw CheckpointError("Adam state: " + param_name(i) +
                            "'s exp_avg/exp_avg_sq do not have the parameter's shape");
    }
  }
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const Buffer& b = buffers_[layout_[i].buffer];
    slot_view(b.exp_avg, static_cast<int>(i)).copy_(entries[i]->exp_avg);
    slot_view(b.exp_avg_sq, static_cast<int>(i)).copy_(entries[i]->exp_avg_sq);
  }
  step_ = step;
}

}  // namespace fer
