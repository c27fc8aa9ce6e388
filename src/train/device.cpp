#include "train/device.h"

#include <dlfcn.h>
#include <link.h>
#include <unistd.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <map>
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

// The part of a file name after "<stem>.so.", or "" when the name is not "<stem>.so.<version>"
// (a development symlink "libcudart.so" has no version). The libtorch archive ships its CUDA
// libraries renamed with a hash, "<stem>-<hex>.so.<version>" (libcudart-9335f6a2.so.12): the same.
std::string soname_version(const std::string& name, const std::string& stem) {
  const std::string base = fs::path(name).filename().string();
  if (base.rfind(stem, 0) != 0) return "";
  std::size_t at = stem.size();
  if (at < base.size() && base[at] == '-') {
    const std::size_t end = base.find('.', at);
    if (end == std::string::npos || end == at + 1 ||
        !std::all_of(base.begin() + at + 1, base.begin() + end,
                     [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; })) {
      return "";
    }
    at = end;
  }
  const std::string suffix = ".so.";
  return base.compare(at, suffix.size(), suffix) == 0 ? base.substr(at + suffix.size())
                                                      : std::string();
}

// Calls `int symbol(int*)` (cudaRuntimeGetVersion, ncclGetVersion, ...) in `library` when that
// library is already loaded in this process (RTLD_NOLOAD: never loads anything). -1 otherwise.
int query_int_version(const std::string& library, const char* symbol) {
  void* handle = dlopen(library.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return -1;
  int version = -1;
  using Getter = int (*)(int*);
  if (auto getter = reinterpret_cast<Getter>(dlsym(handle, symbol))) {
    int v = 0;
    if (getter(&v) == 0) version = v;
  }
  dlclose(handle);
  return version;
}

// cudnnGetVersion() (size_t, no arguments) of a loaded libcudnn; -1 when not loaded.
long long query_cudnn_version(const std::string& library) {
  void* handle = dlopen(library.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return -1;
  long long version = -1;
  using Getter = std::size_t (*)();
  if (auto getter = reinterpret_cast<Getter>(dlsym(handle, "cudnnGetVersion"))) {
    version = static_cast<long long>(getter());
  }
  dlclose(handle);
  return version;
}

// CUDA's 1000*major + 10*minor (12040 -> "12.4").
std::string cuda_version_string(int v) {
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

// NCCL_VERSION_CODE: 10000*major + 100*minor + patch since 2.9, 1000*major + 100*minor before.
std::string nccl_version_string(int v) {
  const int major_unit = v >= 10000 ? 10000 : 1000;
  return std::to_string(v / major_unit) + "." + std::to_string(v % major_unit / 100) + "." +
         std::to_string(v % 100);
}

// CUDNN_VERSION: 10000*major + 100*minor + patch since 9, 1000*major + 100*minor + patch before.
std::string cudnn_version_string(long long v) {
  const long long major_unit = v >= 10000 ? 10000 : 1000;
  return std::to_string(v / major_unit) + "." + std::to_string(v % major_unit / 100) + "." +
         std::to_string(v % 100);
}

// The major version of a libcudart.so.<version> name ("12" of "12.4.127"), "" when unversioned.
std::string major_of(const std::string& version) { return version.substr(0, version.find('.')); }

}  // namespace

std::vector<std::string> loaded_libraries() {
  std::vector<std::string> names;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0') {
          static_cast<std::vector<std::string>*>(data)->push_back(info->dlpi_name);
        }
        return 0;
      },
      &names);
  return names;
}

RuntimeReport runtime_report(const std::vector<std::string>& loaded) {
  RuntimeReport report;
  std::map<std::string, std::string> runtime_by_major;  // major -> the first library listed
  for (const std::string& name : loaded) {
    if (const std::string v = soname_version(name, "libcudart"); !v.empty()) {
      report.cuda_runtime_libraries.push_back(name);
      runtime_by_major.emplace(major_of(v), name);
      if (report.cuda_runtime == "none") {
        const int runtime = query_int_version(name, "cudaRuntimeGetVersion");
        report.cuda_runtime = runtime > 0 ? cuda_version_string(runtime) : v;
        const int driver = query_int_version(name, "cudaDriverGetVersion");
        if (driver > 0) report.cuda_driver = cuda_version_string(driver);
      }
    } else if (const std::string c = soname_version(name, "libcudnn"); !c.empty()) {
      if (report.cudnn == "none") {
        const long long cudnn = query_cudnn_version(name);
        report.cudnn = cudnn > 0 ? cudnn_version_string(cudnn) : c;
      }
    } else if (const std::string n = soname_version(name, "libnccl"); !n.empty()) {
      if (report.nccl == "none") {
        const int nccl = query_int_version(name, "ncclGetVersion");
        report.nccl = nccl > 0 ? nccl_version_string(nccl) : n;
      }
    }
  }
  if (runtime_by_major.size() > 1) {
    std::string listed;
    for (const auto& [major, name] : runtime_by_major) {
      listed += (listed.empty() ? "" : " and ") + std::string("CUDA ") + major + " (" + name + ")";
    }
    report.problem = "two CUDA runtimes are loaded: " + listed +
                     "; each keeps its own device state, so device selection would go wrong";
    report.hint =
        "build against the CUDA toolkit of the LibTorch's CUDA major (launch/build-gpu.sh "
        "checks this), or make LD_LIBRARY_PATH point at one CUDA only";
  }
  return report;
}

std::string RuntimeReport::describe() const {
  if (cuda_runtime_libraries.empty() && cudnn == "none" && nccl == "none") {
    return "CUDA runtime none (no libcudart loaded: a CPU-only build), cuDNN none, NCCL none";
  }
  std::string runtime = "CUDA runtime " + cuda_runtime;
  if (!cuda_runtime_libraries.empty()) {
    runtime += " (" + fs::path(cuda_runtime_libraries.front()).filename().string();
    for (std::size_t i = 1; i < cuda_runtime_libraries.size(); ++i) {
      runtime += ", " + fs::path(cuda_runtime_libraries[i]).filename().string();
    }
    runtime += ")";
  }
  return runtime + ", driver " + cuda_driver + ", cuDNN " + cudnn + ", NCCL " + nccl;
}

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

std::string host_name() {
  char name[256] = {0};  // HOST_NAME_MAX is 64 on Linux
  if (::gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "unknown-host";
  return name;
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
