// Numeric precision and the process-wide CUDA math settings of training (train.precision,
// train.cudnn_benchmark, train.tf32). Torch only.
//
// bf16 is autocast of the forward and the loss (torch.autocast's op lists: convolutions and
// matrix products run in bfloat16, reductions and the loss in fp32); the weights, their gradients,
// the gradient all-reduce and the optimizer stay fp32, so checkpoints and GradSync do not change.
#pragma once

#include <torch/types.h>

#include <string>

namespace fer {

enum class Precision { kFp32, kBf16, kFp64 };

// "fp32" | "bf16" | "fp64"; ConfigError naming train.precision otherwise.
Precision parse_precision(const std::string& name);
const char* to_string(Precision p);

// Whether the flags of /proc/cpuinfo (its text) name native bfloat16 arithmetic: avx512_bf16 or
// amx_bf16 (x86), bf16 (Arm).
bool cpuinfo_has_native_bf16(const std::string& cpuinfo);

// ConfigError when `device` cannot run `precision` natively: bf16 on a CPU without it (emulated
// bfloat16 is slower than fp32, never what a user wants). On CUDA bf16 is native from Ampere
// (compute capability 8.0) on; older GPUs run it emulated (the README says so).
void check_precision(Precision precision, const torch::Device& device);

// cuDNN autotuning (benchmark mode) and TF32 for cuBLAS/cuDNN fp32 work: process-wide settings
// (at::globalContext), effective on CUDA only. Returns a line for the log.
std::string apply_cuda_math_settings(bool cudnn_benchmark, bool tf32);

// The dtype of a model's weights: float64 for fp64, else float32 (bf16 autocasts fp32 weights).
torch::ScalarType weight_dtype(Precision precision);

// Autocast of the code in its scope to `precision` on `device`'s type (nothing for fp32/fp64): the
// forward and the loss of a training step. Restores the previous state and drops autocast's
// cast cache on exit.
class AutocastScope {
 public:
  AutocastScope(Precision precision, const torch::Device& device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  bool cuda_ = false;
  bool was_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kFloat;
};

}  // namespace fer
