#include "train/device.h"

#include <link.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "common/errors.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

constexpr const char* kCudaPrefix = "cuda:";  // the spelling of an explicit CUDA index

ConfigError device_syntax_error(const std::string& requested) {
  return ConfigError("--device must be auto, cpu, cuda or cuda:N, not '" + requested + "'");
}

// The N of "cuda:N"; ConfigError unless N is a small non-negative decimal number.
int parse_cuda_index(const std::string& requested) {
  const std::string digits = requested.substr(std::string(kCudaPrefix).size());
  if (digits.empty() || digits.size() > 4 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    throw device_syntax_error(requested);
  }
  return std::stoi(digits);
}

int visible_cuda_devices(const std::string& requested) {
  const int count = torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
  if (count < 1) {
    throw ConfigError(
        "--device " + requested + ": CUDA is not available in this LibTorch build or machine",
        "use --device cpu, or a CUDA-enabled LibTorch on a GPU machine");
  }
  return count;
}

}  // namespace

int bind_device_index(int local_rank, int visible_devices) {
  if (visible_devices < 1) {
    throw ConfigError("no visible device to bind (count " + std::to_string(visible_devices) + ")");
  }
  if (local_rank < 0) {
    throw ConfigError("local rank " + std::to_string(local_rank) + " is negative");
  }
  return local_rank % visible_devices;
}

torch::Device resolve_device(const std::string& requested, int local_rank) {
  if (requested == "cpu") return torch::kCPU;
  if (requested == "auto" && !torch::cuda::is_available()) return torch::kCPU;
  if (requested == "auto" || requested == "cuda") {
    const int count = visible_cuda_devices(requested);
    return {torch::kCUDA, static_cast<c10::DeviceIndex>(bind_device_index(local_rank, count))};
  }
  if (requested.rfind(kCudaPrefix, 0) == 0) {
    const int index = parse_cuda_index(requested);
    const int count = visible_cuda_devices(requested);
    if (index >= count) {
      throw ConfigError("--device " + requested + ": this process sees " + std::to_string(count) +
                            " CUDA device(s)",
                        "use --device cuda to bind cuda:(local rank % device count)");
    }
    return {torch::kCUDA, static_cast<c10::DeviceIndex>(index)};
  }
  throw device_syntax_error(requested);
}

std::string resolve_device_name(const std::string& requested, int local_rank) {
  return resolve_device(requested, local_rank).str();
}

int configure_threads(int requested) {
  int threads = requested;
  if (threads <= 0) {
    if (const char* env = std::getenv("OMP_NUM_THREADS")) threads = std::atoi(env);
  }
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(threads);
  return threads;
}

std::string check_blas() {
  std::string found;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        const std::string name = info->dlpi_name ? info->dlpi_name : "";
        if (name.find("libblas.so") != std::string::npos ||
            name.find("libopenblas") != std::string::npos) {
          std::error_code ec;
          *static_cast<std::string*>(data) = fs::canonical(name, ec).string();
          if (ec) *static_cast<std::string*>(data) = name;
          return 1;
        }
        return 0;
      },
      &found);
  if (found.find("/blas/libblas") != std::string::npos) {
    spdlog::warn("LibTorch is using the reference BLAS ({}), ~20x slower than OpenBLAS", found);
    spdlog::warn("fix: apt-get install libopenblas0-openmp (launch/install-deps.sh does this)");
  }
  return found;
}

}  // namespace fer
