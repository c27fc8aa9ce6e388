// Checkpoints: <run>/checkpoints/step-XXXXXXXX.pt plus best.pt, written atomically (temporary
// name, fsync, rename) so a crash or a full disk leaves the previous checkpoint loadable.
//
// A checkpoint is self-contained for inference: besides model and optimizer state it carries the
// classes, normalization, image shape and model options (CheckpointMeta), so fer-predict needs
// nothing else. Dropout randomness is derived from (seed, step), so no RNG state is stored.
//
// Device-neutral (DESIGN.md "Checkpoints and outputs"): every tensor is saved as a CPU copy, and
// files are read onto the CPU, then copied into the model and optimizer on THEIR devices. So a
// checkpoint written by a GPU run opens in a CPU-only build, and on resume every rank's weights
// and Adam state land on that rank's own device.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "model/resnet9.h"

namespace torch::optim {
class Optimizer;
}

namespace fer {

inline constexpr int kCheckpointVersion = 1;

struct CheckpointMeta {
  std::int64_t step = 0;           // optimizer steps done (global)
  std::int64_t epoch = 0;          // epoch of the next step
  std::int64_t step_in_epoch = 0;  // step within `epoch` to resume from
  std::vector<std::string> classes;
  std::vector<double> mean, std;   // normalization, [0,1] units, per channel
  int height = 0, width = 0, channels = 0;
  ResNet9Options model;
  std::string optimizer;           // adam | adamw
  std::string config_yaml;         // resolved config of the run
  std::string config_hash;
  double best_val_accuracy = -1.0;
  std::int64_t best_step = -1;
  int world_size = 1;
  // Train statistics of the steps already done in `epoch` (all zero at an epoch boundary), summed
  // over ranks, so that a run resumed mid-epoch (after preemption) writes the same epoch record
  // as an uninterrupted one.
  double epoch_loss_sum = 0.0;        // sum of the per-step global mean losses
  std::int64_t epoch_loss_steps = 0;  // steps in that sum (skipped non-finite steps excluded)
  std::int64_t epoch_correct = 0;     // correctly classified training samples
  std::int64_t epoch_seen = 0;        // training samples

  std::string to_json() const;
  static CheckpointMeta from_json(const std::string& json, const std::string& source);
};

// Writes model (+ optimizer when given) and meta to `path` atomically. Throws CheckpointError
// (the old file at `path`, if any, is untouched).
void save_checkpoint(const std::filesystem::path& path, ResNet9& model,
                     torch::optim::Optimizer* optimizer, const CheckpointMeta& meta);

// Reads only the metadata. Throws CheckpointError naming the file.
CheckpointMeta read_checkpoint_meta(const std::filesystem::path& path);

// Builds the model described by the checkpoint and loads its weights (CPU).
ResNet9 load_checkpoint_model(const std::filesystem::path& path, CheckpointMeta* meta);

// Loads weights (+ optimizer state) into existing objects of the same architecture, on whatever
// device they live (they stay there); checks that parameter names and shapes match first. The
// optimizer must be Adam or AdamW with one parameter group. Throws CheckpointError.
void load_checkpoint_into(const std::filesystem::path& path, ResNet9& model,
                          torch::optim::Optimizer* optimizer, CheckpointMeta* meta);

// "step-00001234.pt"
std::string checkpoint_file_name(std::int64_t step);

// Step checkpoints in `dir`, newest first.
std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& dir);

// Deletes step checkpoints beyond the newest `keep` (best.pt is not a step checkpoint).
void prune_checkpoints(const std::filesystem::path& dir, int keep);

// The newest checkpoint in `dir` whose metadata reads back; a corrupt newer one is skipped with a
// warning. nullopt when there is none.
std::optional<std::filesystem::path> newest_valid_checkpoint(const std::filesystem::path& dir);

}  // namespace fer
