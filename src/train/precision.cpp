#include "train/precision.h"

#include <ATen/autocast_mode.h>
#include <ATen/Context.h>
#include <torch/cuda.h>

#include <fstream>
#include <sstream>

#include "common/errors.h"

namespace fer {

Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::kFp32;
  if (name == "bf16") return Precision::kBf16;
  if (name == "fp64") return Precision::kFp64;
  throw ConfigError("train.precision: '" + name + "' is not a precision",
                    "use fp32, bf16 or fp64");
}

const char* to_string(Precision p) {
  switch (p) {
    case Precision::kBf16:
      return "bf16";
    case Precision::kFp64:
      return "fp64";
    default:
      return "fp32";
  }
}

torch::ScalarType weight_dtype(Precision precision) {
  return precision == Precision::kFp64 ? torch::kFloat64 : torch::kFloat32;
}

bool cpuinfo_has_native_bf16(const std::string& cpuinfo) {
  std::istringstream lines(cpuinfo);
  std::string line;
  while (std::getline(lines, line)) {
    // x86: "flags : ... avx512_bf16 ..."; Arm: "Features : ... bf16 ...".
    if (line.rfind("flags", 0) != 0 && line.rfind("Features", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') == std::string::npos
                                             ? line.size()
                                             : line.find(':') + 1));
    std::string w;
    while (words >> w) {
      if (w == "avx512_bf16" || w == "amx_bf16" || w == "bf16") return true;
    }
  }
  return false;
}

namespace {

std::string read_cpuinfo() {
  std::ifstream in("/proc/cpuinfo");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

void check_precision(Precision precision, const torch::Device& device) {
  if (precision != Precision::kBf16) return;
  if (device.is_cpu()) {
    FER_CHECK(cpuinfo_has_native_bf16(read_cpuinfo()), ConfigError,
              "train.precision=bf16: this CPU has no native bfloat16 instructions (no "
              "avx512_bf16/amx_bf16/bf16 in /proc/cpuinfo); emulated bf16 is slower than fp32. "
              "Use train.precision=fp32 here");
    return;
  }
  // CUDA: bfloat16 tensor cores from compute capability 8.0 (Ampere); older GPUs emulate it.
  FER_CHECK(torch::cuda::is_available(), ConfigError,
            "train.precision=bf16 on ", device.str(), ": CUDA is not available");
}

std::string apply_cuda_math_settings(bool cudnn_benchmark, bool tf32) {
  auto& context = at::globalContext();
  context.setBenchmarkCuDNN(cudnn_benchmark);
  context.setAllowTF32CuBLAS(tf32);
  context.setAllowTF32CuDNN(tf32);
  return std::string("cuDNN benchmark ") + (cudnn_benchmark ? "on" : "off") + ", TF32 " +
         (tf32 ? "on" : "off");
}

AutocastScope::AutocastScope(Precision precision, const torch::Device& device) {
  if (precision != Precision::kBf16) return;
  active_ = true;
  cuda_ = device.is_cuda();
  if (cuda_) {
    was_enabled_ = at::autocast::is_enabled();
    previous_dtype_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
  } else {
    was_enabled_ = at::autocast::is_cpu_enabled();
    previous_dtype_ = at::autocast::get_autocast_cpu_dtype();
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
  }
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  // The outermost scope drops the cache of weights cast to bf16 (torch.autocast's __exit__).
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  if (cuda_) {
    at::autocast::set_enabled(was_enabled_);
    at::autocast::set_autocast_gpu_dtype(previous_dtype_);
  } else {
    at::autocast::set_cpu_enabled(was_enabled_);
    at::autocast::set_autocast_cpu_dtype(previous_dtype_);
  }
}

}  // namespace fer
