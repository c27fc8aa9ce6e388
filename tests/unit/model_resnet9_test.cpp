// ResNet9 architecture: parameter count pinned to the PyTorch reference, shapes, width scaling.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/resnet9.h"

namespace fer {
namespace {

std::int64_t parameter_count(torch::nn::Module& m) {
  std::int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

TEST(ResNet9, HasTheReferenceParameterCountAtWidthOne) {
  // python3 shared/reference/resnet9_ref.py params -> 6572679 (1 channel, 7 classes).
  ResNet9 model(ResNet9Options{});
  EXPECT_EQ(parameter_count(*model), 6572679);
}

TEST(ResNet9, MapsABatchToLogitsPerClassForAnyWidthAndChannels) {
  torch::manual_seed(0);
  ResNet9Options o;
  o.in_channels = 3;
  o.num_classes = 5;
  o.width = 0.25;
  ResNet9 model(o);
  model->eval();
  const auto out = model->forward(torch::randn({2, 3, 48, 48}));
  EXPECT_EQ(out.sizes(), (std::vector<std::int64_t>{2, 5}));
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
  EXPECT_EQ(scaled_width(64, 0.25), 16);
  EXPECT_EQ(scaled_width(64, 0.001), 1);
  EXPECT_LT(parameter_count(*model), 6572679 / 10);
}

// model.channels_last: the convolution weights are NHWC, they stay so through Module::to, the
// activations follow, and the logits and gradients are the NCHW model's up to summation order.
TEST(ResNet9, ChannelsLastKeepsTheLayoutAndComputesTheSameFunction) {
  ResNet9Options o;
  o.in_channels = 3;
  o.width = 0.125;
  o.dropout = 0;  // training mode: BatchNorm on batch statistics, no random mask
  torch::manual_seed(1);
  ResNet9 nchw(o);
  o.channels_last = true;
  torch::manual_seed(1);
  ResNet9 nhwc(o);
  nhwc->to(torch::kCPU);
  int four_d = 0;
  for (const auto& p : nhwc->parameters()) {
    if (p.dim() != 4) continue;
    ++four_d;
    EXPECT_TRUE(p.is_contiguous(at::MemoryFormat::ChannelsLast));
    EXPECT_FALSE(p.is_contiguous());
  }
  EXPECT_EQ(four_d, 8);
  const auto x = torch::randn({6, 3, 32, 32});
  const auto a = nchw->forward(x), b = nhwc->forward(x);
  EXPECT_TRUE(torch::allclose(a, b, 1e-4, 1e-5)) << (a - b).abs().max().item<double>();
  a.square().sum().backward();
  b.square().sum().backward();
  // Absolute tolerance against the largest gradient element: the conv biases before BatchNorm
  // have exact gradient 0, computed as rounding noise of the batch sums.
  const auto pa = nchw->named_parameters(), pb = nhwc->named_parameters();
  double largest = 0;
  for (const auto& item : pa) largest = std::max(largest, item.value().grad().abs().max().item<double>());
  for (const auto& item : pa) {
    const auto& ga = item.value().grad();
    const auto& gb = pb[item.key()].grad();
    EXPECT_TRUE(torch::allclose(ga, gb, 1e-3, 1e-5 * largest))
        << item.key() << ": " << (ga - gb).abs().max().item<double>() << " of " << largest;
  }
}

}  // namespace
}  // namespace fer
