#include "train/optimizer.h"

#include <torch/torch.h>

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
