// Device binding (DESIGN.md "Device binding"): rank -> cuda:(local_rank % visible devices), pinned
// down as a pure function, and the device strings that resolve on a machine without CUDA. The
// start-up runtime report, from fake lists of loaded libraries.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/errors.h"
#include "train/device.h"

namespace fer {
namespace {

TEST(BindDeviceIndex, RanksWrapAroundTheVisibleDevices) {
  EXPECT_EQ(bind_device_index(0, 4), 0);
  EXPECT_EQ(bind_device_index(3, 4), 3);
  EXPECT_EQ(bind_device_index(4, 4), 0);
  EXPECT_EQ(bind_device_index(7, 4), 3);
  EXPECT_EQ(bind_device_index(5, 2), 1);
}

TEST(BindDeviceIndex, EveryRankUsesTheOnlyVisibleDevice) {
  for (int local_rank = 0; local_rank < 8; ++local_rank) {
    EXPECT_EQ(bind_device_index(local_rank, 1), 0);
  }
}

TEST(BindDeviceIndex, NoDeviceOrANegativeRankIsAConfigError) {
  EXPECT_THROW(bind_device_index(0, 0), ConfigError);
  EXPECT_THROW(bind_device_index(-1, 2), ConfigError);
}

TEST(ResolveDevice, CpuIsCpuForEveryRank) {
  EXPECT_EQ(resolve_device("cpu"), torch::Device(torch::kCPU));
  EXPECT_EQ(resolve_device("cpu", 3), torch::Device(torch::kCPU));
  EXPECT_EQ(resolve_device_name("cpu", 5), "cpu");
}

TEST(ResolveDevice, AutoBindsByLocalRankOrFallsBackToCpu) {
  if (torch::cuda::is_available()) {
    const int count = static_cast<int>(torch::cuda::device_count());
    for (int local_rank = 0; local_rank < 3; ++local_rank) {
      EXPECT_EQ(resolve_device("auto", local_rank),
                torch::Device(torch::kCUDA, bind_device_index(local_rank, count)));
    }
  } else {
    EXPECT_EQ(resolve_device("auto"), torch::Device(torch::kCPU));
    EXPECT_EQ(resolve_device_name("auto", 1), "cpu");
  }
}

TEST(ResolveDevice, CudaWithoutCudaIsAConfigError) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "this machine has CUDA";
  EXPECT_THROW(resolve_device("cuda"), ConfigError);
  EXPECT_THROW(resolve_device("cuda:0", 1), ConfigError);
}

TEST(ResolveDevice, AnExplicitIndexBeyondTheVisibleDevicesIsAConfigError) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs CUDA";
  const int count = static_cast<int>(torch::cuda::device_count());
  EXPECT_EQ(resolve_device("cuda:0", 5), torch::Device(torch::kCUDA, 0));
  EXPECT_THROW(resolve_device("cuda:" + std::to_string(count)), ConfigError);
}

TEST(ResolveDevice, OtherSpellingsAreConfigErrors) {
  for (const char* bad : {"", "gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda:1a", "cudax"}) {
    EXPECT_THROW(resolve_device(bad), ConfigError) << "'" << bad << "'";
  }
}

TEST(RuntimeReport, TwoCudaRuntimeMajorsAreAProblemNamingBoth) {
  const RuntimeReport r = runtime_report(
      {"/usr/lib/libc.so.6",
       "/venv/lib/python3.12/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12",
       "/venv/torch/lib/libtorch_cuda.so", "/usr/local/cuda-13.0/lib64/libcudart.so.13.0.88"});
  ASSERT_FALSE(r.problem.empty());
  EXPECT_NE(r.problem.find("two CUDA runtimes"), std::string::npos) << r.problem;
  EXPECT_NE(r.problem.find("CUDA 12 (/venv/lib/python3.12/site-packages/nvidia/cuda_runtime/lib/"
                           "libcudart.so.12)"),
            std::string::npos)
      << r.problem;
  EXPECT_NE(r.problem.find("CUDA 13 (/usr/local/cuda-13.0/lib64/libcudart.so.13.0.88)"),
            std::string::npos)
      << r.problem;
  EXPECT_FALSE(r.hint.empty());
  EXPECT_EQ(r.cuda_runtime_libraries.size(), 2u);
}

TEST(RuntimeReport, OneRuntimeIsFineAndVersionsComeFromTheFileNames) {
  // Not loaded in this process (fake paths): the versions are the file names' suffixes.
  const RuntimeReport r =
      runtime_report({"/opt/cuda/lib64/libcudart.so.12.4.127", "/opt/x/libcudnn.so.9",
                      "/opt/x/libcudnn_graph.so.9", "/opt/x/libnccl.so.2", "/opt/x/libnccl-net.so",
                      "/opt/y/libcudart.so.12"});
  EXPECT_TRUE(r.problem.empty()) << r.problem;
  EXPECT_EQ(r.cuda_runtime, "12.4.127");
  EXPECT_EQ(r.cuda_driver, "none");
  EXPECT_EQ(r.cudnn, "9");
  EXPECT_EQ(r.nccl, "2");
  EXPECT_EQ(r.cuda_runtime_libraries.size(), 2u);  // the same major twice is not two runtimes
  EXPECT_NE(r.describe().find("CUDA runtime 12.4.127 (libcudart.so.12.4.127, libcudart.so.12)"),
            std::string::npos)
      << r.describe();
}

TEST(RuntimeReport, TheLibtorchArchivesHashedNamesCountToo) {
  const RuntimeReport r = runtime_report({"/opt/libtorch/lib/libcudart-9335f6a2.so.12",
                                          "/opt/libtorch/lib/libcudnn-a1b2.so.8",
                                          "/opt/libtorch/lib/libcudart-xyz.so.13",  // not hex
                                          "/usr/local/cuda/lib64/libcudart.so.13"});
  EXPECT_EQ(r.cuda_runtime, "12");
  EXPECT_EQ(r.cudnn, "8");
  ASSERT_EQ(r.cuda_runtime_libraries.size(), 2u);
  EXPECT_NE(r.problem.find("libcudart-9335f6a2.so.12"), std::string::npos) << r.problem;
  EXPECT_NE(r.problem.find("/usr/local/cuda/lib64/libcudart.so.13"), std::string::npos)
      << r.problem;
}

TEST(RuntimeReport, NoCudaLibrariesMeansACpuOnlyProcess) {
  const RuntimeReport r =
      runtime_report({"/usr/lib/x86_64-linux-gnu/libtorch_cpu.so.1.13", "libcudart.so"});
  EXPECT_TRUE(r.problem.empty());
  EXPECT_EQ(r.cuda_runtime, "none");
  EXPECT_EQ(r.cudnn, "none");
  EXPECT_EQ(r.nccl, "none");
  EXPECT_NE(r.describe().find("CPU-only"), std::string::npos) << r.describe();
}

TEST(RuntimeReport, ThisProcessHasAtMostOneCudaRuntime) {
  const RuntimeReport r = runtime_report(loaded_libraries());
  EXPECT_TRUE(r.problem.empty()) << r.problem;
  EXPECT_LE(r.cuda_runtime_libraries.size(), 1u);
}

}  // namespace
}  // namespace fer
