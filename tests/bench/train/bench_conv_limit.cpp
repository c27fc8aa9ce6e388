// The machine's own limit for a ResNet9 training step (not a timed test): oneDNN's 3x3
// convolution forward throughput, measured on the eight convolution shapes of ResNet9 at 48x48
// (width W, batch B), each in NCHW and in channels-last, the faster of the two. A training step
// computes each convolution three times (forward, input gradient, weight gradient; the first
// layer's input needs no gradient: twice), so at these rates the convolutions alone would take
//   t_limit = sum over layers of passes x t_forward(layer)
// per step, and B / t_limit images/s is the step's ceiling on this machine at these threads:
// run_levers.sh prints the fraction of it the whole step reaches (BatchNorm, ReLU, pooling, the
// loss and the optimizer are the rest).
//
// Usage: bench_conv_limit THREADS BATCH [WIDTH=1] [REPEATS=5]
// Prints per layer "layer=... gflops_nchw=... gflops_nhwc=..." and the summary line
// "conv_limit_images_per_s=X conv_gflop_per_image=Y conv_gflops=Z".
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "model/resnet9.h"

namespace {

struct Layer {
  const char* name;
  int in, out, side, passes;
};

// Seconds of one forward convolution of `x` by `w` (padding 1): the median of `repeats`, after one
// warm-up call.
double forward_seconds(const torch::Tensor& x, const torch::Tensor& w, int repeats) {
  torch::NoGradGuard no_grad;
  std::vector<double> t;
  for (int i = 0; i <= repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    const auto y = torch::conv2d(x, w, {}, 1, 1);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (i > 0) t.push_back(s);
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_conv_limit THREADS BATCH [WIDTH=1] [REPEATS=5]\n");
    return 2;
  }
  const int threads = std::atoi(argv[1]), batch = std::atoi(argv[2]);
  const double width = argc > 3 ? std::atof(argv[3]) : 1.0;
  const int repeats = argc > 4 ? std::atoi(argv[4]) : 5;
  if (threads < 1 || batch < 1 || width <= 0 || repeats < 1) return 2;
  torch::set_num_threads(threads);
  torch::manual_seed(0);
  const auto w = [&](int c) { return fer::scaled_width(c, width); };
  const std::vector<Layer> layers{
      {"conv1", 1, w(64), 48, 2},          {"conv2", w(64), w(128), 48, 3},
      {"res1.0", w(128), w(128), 24, 3},   {"res1.1", w(128), w(128), 24, 3},
      {"conv3", w(128), w(256), 24, 3},    {"conv4", w(256), w(512), 12, 3},
      {"res2.0", w(512), w(512), 6, 3},    {"res2.1", w(512), w(512), 6, 3}};
  double limit_seconds = 0, flop = 0;
  for (const Layer& l : layers) {
    const auto x = torch::randn({batch, l.in, l.side, l.side});
    const auto k = torch::randn({l.out, l.in, 3, 3});
    const double nchw = forward_seconds(x, k, repeats);
    const double nhwc = forward_seconds(x.contiguous(torch::MemoryFormat::ChannelsLast),
                                        k.contiguous(torch::MemoryFormat::ChannelsLast), repeats);
    const double layer_flop = 2.0 * batch * l.side * l.side * l.out * l.in * 9;
    std::printf("layer=%s in=%d out=%d side=%d gflops_nchw=%.1f gflops_nhwc=%.1f\n", l.name, l.in,
                l.out, l.side, layer_flop / nchw / 1e9, layer_flop / nhwc / 1e9);
    limit_seconds += l.passes * std::min(nchw, nhwc);
    flop += l.passes * layer_flop;
  }
  std::printf("threads=%d batch=%d width=%g conv_limit_images_per_s=%.2f conv_gflop_per_image=%.3f "
              "conv_gflops=%.1f\n",
              threads, batch, width, batch / limit_seconds, flop / batch / 1e9,
              flop / limit_seconds / 1e9);
  return 0;
}
