// train.precision and the CUDA math settings (src/train/precision.h): the CPU bf16 check reads
// /proc/cpuinfo's flags, autocast switches convolutions to bf16 only inside its scope, and the
// cuDNN/TF32 switches reach ATen's global context.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <iterator>

#include <ATen/autocast_mode.h>
#include <ATen/Context.h>

#include "common/errors.h"
#include "train/precision.h"

namespace fer {
namespace {

TEST(Precision, ParsesItsThreeNamesAndRejectsOthersNamingTheKey) {
  EXPECT_EQ(parse_precision("fp32"), Precision::kFp32);
  EXPECT_EQ(parse_precision("bf16"), Precision::kBf16);
  EXPECT_EQ(parse_precision("fp64"), Precision::kFp64);
  EXPECT_EQ(weight_dtype(Precision::kFp64), torch::kFloat64);
  EXPECT_EQ(weight_dtype(Precision::kBf16), torch::kFloat32);  // autocast keeps fp32 weights
  EXPECT_STREQ(to_string(Precision::kBf16), "bf16");
  try {
    parse_precision("fp16");
    FAIL() << "fp16 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("train.precision"), std::string::npos) << e.what();
  }
}

TEST(Precision, NativeBf16IsReadFromTheCpuFlagsOnly) {
  const std::string x86 = "processor\t: 0\nmodel name\t: Some bf16 CPU\n"
                          "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512vl\n";
  EXPECT_TRUE(cpuinfo_has_native_bf16(x86));
  EXPECT_TRUE(cpuinfo_has_native_bf16("flags : sse4_2 amx_bf16 amx_tile\n"));
  EXPECT_TRUE(cpuinfo_has_native_bf16("Features\t: fp asimd bf16 i8mm\n"));
  // The model name mentions bf16, the flags do not; prefixes of other flags do not count.
  EXPECT_FALSE(cpuinfo_has_native_bf16("model name\t: bf16 avx512_bf16\n"
                                       "flags\t\t: fpu avx2 avx512f avx512_bf16x\n"));
  EXPECT_FALSE(cpuinfo_has_native_bf16(""));
}

TEST(Precision, Bf16OnTheCpuFollowsItsFlags) {
  std::ifstream in("/proc/cpuinfo");
  const std::string cpuinfo((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NO_THROW(check_precision(Precision::kFp32, torch::kCPU));
  if (cpuinfo_has_native_bf16(cpuinfo)) {
    EXPECT_NO_THROW(check_precision(Precision::kBf16, torch::kCPU));
  } else {
    EXPECT_THROW(check_precision(Precision::kBf16, torch::kCPU), ConfigError);
  }
}

TEST(Precision, AutocastRunsConvolutionsInBf16InsideItsScopeOnly) {
  const auto x = torch::randn({2, 3, 8, 8}), w = torch::randn({4, 3, 3, 3});
  ASSERT_FALSE(at::autocast::is_cpu_enabled());
  {
    const AutocastScope fp32(Precision::kFp32, torch::kCPU);
    EXPECT_FALSE(at::autocast::is_cpu_enabled());
    EXPECT_EQ(torch::conv2d(x, w).scalar_type(), torch::kFloat);
  }
  {
    const AutocastScope bf16(Precision::kBf16, torch::kCPU);
    EXPECT_TRUE(at::autocast::is_cpu_enabled());
    const auto y = torch::conv2d(x, w);
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    // bf16 keeps ~8 bits: the result is the fp32 convolution to ~1e-2 relative.
    const auto ref = torch::conv2d(x.to(torch::kBFloat16).to(torch::kFloat),
                                   w.to(torch::kBFloat16).to(torch::kFloat));
    EXPECT_LT((y.to(torch::kFloat) - ref).abs().max().item<double>(),
              2e-2 * ref.abs().max().item<double>());
    // The loss is computed in fp32 (autocast's fp32 list).
    const auto loss = torch::nn::functional::cross_entropy(y.flatten(1), torch::zeros({2}, torch::kLong));
    EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  }
  EXPECT_FALSE(at::autocast::is_cpu_enabled());
  EXPECT_EQ(torch::conv2d(x, w).scalar_type(), torch::kFloat);
}

TEST(Precision, CudaMathSettingsReachTheGlobalContext) {
  auto& context = at::globalContext();
  const bool benchmark = context.benchmarkCuDNN(), tf32_blas = context.allowTF32CuBLAS(),
             tf32_dnn = context.allowTF32CuDNN();
  const std::string line = apply_cuda_math_settings(true, true);
  EXPECT_TRUE(context.benchmarkCuDNN());
  EXPECT_TRUE(context.allowTF32CuBLAS());
  EXPECT_TRUE(context.allowTF32CuDNN());
  EXPECT_EQ(line, "cuDNN benchmark on, TF32 on");
  apply_cuda_math_settings(false, false);
  EXPECT_FALSE(context.benchmarkCuDNN());
  EXPECT_FALSE(context.allowTF32CuBLAS());
  EXPECT_FALSE(context.allowTF32CuDNN());
  context.setBenchmarkCuDNN(benchmark);
  context.setAllowTF32CuBLAS(tf32_blas);
  context.setAllowTF32CuDNN(tf32_dnn);
}

}  // namespace
}  // namespace fer
