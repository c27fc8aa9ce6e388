// Train-step benchmark (not a timed test): images/s of one ResNet9 training step on random
// 48x48 grayscale data, the C++ twin of `shared/reference/resnet9_ref.py speed THREADS BATCH
// STEPS`. Both sides run the same oneDNN/OpenBLAS kernels of the same LibTorch, so any gap is the
// cost of the loop around them.
//
// Modes:
//   plain    exactly the reference's loop: zero_grad, forward, cross_entropy, backward,
//            clip_grad_value_(0.1), Adam(lr 1e-3, weight decay 1e-4).step(); one fixed batch.
//   trainer  the per-step extras of src/train/trainer.cpp on top: the batch wrapped with
//            from_blob from std::vectors (as TrainLoader hands it over), lr/beta1 written into
//            the param group, the per-step dropout reseed, loss.item() (a sync point on GPU,
//            free on CPU) and the accuracy count.
// Levers, appended to the mode with '+' (e.g. plain+channels_last+fused), each one a trainer
// setting, so that run_levers.sh can show what each buys:
//   channels_last  model.channels_last: conv weights and the input in NHWC memory format.
//   fused          optim.fused: FusedAdam (flat buffers, src/train/fused_adam.h) instead of
//                  LibTorch's Adam, clip by value on the flat buffers.
//   bf16           train.precision=bf16: forward and loss under autocast (src/train/precision.h).
// "channels_last" alone is plain+channels_last (the former mode name).
// Like fer-dist-train, the process keeps freed memory for reuse (src/common/allocator.h);
// FER_BENCH_DEFAULT_MALLOC=1 runs with glibc's default malloc instead.
// Warm-up: 2 steps (the reference's), then STEPS timed steps. Timed twice: by the wall clock
// (the benchmark's number) and by this process's CPU time, which a machine shared with other jobs
// inflates far less than the wall clock (run.sh times the reference's loop the same way).
//
// Usage: bench_train_step THREADS BATCH STEPS [WIDTH=1] [MODE=plain] [INTEROP=0]
//   INTEROP > 0 also calls torch::set_num_interop_threads (the trainer does not).
// Prints: "mode=... threads=T batch=B width=W images_per_s=X cpu_images_per_s=Y".
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "common/allocator.h"
#include "model/resnet9.h"
#include "train/fused_adam.h"
#include "train/precision.h"

namespace {

constexpr int kSide = 48;           // FER2013 image side, pixels
constexpr int kClasses = 7;         // FER2013 classes
constexpr int kWarmupSteps = 2;     // the reference's warm-up
constexpr double kClipValue = 0.1;  // the recipe's grad_clip_value
constexpr double kLr = 1e-3;        // the reference speed() optimizer
constexpr double kWeightDecay = 1e-4;

int usage() {
  std::fprintf(stderr,
               "usage: bench_train_step THREADS BATCH STEPS [WIDTH=1] "
               "[MODE=plain|trainer[+channels_last][+fused][+bf16]] [INTEROP=0]\n");
  return 2;
}


// The command line: THREADS BATCH STEPS [WIDTH] [MODE] [INTEROP]; MODE is a base loop (plain or
// trainer) with levers after '+'.
struct Args {
  int threads = 0, batch = 0, steps = 0, interop = 0;
  double width = 1.0;
  std::string mode = "plain";
  bool trainer = false, channels_last = false, fused = false, bf16 = false;
};

// False on a malformed command line.
bool parse_args(int argc, char** argv, Args* a) {
  if (argc < 4) return false;
  a->threads = std::atoi(argv[1]);
  a->batch = std::atoi(argv[2]);
  a->steps = std::atoi(argv[3]);
  a->width = argc > 4 ? std::atof(argv[4]) : 1.0;
  a->mode = argc > 5 ? argv[5] : "plain";
  if (a->mode == "channels_last") a->mode = "plain+channels_last";
  a->interop = argc > 6 ? std::atoi(argv[6]) : 0;
  const std::string& mode = a->mode;
  const std::string base = mode.substr(0, mode.find('+'));
  for (std::size_t at = mode.find('+'); at != std::string::npos; at = mode.find('+', at + 1)) {
    const std::string lever = mode.substr(at + 1, mode.find('+', at + 1) - at - 1);
    if (lever == "channels_last") {
      a->channels_last = true;
    } else if (lever == "fused") {
      a->fused = true;
    } else if (lever == "bf16") {
      a->bf16 = true;
    } else {
      return false;
    }
  }
  a->trainer = base == "trainer";
  return a->threads >= 1 && a->batch >= 1 && a->steps >= 1 && a->width > 0 &&
         (base == "plain" || base == "trainer");
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!parse_args(argc, argv, &args)) return usage();
  const int threads = args.threads, batch = args.batch, steps = args.steps;
  const int interop = args.interop;
  const double width = args.width;
  const std::string& mode = args.mode;
  const bool channels_last = args.channels_last, fused = args.fused, bf16 = args.bf16;
  if (interop > 0) torch::set_num_interop_threads(interop);
  // The process is set up like fer-dist-train's (which this step stands for): glibc malloc keeps
  // freed memory for reuse. FER_BENCH_DEFAULT_MALLOC=1 leaves glibc's defaults (the reference's).
  const char* default_malloc = std::getenv("FER_BENCH_DEFAULT_MALLOC");
  if (default_malloc == nullptr || std::string(default_malloc) != "1") {
    std::fprintf(stderr, "%s\n", fer::keep_freed_memory_for_reuse().c_str());
  }
  torch::set_num_threads(threads);
  torch::manual_seed(0);

  fer::ResNet9Options options;
  options.width = width;
  options.channels_last = channels_last;  // NHWC weights; forward converts the input
  fer::ResNet9 model(options);
  torch::optim::Adam optimizer(model->parameters(),
                               torch::optim::AdamOptions(kLr).weight_decay(kWeightDecay));
  std::unique_ptr<fer::FusedAdam> fused_adam;
  if (fused) {
    fer::FusedAdamOptions o;
    o.lr = kLr;
    o.weight_decay = kWeightDecay;
    fused_adam = std::make_unique<fer::FusedAdam>(model->parameters(), o);
  }
  const fer::Precision precision = bf16 ? fer::Precision::kBf16 : fer::Precision::kFp32;
  torch::Tensor x = torch::randn({batch, 1, kSide, kSide});
  const torch::Tensor y = torch::randint(0, kClasses, {batch}, torch::kInt64);
  // trainer mode: the loader hands over a std::vector per batch, wrapped without a copy.
  std::vector<float> pixels(x.data_ptr<float>(), x.data_ptr<float>() + x.numel());
  std::vector<std::int64_t> labels(y.data_ptr<std::int64_t>(),
                                   y.data_ptr<std::int64_t>() + y.numel());
  const bool trainer = args.trainer;
  if (channels_last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);

  std::int64_t correct = 0;
  double loss_sum = 0.0;
  auto start = std::chrono::steady_clock::now();
  std::clock_t cpu_start = std::clock();  // CPU time of all threads of this process
  for (int i = 0; i < steps + kWarmupSteps; ++i) {
    if (i == kWarmupSteps) {
      start = std::chrono::steady_clock::now();
      cpu_start = std::clock();
    }
    torch::Tensor input = x, target = y;
    if (trainer) {
      for (auto& group : optimizer.param_groups()) {
        auto& o = static_cast<torch::optim::AdamOptions&>(group.options());
        o.lr(kLr);
        o.betas(std::make_tuple(0.9, std::get<1>(o.betas())));
      }
      torch::manual_seed(static_cast<std::uint64_t>(i));
      input = torch::from_blob(pixels.data(), {batch, 1, kSide, kSide}, torch::kFloat32);
      target = torch::from_blob(labels.data(), {batch}, torch::kInt64);
    }
    fused ? fused_adam->zero_grad() : optimizer.zero_grad();
    torch::Tensor logits, loss;
    {
      const fer::AutocastScope autocast(precision, torch::kCPU);
      logits = model->forward(input);
      loss = torch::nn::functional::cross_entropy(logits, target);
    }
    if (trainer) loss_sum += loss.item<double>();
    loss.backward();
    if (fused) {
      fused_adam->clip_grad_value(kClipValue);
      fused_adam->step();
    } else {
      torch::nn::utils::clip_grad_value_(model->parameters(), kClipValue);
      optimizer.step();
    }
    if (trainer) correct += logits.argmax(1).eq(target).sum().item<std::int64_t>();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double cpu_seconds = static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC;
  const double images = static_cast<double>(steps) * batch;
  std::printf("mode=%s threads=%d batch=%d width=%g images_per_s=%.2f cpu_images_per_s=%.2f\n",
              mode.c_str(), threads, batch, width, images / seconds, images / cpu_seconds);
  if (trainer) {
    const double seen = static_cast<double>(steps + kWarmupSteps) * batch;
    std::fprintf(stderr, "trainer extras: mean loss %.4f, accuracy %.4f\n",
                 loss_sum / (steps + kWarmupSteps), correct / seen);
  }
  return 0;
}
