// Device binding (DESIGN.md "Device binding"): rank -> cuda:(local_rank % visible devices), pinned
// down as a pure function, and the device strings that resolve on a machine without CUDA.
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

}  // namespace
}  // namespace fer
