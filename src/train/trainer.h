// The training recipe of one rank (DESIGN.md data flow; STYLE.md lesson 12): loader -> ResNet9 ->
// cross-entropy -> backward with the overlapped gradient all-reduce -> clip -> Adam/AdamW with the
// one-cycle schedule, plus evaluation, checkpoints and metrics around it.
//
// Lifecycle: Trainer(config, options) builds everything local (model, optimizer, loaders); setup()
// is the collective start (agreement, weight broadcast, resume); run() trains the remaining
// epochs (train_step() per batch, end_epoch() after each) and returns finish()'s summary.
// All run state lives in RunState and is changed only by Trainer's own members, each in one place.
//
// Communication: host values (the step's loss/accuracy/stop flags, evaluation sums, agreement)
// go through the control plane, tensors (weights, gradients, SyncBN) through the data plane on
// the model's device (dist/planes.h). One control collective per training step.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "common/cancel.h"
#include "common/fault.h"
#include "common/logging.h"
#include "data/loader.h"
#include "data/manifest.h"
#include "dist/grad_sync.h"
#include "dist/planes.h"
#include "model/resnet9.h"
#include "train/checkpoint.h"
#include "train/evaluation.h"
#include "train/metrics_log.h"
#include "train/one_cycle.h"
#include "train/optimizer.h"
#include "train/precision.h"
#include "train/progress.h"
#include "train/train_batches.h"
#include "train/run.h"

namespace fer {

// Train statistics of the steps done in the current epoch, summed over ranks (the same on every
// rank): what a checkpoint written mid-epoch carries so that a resumed run writes the same epoch
// record as an uninterrupted one.
struct EpochTotals {
  double loss_sum = 0.0;        // sum of the per-step global mean losses
  std::int64_t loss_steps = 0;  // steps in that sum (skipped non-finite steps excluded)
  std::int64_t correct = 0;     // correctly classified training samples
  std::int64_t seen = 0;        // training samples
};

struct RunState {
  std::int64_t step = 0;           // optimizer steps done (global; skipped steps count)
  std::int64_t epoch = 0;          // the epoch being trained
  std::int64_t step_in_epoch = 0;  // steps of `epoch` done
  EpochTotals epoch_totals;
  double best_val_accuracy = -1.0;
  std::int64_t best_step = -1;
  // This process's counters for summary.json.
  std::int64_t skipped_steps = 0;
  std::int64_t images_trained = 0;       // by all ranks, in this process's epochs
  double train_seconds = 0.0;            // wall clock of training epochs
  double train_cpu_seconds = 0.0;        // process CPU time of training epochs (all threads)
  double exposed_comm_seconds = 0.0;     // GradSync waits after backward
};

// What one training step produced; the same on every rank.
struct StepResult {
  bool trained = false;         // false: non-finite loss, the update was skipped
  bool read = true;             // loss and correct are set (train.host_sync step)
  double loss = 0.0;            // global mean loss of the step
  std::int64_t correct = 0;     // correctly classified samples of the global batch
  StopReason stop = StopReason::kNone;  // a rank was signalled: stop after this step
};

class Trainer {
 public:
  Trainer(const TrainConfig& config, const TrainRunOptions& options);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Collective: start-up agreement, rank 0's weights to every rank, resume from a checkpoint.
  void setup();
  // Trains the remaining epochs, then finish(). Throws Preempted/Interrupted (after writing a
  // checkpoint on every rank's behalf) when a rank was signalled.
  TrainSummary run();

 private:
  StepResult train_step(const torch::Tensor& images, const torch::Tensor& labels);
  void train_epoch();
  void end_epoch(double epoch_seconds);
  TrainSummary finish();

  // A rank's batch as train.accumulate_steps micro-batches on the device.
  struct MicroBatches {
    std::vector<torch::Tensor> x, y, keep;  // keep: undefined without dropout
  };
  // This rank's share of the step, on the device (nothing read by the host).
  struct LocalTotals {
    torch::Tensor loss;     // [] sum of the micro-batches' losses (each already over K)
    torch::Tensor correct;  // [] correctly classified samples
    void add(const torch::Tensor& micro_loss, const torch::Tensor& micro_correct);
  };
  MicroBatches micro_batches(const torch::Tensor& images, const torch::Tensor& labels,
                             const torch::Tensor& keep) const;
  torch::Tensor loss_of(const torch::Tensor& logits, const torch::Tensor& labels) const;
  LocalTotals accumulate_micro_batches(const MicroBatches& in);
  StepResult agree_on_step(const LocalTotals& local);
  void read_pending_totals();
  torch::Tensor dropout_keep(std::uint64_t step, int batch_size) const;
  void average_bn_statistics();
  void skip_nonfinite_step(double loss);
  void record_step(const StepResult& result, int batch_size);
  void log_step(double lr, double beta1);
  [[noreturn]] void stop_run(StopReason reason);
  void inject_faults();
  EvalResult evaluate_split(EvalBatches& batches);
  std::unique_ptr<EvalBatches> eval_batches(const std::string& split) const;
  CheckpointMeta checkpoint_meta() const;
  void save_step_checkpoint();
  void resume_from(const std::filesystem::path& checkpoint);

  const TrainConfig config_;
  const TrainRunOptions options_;
  const std::unique_ptr<ProcessGroups> local_groups_;  // when options.groups is null
  ControlPlane& control_;
  DataPlane& data_;
  const int rank_, world_;
  const bool leader_;
  const torch::Device device_;
  const Manifest manifest_;
  const std::string config_yaml_, config_hash_;
  const Precision precision_;  // train.precision: autocast of forward and loss
  const std::filesystem::path ckpt_dir_;
  const FaultPlan fault_;

  bool sync_bn_ = false;  // SyncBatchNorm layers (model.sync_bn, resolved for the world size)
  ResNet9 model_{nullptr};
  std::unique_ptr<TrainOptimizer> optimizer_;
  std::unique_ptr<GradSync> grad_sync_;
  std::unique_ptr<TrainBatches> batches_;
  std::unique_ptr<EvalBatches> val_batches_;
  bool eval_on_device_ = false;  // data.loader device: val/test held on the device too
  std::optional<OneCycleSchedule> schedule_;
  std::int64_t steps_per_epoch_ = 0, last_step_ = 0;
  torch::nn::functional::CrossEntropyFuncOptions ce_options_;
  torch::Tensor class_weights_;  // [K] on the device (optim.class_weights=balanced), else undefined
  EvalOptions eval_options_;

  RunState state_;
  // train.host_sync: read the step's loss and accuracy every step, or let them add up in
  // pending_ ([loss sum, correct] float64 on the device) for pending_steps_ steps.
  bool read_every_step_ = true;
  torch::Tensor pending_;
  std::int64_t pending_steps_ = 0;
  double last_loss_ = 0.0;  // the newest loss read (the progress line's)
  std::optional<std::filesystem::path> resume_path_;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<ProgressReporter> progress_;
  std::unique_ptr<Timeline> timeline_;
  std::vector<torch::Tensor> best_state_;  // parameters and buffers of the best model so far
  std::chrono::steady_clock::time_point started_, window_start_;
  std::int64_t window_images_ = 0;
  RateLimiter nonfinite_warnings_{std::chrono::seconds(10)};
};

}  // namespace fer
