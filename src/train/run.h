// Running the training recipe (DESIGN.md data flow), the API the mains and tests use: no torch,
// no MPI in this header. The recipe itself is train/trainer.h's Trainer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "train/timeline.h"
#include "train/train_config.h"

namespace fer {

class ProcessGroups;

struct TrainRunOptions {
  std::filesystem::path data_dir;  // packed dataset (fer-pack output)
  std::filesystem::path run_dir;   // outputs: config.yaml, metrics.jsonl, summary.json, ...
  std::string resume;              // "" (fresh run) | "auto" (newest valid checkpoint) | a path
  std::string device = "auto";     // auto | cpu | cuda | cuda:N (cuda: local_rank % visible GPUs)
  int threads = 0;                 // intra-op threads; > 0 overrides train.threads
  // The job's communication planes, built on the same device (fer-dist-train's main builds them
  // from dist.*); nullptr: one process, no communication.
  ProcessGroups* groups = nullptr;
  TimelineOptions timeline;        // --timeline: Chrome trace of a window of steps (off: no path)
};

struct TrainSummary {
  std::int64_t steps = 0;
  double best_val_accuracy = 0.0;
  double test_accuracy = -1.0;     // -1 when the dataset has no test split
  double images_per_second = 0.0;  // training throughput (all ranks)
};

// Runs the whole recipe: Trainer's setup(), run(), finish(). Throws ConfigError, DataError,
// CheckpointError, TrainingError, IoError; Preempted/Interrupted after the checkpoint is written.
TrainSummary run_training(const TrainConfig& config, const TrainRunOptions& options);

// Evaluates a checkpoint on the val and test splits of `data_dir` with test-time augmentation
// `tta` (none | flip | ten_crop, the crops of the default pad 4); prints a table and returns the
// JSON of both evaluations.
std::string evaluate_checkpoint(const std::filesystem::path& checkpoint,
                                const std::filesystem::path& data_dir, const std::string& device,
                                int batch_size, int threads, const std::string& tta = "none");

}  // namespace fer
