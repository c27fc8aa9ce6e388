// The optimizer of the recipe (Adam with L2 weight decay as torch.optim.Adam, or AdamW) and the
// one-cycle schedule's hold on it: lr and beta1 are set from the schedule before every step.
#pragma once

#include <cstdint>
#include <memory>

#include "model/resnet9.h"
#include "train/one_cycle.h"
#include "train/train_config.h"

namespace torch::optim {
class Optimizer;
}

namespace fer {

enum class OptimizerKind { kAdam, kAdamW };
OptimizerKind optimizer_kind(const OptimConfig& o);  // from optim.name (validated by the config)

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimConfig& o, double lr,
                                                        ResNet9& model);

// Sets lr and beta1 on every parameter group (Adam and AdamW have the same option fields).
void set_lr_and_beta1(torch::optim::Optimizer& optimizer, OptimizerKind kind, double lr,
                      double beta1);

// The one-cycle schedule of `s` over total_steps; beta1 is used when momentum does not cycle.
OneCycleOptions schedule_options(const ScheduleConfig& s, double beta1, std::int64_t total_steps);

}  // namespace fer
