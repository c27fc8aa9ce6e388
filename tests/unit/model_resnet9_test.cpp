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

}  // namespace
}  // namespace fer
