// Device binding and the process-wide compute settings every torch program of fer-dist shares
// (fer-dist-train, fer-predict, evaluation). Torch only: no MPI, so fer-predict can link it.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

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

// This machine's host name (gethostname), for the logs: which node a rank runs on.
std::string host_name();

// Sets intra-op threads: `requested` > 0, else OMP_NUM_THREADS, else all cores. Returns it.
int configure_threads(int requested);

// The CUDA libraries a process runs with, for the start-up log, and whether it can run at all.
// A CUDA LibTorch brings its own libcudart.so.N; the NCCL backend links the toolkit's at build
// time. When the two majors differ both get loaded, each with its own device state, and device
// selection goes wrong without an error: such a process must not start.
struct RuntimeReport {
  std::string cuda_runtime = "none";  // "12.4" (cudaRuntimeGetVersion), "none" when not loaded
  std::string cuda_driver = "none";   // "12.6" (cudaDriverGetVersion), "none" without a driver
  std::string cudnn = "none";         // "9.1.0" (cudnnGetVersion)
  std::string nccl = "none";          // "2.21.5" (ncclGetVersion)
  std::vector<std::string> cuda_runtime_libraries;  // every libcudart.so.N loaded, as listed
  std::string problem;  // why the process must not start ("" when it may), naming the libraries
  std::string hint;     // how to fix `problem`
  // One line for the log: "CUDA runtime 12.4 (libcudart.so.12), driver 12.6, cuDNN 9.1.0, ...".
  std::string describe() const;
};

// Paths (or names) of the shared objects loaded in this process, from dl_iterate_phdr.
std::vector<std::string> loaded_libraries();

// What the libraries in `loaded` (paths or file names, e.g. loaded_libraries()) say. Versions are
// asked of the library itself when it is loaded in this process, else read from a versioned file
// name (libcudart.so.12.4.127 -> "12.4.127"). `problem` is set when libcudart.so.N with two
// different N are listed.
RuntimeReport runtime_report(const std::vector<std::string>& loaded);

// Warns (once) when LibTorch runs on the slow reference BLAS instead of OpenBLAS. Returns the
// path of the libblas in use ("" if none found).
std::string check_blas();

}  // namespace fer
