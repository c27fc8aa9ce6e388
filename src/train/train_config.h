// The trainer's whole configuration: one struct tree, one commented field per line with its
// default. YAML files fill it (configs/*.yaml), `--set a.b=c` overrides, validate() checks the
// invariants once at start. The resolved config is logged and saved in the run folder.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fer {

class ConfigSchema;

struct DataConfig {
  // auto (device on CUDA, else memory) | memory (split in RAM, threads augment) | stream (shards
  // read in blocks) | device (split on the model's device, augmented there by tensor ops)
  std::string loader = "auto";
  int workers = 2;                // background threads preparing batches
  int prefetch_batches = 4;       // batches prepared ahead of the training thread
  int shuffle_buffer = 4096;      // images, stream mode only
  bool augment = true;            // pad + random crop + horizontal flip on train
  int pad = 4;                    // reflect padding before the random crop, pixels
  bool flip = true;               // random horizontal flip, p = 0.5
  void describe(ConfigSchema& s);
};

struct ModelConfig {
  double width = 1.0;      // channel multiplier of ResNet9 (1.0 = 6.57 M parameters)
  double dropout = 0.2;    // before the classifier
  std::string sync_bn = "auto";  // auto (on when world size > 1) | on | off
  // Weights, activations and input batches in NHWC order (torch.channels_last): oneDNN's and
  // cuDNN's fast convolution layout (cuDNN's tensor cores want it with bf16). Same maths, another
  // summation order. Off by default: on the CPU it made the step ~1.08x faster per CPU second at
  // the same test accuracy, but N ranks then depart from one process from step 1 (1e-4 at step 3
  // against <= 2e-7 through step 5 in NCHW: oneDNN's NHWC kernels round differently per batch size).
  bool channels_last = false;
  void describe(ConfigSchema& s);
};

struct OptimConfig {
  std::string name = "adam";            // adam (L2 weight decay, as torch.optim.Adam) | adamw
  bool fused = true;  // flat-buffer Adam/AdamW (same results as LibTorch's, fewer ops per step)
  double weight_decay = 1e-4;           // L2 (adam) or decoupled (adamw)
  std::vector<double> betas{0.9, 0.999};  // beta1 is overridden by the schedule when cycling
  double eps = 1e-8;
  double grad_clip_value = 0.1;         // clip each gradient element to [-v, v]; 0 = off
  double grad_clip_norm = 0.0;          // clip the global L2 norm; 0 = off
  double label_smoothing = 0.0;         // cross-entropy label smoothing
  // none | balanced: per-class loss weights = inverse train frequency (manifest counts),
  // normalised to mean 1; the loss is the mean over samples of weight[label] * cross-entropy.
  std::string class_weights = "none";
  void describe(ConfigSchema& s);
};

struct ScheduleConfig {
  double max_lr = 0.01;           // peak learning rate of the one-cycle schedule
  double pct_start = 0.3;         // share of steps spent warming up
  std::string anneal = "cos";     // cos | linear
  double div_factor = 25.0;       // initial lr = max_lr / div_factor
  double final_div_factor = 1e4;  // final lr = initial lr / final_div_factor
  bool three_phase = false;
  bool cycle_momentum = true;     // cycle Adam beta1 between base and max momentum
  double base_momentum = 0.85;
  double max_momentum = 0.95;
  void describe(ConfigSchema& s);
};

struct TrainSection {
  int epochs = 30;                // passes over the train split
  int batch_size = 64;            // per rank; the global batch is world_size * batch_size
  std::int64_t seed = 0;          // model init, sampling, augmentation, dropout
  int eval_every = 1;             // evaluate on val every N epochs (and after the last)
  int eval_batch_size = 256;
  int log_every = 50;             // metrics.jsonl step record every N steps
  int threads = 0;                // intra-op threads per rank; 0 = OMP_NUM_THREADS or all cores
  bool skip_nonfinite = false;    // skip a step whose loss is NaN/inf instead of stopping
  // When the host reads the step's loss and accuracy: step (every step: a non-finite loss is
  // caught before its update; on CUDA a host wait per step) | log (they add up on the device and
  // are read every log_every steps and at epoch end: no host wait in the step; a non-finite loss
  // is caught at the next read, after its update, and stops the run, whose last checkpoint is
  // then the one to resume; skip_nonfinite needs step) | auto (log on CUDA, step on the CPU,
  // where reading costs nothing).
  std::string host_sync = "auto";
  int max_steps = 0;              // stop after N optimizer steps (0 = all); for smoke tests
  // Micro-batches of batch_size per optimizer step (gradient accumulation): the global batch is
  // world_size * batch_size * accumulate_steps, and one rank with K reproduces K ranks (SyncBN
  // off: SyncBN normalizes each micro-batch over the ranks, not over the K micro-batches).
  int accumulate_steps = 1;
  // fp32 | bf16 | fp64: bf16 autocasts forward and loss (convolutions and matrix products in
  // bfloat16); weights, gradients, their all-reduce and the optimizer stay fp32. On a CPU bf16
  // needs native bfloat16 instructions (avx512_bf16 / amx_bf16 on x86, bf16 on Arm): elsewhere a
  // config error. fp64 runs everything in float64 (several times slower; checkpoints hold
  // float64 weights): for equivalence tests, where float32's own rounding would decide.
  std::string precision = "fp32";
  bool cudnn_benchmark = true;  // CUDA: let cuDNN time its algorithms for each new input shape
  bool tf32 = false;  // CUDA (Ampere+): fp32 convolutions and matrix products in TF32 (~10 bits)
  void describe(ConfigSchema& s);
};

struct EvalConfig {
  // Test-time augmentation of validation/test: none | flip (image + mirror) | ten_crop (the five
  // pad-and-crop positions of training's augmentation, centre and corners, each mirrored);
  // class probabilities averaged over the views.
  std::string tta = "none";
  void describe(ConfigSchema& s);
};

struct CheckpointConfig {
  int every_epochs = 1;    // write a checkpoint every N epochs (and at the end)
  int keep_last = 3;       // newest checkpoints kept, plus best.pt
  void describe(ConfigSchema& s);
};

struct DistConfig {
  std::string backend = "auto";  // auto (nccl on CUDA, mpi on CPU) | mpi | nccl
  double bucket_mb = 25.0;       // gradient bucket cap, MiB
  bool overlap = true;           // all-reduce buckets during backward
  double comm_timeout_s = 300;   // a collective slower than this aborts the job
  bool force_collectives = false;  // test switch: communicate (GradSync, SyncBN) even at world 1
  void describe(ConfigSchema& s);
};

struct TrainConfig {
  DataConfig data;
  ModelConfig model;
  OptimConfig optim;
  ScheduleConfig schedule;
  TrainSection train;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  DistConfig dist;
  void describe(ConfigSchema& s);
  // Checks invariants; throws ConfigError naming the key.
  void validate() const;
};

// Loads `path` (if not empty) then applies each "a.b=c" override, then validates.
TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides);
// The resolved config as YAML (what the run folder keeps and what the config hash covers).
std::string train_config_yaml(TrainConfig& config);

}  // namespace fer
