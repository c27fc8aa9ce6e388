// Optimizer-step benchmark (not a timed test): ms per optimizer step of ResNet9 at one thread
// count, LibTorch's torch::optim::Adam (the trainer's today) against fer::FusedAdam (one flat
// buffer, 9 ops per step), side by side in one process on the same random gradients.
//
// Two rows, each timed per call:
//   step       optimizer.step() alone (Adam, L2 weight decay 1e-4 as in the recipe)
//   clip+step  clip_grad_value_(0.1) then step(): the trainer's optimizer phase
// The two sides alternate in rounds of ROUNDS_STEPS steps (LibTorch first in odd rounds, fused
// first in even ones), so load from other jobs on a shared machine hits both alike; the figure is
// the median over all timed calls (robust to the odd preempted call), the mean is printed too.
// Like fer-dist-train, the process keeps freed memory for reuse (src/common/allocator.h), which
// spares LibTorch's per-parameter temporaries fresh mappings.
//
// Usage: bench_optimizer_step THREADS [STEPS=40] [WIDTH=1]
// Data check: both sides start from the same weights and gradients and make the same calls, so
// their weights must end bit-identical; otherwise the run fails (exit 1).
// Prints one line per row:
//   "row=step threads=T width=W params=N libtorch_ms=X fused_ms=Y speedup=X/Y ... check=identical"
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "common/allocator.h"
#include "model/resnet9.h"
#include "train/fused_adam.h"

namespace {

constexpr double kLr = 1e-3;
constexpr double kWeightDecay = 1e-4;  // the recipe's
constexpr double kClipValue = 0.1;     // the recipe's grad_clip_value
constexpr int kWarmupSteps = 3;        // state allocation and first-touch page faults
constexpr int kRounds = 4;             // alternations of the two sides

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double mean(const std::vector<double>& v) {
  return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

double ms_of(const std::function<void()>& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

// The same random gradients of the recipe's magnitude for both models (FusedAdam's are views of
// its flat buffer already, so they are written in place).
void fill_gradients(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const torch::Tensor g = torch::randn_like(a[i]) * 0.05;
    for (const auto& p : {a[i], b[i]}) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      p.grad().copy_(g);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_optimizer_step THREADS [STEPS=40] [WIDTH=1]\n");
    return 2;
  }
  const int threads = std::atoi(argv[1]);
  const int steps = argc > 2 ? std::atoi(argv[2]) : 40;
  const double width = argc > 3 ? std::atof(argv[3]) : 1.0;
  if (threads < 1 || steps < kRounds || width <= 0) {
    std::fprintf(stderr, "usage: bench_optimizer_step THREADS [STEPS=40] [WIDTH=1]\n");
    return 2;
  }
  std::fprintf(stderr, "%s\n", fer::keep_freed_memory_for_reuse().c_str());
  torch::set_num_threads(threads);
  torch::manual_seed(0);

  fer::ResNet9Options options;
  options.width = width;
  fer::ResNet9 lib_model(options), fused_model(options);
  {
    torch::NoGradGuard no_grad;  // same weights: the data check below compares the two sides
    const auto from = lib_model->parameters(), to = fused_model->parameters();
    for (std::size_t i = 0; i < to.size(); ++i) to[i].copy_(from[i]);
  }
  std::int64_t numel = 0;
  for (const auto& p : lib_model->parameters()) numel += p.numel();
  torch::optim::Adam lib(lib_model->parameters(),
                         torch::optim::AdamOptions(kLr).weight_decay(kWeightDecay));
  fer::FusedAdamOptions fused_options;
  fused_options.lr = kLr;
  fused_options.weight_decay = kWeightDecay;
  fer::FusedAdam fused(fused_model->parameters(), fused_options);
  fill_gradients(lib_model->parameters(), fused_model->parameters());

  const auto lib_step = [&] { lib.step(); };
  const auto fused_step = [&] { fused.step(); };
  const auto lib_clip_step = [&] {
    torch::nn::utils::clip_grad_value_(lib_model->parameters(), kClipValue);
    lib.step();
  };
  const auto fused_clip_step = [&] {
    fused.clip_grad_value(kClipValue);
    fused.step();
  };
  for (int i = 0; i < kWarmupSteps; ++i) {
    lib_clip_step();
    fused_clip_step();
  }

  struct Row {
    const char* name;
    std::function<void()> lib, fused;
    std::vector<double> lib_ms, fused_ms;
  };
  std::vector<Row> rows{{"step", lib_step, fused_step, {}, {}},
                        {"clip+step", lib_clip_step, fused_clip_step, {}, {}}};
  const int per_round = steps / kRounds;
  for (int round = 0; round < kRounds; ++round) {
    for (Row& row : rows) {
      const auto run_lib = [&] {
        for (int i = 0; i < per_round; ++i) row.lib_ms.push_back(ms_of(row.lib));
      };
      const auto run_fused = [&] {
        for (int i = 0; i < per_round; ++i) row.fused_ms.push_back(ms_of(row.fused));
      };
      if (round % 2 == 0) {
        run_lib();
        run_fused();
      } else {
        run_fused();
        run_lib();
      }
    }
  }
  // Data check: both sides made the same calls on the same numbers, so FusedAdam's weights must
  // equal LibTorch's bit for bit (as tests/unit/train_fused_adam_test.cpp requires).
  bool identical = true;
  const auto lib_params = lib_model->parameters(), fused_params = fused_model->parameters();
  for (std::size_t i = 0; i < lib_params.size(); ++i) {
    identical = identical && torch::equal(lib_params[i], fused_params[i]);
  }
  for (const Row& row : rows) {
    const double lib_ms = median(row.lib_ms), fused_ms = median(row.fused_ms);
    std::printf(
        "row=%s threads=%d width=%g params=%lld libtorch_ms=%.3f fused_ms=%.3f speedup=%.3f "
        "libtorch_mean_ms=%.3f fused_mean_ms=%.3f check=%s\n",
        row.name, threads, width, static_cast<long long>(numel), lib_ms, fused_ms,
        lib_ms / fused_ms, mean(row.lib_ms), mean(row.fused_ms),
        identical ? "identical" : "DIFFERENT");
  }
  if (!identical) {
    std::fprintf(stderr, "bench_optimizer_step: FusedAdam's weights differ from LibTorch's\n");
    return 1;
  }
  return 0;
}
