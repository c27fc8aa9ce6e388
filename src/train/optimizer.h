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

class FusedAdam;
struct FlatGradients;  // dist/grad_sync.h

// The recipe's optimizer as the trainer drives it: FusedAdam (optim.fused, the default: the
// parameters and gradients as flat buffers, a handful of ops per step) or LibTorch's Adam/AdamW.
// Both compute the same bits on the CPU (tests/unit/train_fused_adam_test.cpp). Checkpoints see a
// LibTorch optimizer either way (the same state names and shapes).
class TrainOptimizer {
 public:
  // Build it once the model is on its device (FusedAdam moves the parameters into its buffers).
  TrainOptimizer(const OptimConfig& o, double lr, ResNet9& model);
  ~TrainOptimizer();
  TrainOptimizer(const TrainOptimizer&) = delete;
  TrainOptimizer& operator=(const TrainOptimizer&) = delete;

  void set_lr_and_beta1(double lr, double beta1);
  // torch::nn::utils::clip_grad_value_ then clip_grad_norm_ semantics, each when its limit > 0.
  void clip(double value, double norm);
  void step();
  // The fused optimizer's flat gradient buffers for GradSync to average into (no copy into the
  // optimizer afterwards); empty with LibTorch's optimizer. Valid for the optimizer's lifetime
  // (the buffers are never re-created, a resume included).
  FlatGradients flat_gradients() const;
  // The state as a LibTorch optimizer for save_checkpoint / load_checkpoint_into; after loading
  // into it, call restore_checkpoint_state().
  torch::optim::Optimizer& checkpoint_state();
  void restore_checkpoint_state();

 private:
  OptimizerKind kind_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<FusedAdam> fused_;
  std::unique_ptr<torch::optim::Optimizer> libtorch_;  // the optimizer, or the fused one's view
};

// The one-cycle schedule of `s` over total_steps; beta1 is used when momentum does not cycle.
OneCycleOptions schedule_options(const ScheduleConfig& s, double beta1, std::int64_t total_steps);

}  // namespace fer
