// The one-cycle learning-rate (and Adam beta1) schedule of torch.optim.lr_scheduler.OneCycleLR
// (PyTorch 1.13), as a pure function of the global optimizer step.
//
// Being stateless, every rank computes the same value for the same step, and a resumed run
// continues the curve from the checkpointed step with nothing else to restore.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fer {

// Mirrors the `schedule` config section; the names in error messages are "schedule.<field>".
struct OneCycleOptions {
  double max_lr = 0.01;           // peak learning rate (> 0)
  std::int64_t total_steps = 0;   // optimizer steps in the whole run (> 0)
  double pct_start = 0.3;         // share of steps spent increasing the lr, in (0, 1)
  std::string anneal = "cos";     // cos | linear
  double div_factor = 25.0;       // initial_lr = max_lr / div_factor (> 0)
  double final_div_factor = 1e4;  // min_lr = initial_lr / final_div_factor (> 0)
  bool three_phase = false;       // PyTorch's three_phase: up, back down to initial_lr, to min_lr
  bool cycle_momentum = true;     // cycle Adam beta1 inversely to the lr
  double base_momentum = 0.85;    // beta1 at the lr peak, in [0, 1)
  double max_momentum = 0.95;     // beta1 at the start and the end, in [0, 1)
  // Adam beta1 returned by momentum() when cycle_momentum is false: PyTorch then leaves the
  // optimizer's beta1 untouched, so the trainer passes optim.betas[0] here. In [0, 1).
  double beta1_when_not_cycling = 0.9;
};

// OneCycleLR semantics, step for step: lr(s) and momentum(s) are the values PyTorch's optimizer
// holds during its s-th optimizer.step() (0-based), i.e. after s calls to scheduler.step().
// Two phases: initial_lr -> max_lr over steps [0, pct_start*total_steps - 1], then max_lr ->
// min_lr until total_steps - 1. With three_phase: initial_lr -> max_lr -> initial_lr (ending at
// 2*pct_start*total_steps - 2) -> min_lr. beta1 moves the opposite way between max_momentum and
// base_momentum (and stays at max_momentum in the third phase). As in PyTorch, three_phase with
// pct_start > ~0.5 is accepted but its second phase outlasts the run, so min_lr is never reached.
// Immutable after construction; safe to call from any thread.
class OneCycleSchedule {
 public:
  // Throws fer::ConfigError naming the option ("schedule.pct_start", ...) when total_steps <= 0,
  // pct_start is not in (0, 1), anneal is neither cos nor linear, a factor or max_lr is not a
  // positive finite number, or a momentum is outside [0, 1). Also rejects
  // pct_start * total_steps == 1, a one-step warm-up for which PyTorch divides by zero.
  explicit OneCycleSchedule(const OneCycleOptions& options);

  // Learning rate used by optimizer step `step`, in [0, total_steps). Throws fer::ConfigError
  // naming the step and total_steps otherwise (PyTorch raises one scheduler.step() later: it still
  // computes an extrapolated value for step total_steps that no optimizer step uses).
  double lr(std::int64_t step) const;

  // Adam beta1 used by optimizer step `step`; beta1_when_not_cycling if cycle_momentum is false.
  // Same step range and errors as lr().
  double momentum(std::int64_t step) const;

  std::int64_t total_steps() const { return options_.total_steps; }
  const OneCycleOptions& options() const { return options_; }

 private:
  // One segment of the curve; steps are fractional as in PyTorch ("end_step" is a float).
  struct Phase {
    double end_step;
    double start_lr;
    double end_lr;
    double start_momentum;
    double end_momentum;
  };
  // The phase holding `step` (already range-checked) and the progress through it, in [0, 1].
  const Phase& locate(std::int64_t step, double* pct) const;
  void check_step(std::int64_t step) const;
  double anneal(double start, double end, double pct) const;

  OneCycleOptions options_;
  bool cosine_ = true;  // anneal == "cos"
  std::vector<Phase> phases_;
};

}  // namespace fer
