#include "train/optimizer.h"

#include <torch/torch.h>

#include "dist/grad_sync.h"
#include "train/fused_adam.h"

namespace fer {

OptimizerKind optimizer_kind(const OptimConfig& o) {
  return o.name == "adamw" ? OptimizerKind::kAdamW : OptimizerKind::kAdam;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimConfig& o, double lr,
                                                        ResNet9& model) {
  const auto betas = std::make_tuple(o.betas[0], o.betas[1]);
  if (optimizer_kind(o) == OptimizerKind::kAdamW) {
    return std::make_unique<torch::optim::AdamW>(
        model->parameters(),
        torch::optim::AdamWOptions(lr).betas(betas).eps(o.eps).weight_decay(o.weight_decay));
  }
  return std::make_unique<torch::optim::Adam>(
      model->parameters(),
      torch::optim::AdamOptions(lr).betas(betas).eps(o.eps).weight_decay(o.weight_decay));
}

namespace {
template <typename Options>
void set_on(torch::optim::OptimizerOptions& options, double lr, double beta1) {
  auto& o = static_cast<Options&>(options);
  o.lr(lr);
  o.betas(std::make_tuple(beta1, std::get<1>(o.betas())));
}
}  // namespace

void set_lr_and_beta1(torch::optim::Optimizer& optimizer, OptimizerKind kind, double lr,
                      double beta1) {
  for (auto& group : optimizer.param_groups()) {
    if (kind == OptimizerKind::kAdamW) {
      set_on<torch::optim::AdamWOptions>(group.options(), lr, beta1);
    } else {
      set_on<torch::optim::AdamOptions>(group.options(), lr, beta1);
    }
  }
}

TrainOptimizer::TrainOptimizer(const OptimConfig& o, double lr, ResNet9& model)
    : kind_(optimizer_kind(o)), params_(model->parameters()) {
  if (o.fused) {
    fused_ = std::make_unique<FusedAdam>(params_, fused_adam_options(o, lr));
  } else {
    libtorch_ = make_optimizer(o, lr, model);
  }
}

TrainOptimizer::~TrainOptimizer() = default;

void TrainOptimizer::set_lr_and_beta1(double lr, double beta1) {
  if (fused_) {
    fused_->set_lr_and_beta1(lr, beta1);
  } else {
    fer::set_lr_and_beta1(*libtorch_, kind_, lr, beta1);
  }
}

void TrainOptimizer::clip(double value, double norm) {
  if (value > 0) {
    if (fused_) {
      fused_->clip_grad_value(value);
    } else {
      torch::nn::utils::clip_grad_value_(params_, value);
    }
  }
  if (norm > 0) {
    if (fused_) {
      fused_->clip_grad_norm(norm);
    } else {
      torch::nn::utils::clip_grad_norm_(params_, norm);
    }
  }
}

void TrainOptimizer::step() {
  if (fused_) {
    fused_->step();
  } else {
    libtorch_->step();
  }
}

FlatGradients TrainOptimizer::flat_gradients() const {
  return fused_ ? fused_->flat_gradients() : FlatGradients{};
}

torch::optim::Optimizer& TrainOptimizer::checkpoint_state() {
  if (fused_) libtorch_ = fused_->to_libtorch();
  return *libtorch_;
}

void TrainOptimizer::restore_checkpoint_state() {
  if (fused_) fused_->import_state(*libtorch_);
}

OneCycleOptions schedule_options(const ScheduleConfig& s, double beta1, std::int64_t total_steps) {
  OneCycleOptions o;
  o.max_lr = s.max_lr;
  o.total_steps = total_steps;
  o.pct_start = s.pct_start;
  o.anneal = s.anneal;
  o.div_factor = s.div_factor;
  o.final_div_factor = s.final_div_factor;
  o.three_phase = s.three_phase;
  o.cycle_momentum = s.cycle_momentum;
  o.base_momentum = s.base_momentum;
  o.max_momentum = s.max_momentum;
  o.beta1_when_not_cycling = beta1;
  return o;
}

}  // namespace fer
