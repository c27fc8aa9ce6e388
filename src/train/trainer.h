// The training recipe of one rank (DESIGN.md data flow): loader -> ResNet9 -> cross-entropy ->
// backward -> clip -> Adam/AdamW -> one-cycle, with evaluation, checkpoints and metrics.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "train/timeline.h"
#include "train/train_config.h"

namespace fer {

class Communicator;

struct TrainRunOptions {
  std::filesystem::path data_dir;  // packed dataset (fer-pack output)
  std::filesystem::path run_dir;   // outputs: config.yaml, metrics.jsonl, summary.json, ...
  std::string resume;              // "" (fresh run) | "auto" (newest valid checkpoint) | a path
  std::string device = "auto";     // auto | cpu | cuda | cuda:N
  int threads = 0;                 // intra-op threads; > 0 overrides train.threads
  Communicator* comm = nullptr;    // the ranks of this job; nullptr = one process
  TimelineOptions timeline;        // --timeline: Chrome trace of a window of steps (off: no path)
};

struct TrainSummary {
  std::int64_t steps = 0;
  double best_val_accuracy = 0.0;
  double test_accuracy = -1.0;     // -1 when the dataset has no test split
  double images_per_second = 0.0;  // training throughput (all ranks)
};

// Runs the whole recipe. Throws ConfigError, DataError, CheckpointError, TrainingError, IoError.
TrainSummary run_training(const TrainConfig& config, const TrainRunOptions& options);

// Evaluates a checkpoint on the val and test splits of `data_dir`; prints a table and returns the
// JSON of both evaluations.
std::string evaluate_checkpoint(const std::filesystem::path& checkpoint,
                                const std::filesystem::path& data_dir, const std::string& device,
                                int batch_size, int threads);

}  // namespace fer
