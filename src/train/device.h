// Device binding and the process-wide compute settings every torch program of fer-dist shares
// (fer-dist-train, fer-predict, evaluation). Torch only: no MPI, so fer-predict can link it.
#pragma once

#include <torch/types.h>

#include <string>

namespace fer {

// The torch device for "auto" | "cpu" | "cuda" | "cuda:N". "cuda" and "auto" (when CUDA is
// available) bind cuda:(local_rank % visible device count): with one visible device (Slurm
// --gpus-per-task, per-rank CUDA_VISIBLE_DEVICES) every rank uses it. "cuda:N" is taken as given
// (ConfigError if N >= count). ConfigError when CUDA is asked for but not available, or for any
// other string.
torch::Device resolve_device(const std::string& requested, int local_rank = 0);

// resolve_device(requested, local_rank).str(), e.g. "cpu", "cuda:1".
std::string resolve_device_name(const std::string& requested, int local_rank = 0);

// The device index for `local_rank` (>= 0) given `visible_devices` (>= 1): local_rank modulo the
// count. ConfigError when either is out of range.
int bind_device_index(int local_rank, int visible_devices);

// Sets intra-op threads: `requested` > 0, else OMP_NUM_THREADS, else all cores. Returns it.
int configure_threads(int requested);

// Warns (once) when LibTorch runs on the slow reference BLAS instead of OpenBLAS. Returns the
// path of the libblas in use ("" if none found).
std::string check_blas();

}  // namespace fer
