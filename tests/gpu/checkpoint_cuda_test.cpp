// Checkpoints across devices (src/train/checkpoint.h; DESIGN.md "Checkpoints and outputs"): a
// ResNet9 and its optimizer trained a few steps on cuda:0 are saved, then loaded the way
// fer-dist-train resumes (load_checkpoint_into the TrainOptimizer's checkpoint_state(), then
// restore_checkpoint_state()) into a model and optimizer on cuda:M, M the last visible GPU, and
// into ones on the CPU; and with load_checkpoint_model (fer-predict's path). Every parameter,
// buffer and optimizer state tensor must come back bit for bit and live on the device of the
// model it was loaded into; a load allocates nothing on a GPU it was not asked to use (with a
// CUDA-enabled LibTorch's c10/cuda: the caching allocator's peak, per GPU, over the load). Both
// optimizers the trainer drives: FusedAdam (optim.fused, the default) with SyncBatchNorm2d
// layers, and LibTorch's AdamW with BatchNorm2d ones. Skipped without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "model/resnet9.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/train_config.h"
#ifdef FER_TORCH_CUDA
// Only with a CUDA-enabled LibTorch (tests/gpu/CMakeLists.txt): Debian's CPU-only LibTorch ships
// these headers incomplete.
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace fer {
namespace {

using testing::TempFolder;

// Every tensor of a model and its optimizer, as CPU copies with the device each lived on.
struct Snapshot {
  std::vector<std::string> names;
  std::vector<torch::Tensor> values;
  std::vector<torch::Device> devices;
  std::vector<std::int64_t> steps;  // the optimizer's per-parameter step counts
};

void add(Snapshot& s, const std::string& name, const torch::Tensor& t) {
  s.names.push_back(name);
  s.values.push_back(t.detach().to(torch::kCPU).clone());
  s.devices.push_back(t.device());
}

// The optimizer's state of parameter `p`, whatever the key type of LibTorch's state map (the
// TensorImpl address as a string in 1.13).
template <typename Map>
const torch::optim::OptimizerParamState* find_state(const Map& state, const torch::Tensor& p) {
  using Key = typename Map::key_type;
  Key key{};
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;
    os << p.unsafeGetTensorImpl();
    key = os.str();
  } else {
    key = static_cast<Key>(p.unsafeGetTensorImpl());
  }
  const auto it = state.find(key);
  return it == state.end() ? nullptr : it->second.get();
}

template <typename State>
void add_optimizer(Snapshot& s, torch::optim::Optimizer& optimizer) {
  const std::vector<torch::Tensor> params = optimizer.param_groups().at(0).params();
  for (std::size_t i = 0; i < params.size(); ++i) {
    const std::string name = "optimizer state of parameter " + std::to_string(i);
    const auto* state = find_state(optimizer.state(), params[i]);
    if (state == nullptr) {
      s.steps.push_back(-1);  // no state: compared like a step count
      continue;
    }
    const auto& adam = static_cast<const State&>(*state);
    s.steps.push_back(adam.step());
    add(s, name + " exp_avg", adam.exp_avg());
    add(s, name + " exp_avg_sq", adam.exp_avg_sq());
    if (adam.max_exp_avg_sq().defined()) add(s, name + " max_exp_avg_sq", adam.max_exp_avg_sq());
  }
}

Snapshot snapshot(ResNet9& model, torch::optim::Optimizer* optimizer) {
  Snapshot s;
  for (const auto& p : model->named_parameters()) add(s, "parameter " + p.key(), p.value());
  for (const auto& b : model->named_buffers()) add(s, "buffer " + b.key(), b.value());
  if (optimizer == nullptr) return s;
  if (dynamic_cast<torch::optim::AdamW*>(optimizer) != nullptr) {
    add_optimizer<torch::optim::AdamWParamState>(s, *optimizer);
  } else {
    add_optimizer<torch::optim::AdamParamState>(s, *optimizer);
  }
  return s;
}

// `loaded` holds `saved`'s tensors bit for bit, each on `device`.
void expect_same_on(const Snapshot& saved, const Snapshot& loaded, const torch::Device& device,
                    const std::string& where) {
  ASSERT_EQ(loaded.names, saved.names) << where;
  EXPECT_EQ(loaded.steps, saved.steps) << where << ": optimizer step counts";
  for (std::size_t i = 0; i < saved.values.size(); ++i) {
    EXPECT_TRUE(torch::equal(loaded.values[i], saved.values[i])) << where << ": " << saved.names[i];
    EXPECT_EQ(loaded.devices[i], device) << where << ": " << saved.names[i];
  }
}

// Bytes torch's caching allocator holds for tensors on each GPU; empty without c10/cuda.
std::vector<std::int64_t> allocated_per_gpu() {
  std::vector<std::int64_t> bytes;
#ifdef FER_TORCH_CUDA
  for (int d = 0; d < static_cast<int>(torch::cuda::device_count()); ++d) {
    bytes.push_back(c10::cuda::CUDACachingAllocator::getDeviceStats(d).allocated_bytes[0].current);
    c10::cuda::CUDACachingAllocator::resetPeakStats(d);  // peak := current
  }
#endif
  return bytes;
}

// Each GPU's peak since allocated_per_gpu(); empty without c10/cuda.
std::vector<std::int64_t> peak_per_gpu() {
  std::vector<std::int64_t> bytes;
#ifdef FER_TORCH_CUDA
  for (int d = 0; d < static_cast<int>(torch::cuda::device_count()); ++d) {
    bytes.push_back(c10::cuda::CUDACachingAllocator::getDeviceStats(d).allocated_bytes[0].peak);
  }
#endif
  return bytes;
}

// No GPU but `allowed` (-1: none) held more tensor memory at any point than before.
void expect_no_allocation_outside(const std::vector<std::int64_t>& before,
                                  const std::vector<std::int64_t>& peak, int allowed,
                                  const std::string& where) {
  ASSERT_EQ(peak.size(), before.size());
  for (std::size_t d = 0; d < before.size(); ++d) {
    if (static_cast<int>(d) == allowed) continue;
    EXPECT_EQ(peak[d], before[d]) << where << " allocated " << peak[d] - before[d]
                                  << " bytes on cuda:" << d << ", which it was not asked to use";
  }
}

struct OptimizerCase {
  const char* name;
  bool fused;
  const char* optimizer;  // optim.name
  bool sync_bn;
};

// Trains a ResNet9 on `source` for three steps with the optimizer of `c`, saves it to `path`, and
// loads it onto `target`, onto the CPU and with load_checkpoint_model, checking each load.
void round_trip(const OptimizerCase& c, const torch::Device& source, const torch::Device& target,
                const std::filesystem::path& path) {
  SCOPED_TRACE(c.name);
  OptimConfig optim;
  optim.name = c.optimizer;
  optim.fused = c.fused;
  ResNet9Options options;
  options.width = 0.25;
  options.sync_bn = c.sync_bn;
  constexpr double kLr = 1e-3;

  // Three steps on the source device: moments, step counts and running statistics non-trivial.
  torch::manual_seed(11);
  ResNet9 model(options);
  model->to(source);
  TrainOptimizer optimizer(optim, kLr, model);
  model->train();
  for (int step = 0; step < 3; ++step) {
    const torch::Tensor x = torch::randn({8, 1, 24, 24}).to(source);
    const torch::Tensor labels = torch::arange(8, torch::kLong).remainder(7).to(source);
    for (auto p : model->parameters()) p.mutable_grad().reset();
    torch::nn::functional::cross_entropy(model->forward(x), labels).backward();
    optimizer.step();
  }
  CheckpointMeta meta;
  meta.step = 3;
  meta.classes = {"a", "b", "c", "d", "e", "f", "g"};
  meta.mean = {0.5};
  meta.std = {0.25};
  meta.height = meta.width = 24;
  meta.channels = 1;
  meta.model = options;
  meta.optimizer = c.optimizer;
  save_checkpoint(path, model, &optimizer.checkpoint_state(), meta);
  const Snapshot saved = snapshot(model, &optimizer.checkpoint_state());
  for (std::size_t i = 0; i < saved.devices.size(); ++i) {
    ASSERT_EQ(saved.devices[i], source) << saved.names[i] << " (before saving)";
  }
  ASSERT_FALSE(saved.steps.empty());
  for (std::int64_t steps : saved.steps) ASSERT_EQ(steps, 3) << "the optimizer state is incomplete";

  // Resume on `target`, as fer-dist-train does on a rank bound to it.
  {
    ResNet9 resumed(options);
    resumed->to(target);
    TrainOptimizer resumed_optimizer(optim, kLr, resumed);
    const auto before = allocated_per_gpu();
    load_checkpoint_into(path, resumed, &resumed_optimizer.checkpoint_state(), nullptr);
    resumed_optimizer.restore_checkpoint_state();
    expect_no_allocation_outside(before, peak_per_gpu(), target.is_cuda() ? target.index() : -1,
                                 "loading onto " + target.str());
    expect_same_on(saved, snapshot(resumed, &resumed_optimizer.checkpoint_state()), target,
                   "loaded onto " + target.str());
  }
  // Resume on the CPU.
  {
    ResNet9 resumed(options);
    TrainOptimizer resumed_optimizer(optim, kLr, resumed);
    const auto before = allocated_per_gpu();
    load_checkpoint_into(path, resumed, &resumed_optimizer.checkpoint_state(), nullptr);
    resumed_optimizer.restore_checkpoint_state();
    expect_no_allocation_outside(before, peak_per_gpu(), -1, "loading onto the CPU");
    expect_same_on(saved, snapshot(resumed, &resumed_optimizer.checkpoint_state()),
                   torch::Device(torch::kCPU), "loaded onto the CPU");
  }
  // fer-predict's path: the model the checkpoint describes, on the CPU.
  {
    const auto before = allocated_per_gpu();
    ResNet9 predicted = load_checkpoint_model(path, nullptr);
    expect_no_allocation_outside(before, peak_per_gpu(), -1, "load_checkpoint_model");
    Snapshot model_only = saved;
    model_only.steps.clear();
    const std::size_t model_tensors = snapshot(model, nullptr).names.size();
    model_only.names.resize(model_tensors);
    model_only.values.resize(model_tensors);
    model_only.devices.erase(model_only.devices.begin() + model_tensors, model_only.devices.end());
    expect_same_on(model_only, snapshot(predicted, nullptr), torch::Device(torch::kCPU),
                   "load_checkpoint_model");
  }
}

const OptimizerCase kCases[] = {{"FusedAdam (adam), SyncBatchNorm2d", true, "adam", true},
                                {"LibTorch AdamW, BatchNorm2d", false, "adamw", false}};

TEST(CheckpointCuda, SavedOnOneGpuLoadsOnTheLastGpuAndOnTheCpuBitForBitOnTheirDevices) {
  if (!torch::cuda::is_available() || torch::cuda::device_count() < 1) {
    GTEST_SKIP() << "no GPU (or a CPU-only LibTorch)";
  }
  const int gpus = static_cast<int>(torch::cuda::device_count());
#ifndef FER_TORCH_CUDA
  std::printf("note: no c10/cuda (FER_TORCH_CUDA): allocations per GPU are not checked\n");
#endif
  TempFolder tmp("checkpoint_cuda");
  for (const OptimizerCase& c : kCases) {
    round_trip(c, torch::Device(torch::kCUDA, 0),
               torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(gpus - 1)),
               tmp / (std::string(c.optimizer) + ".pt"));
  }
}

// The same round trip on the CPU alone, in every CI run: the GPU test's snapshots and comparisons
// (optimizer state found for every parameter, names and bits) are checked where they can run.
TEST(CheckpointDevicesOnCpu, TheRoundTripOfTheGpuTestHoldsOnTheCpu) {
  TempFolder tmp("checkpoint_devices_cpu");
  for (const OptimizerCase& c : kCases) {
    round_trip(c, torch::kCPU, torch::kCPU, tmp / (std::string(c.optimizer) + ".pt"));
  }
}

}  // namespace
}  // namespace fer
