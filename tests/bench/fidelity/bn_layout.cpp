// bn_layout: LibTorch's CPU batch norm statistics in NCHW against NHWC (channels_last), against
// float64, for a channel whose mean is 0, 3 and 33 standard deviations from 0 (post-convolution
// activations are often far from centred), at batch 24 and 12 of [16, 32, 32] maps.
// Why (issue 15): with model.channels_last the losses of N ranks x B and 1 x N*B are ~2e-6 apart
// at the first step; the convolutions are not the cause (NHWC and NCHW give the same values,
// independent of the batch size), the statistics are: LibTorch 1.13 gathers NHWC statistics
// with ~100x the NCHW error, and the error depends on the batch size.
// Usage: bn_layout   (one thread; prints one line per offset, layout and batch size)
#include <torch/torch.h>

#include <cstdio>
#include <tuple>

int main() {
  at::set_num_threads(1);
  torch::manual_seed(1);
  for (double offset : {0.0, 1.0, 10.0}) {
    const auto x = torch::randn({24, 16, 32, 32}) * 0.3 + offset;
    const auto x64 = x.to(torch::kDouble);
    for (bool nhwc : {false, true}) {
      const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
      for (int n : {24, 12}) {
        const auto xs = x.narrow(0, 0, n).contiguous(format);
        const auto r64 = x64.narrow(0, 0, n);
        const auto mean64 = r64.mean({0, 2, 3}), var64 = r64.var({0, 2, 3}, false);
        torch::Tensor mean, var;
        std::tie(mean, var) = at::batch_norm_update_stats(xs, {}, {}, 0.0);
        torch::nn::BatchNorm2d bn(16);
        bn->train();
        const auto y = bn->forward(xs).to(torch::kDouble);
        const auto y64 =
            (r64 - mean64.view({1, -1, 1, 1})) / (var64.view({1, -1, 1, 1}) + 1e-5).sqrt();
        std::printf("mean %4.1f std 0.3, %s, batch %2d: mean error / std %.1e, variance relative "
                    "error %.1e, BatchNorm2d output relative error %.1e\n",
                    offset, nhwc ? "NHWC" : "NCHW", n,
                    ((mean.to(torch::kDouble) - mean64).abs() / var64.sqrt()).max().item<double>(),
                    ((var.to(torch::kDouble) - var64).abs() / var64).max().item<double>(),
                    ((y - y64).norm() / y64.norm()).item<double>());
      }
    }
  }
  return 0;
}
