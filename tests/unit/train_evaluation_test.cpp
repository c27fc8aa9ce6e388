// Evaluation helpers of src/train: test-time augmentation views and averaging (eval.tta), and the
// balanced class weights of optim.class_weights.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/errors.h"
#include "train/evaluation.h"
#include "train/metrics.h"

namespace fer {
namespace {

torch::Tensor images(int n = 3, int c = 2, int h = 9, int w = 7) {
  return torch::arange(n * c * h * w, torch::kFloat32).reshape({n, c, h, w}).sin();
}

TEST(Tta, NoneIsTheBatchFlipAddsItsMirror) {
  const auto x = images();
  auto views = tta_views(x, Tta::kNone, 4);
  ASSERT_EQ(views.size(), 1u);
  EXPECT_TRUE(torch::equal(views[0], x));
  views = tta_views(x, Tta::kFlip, 4);
  ASSERT_EQ(views.size(), 2u);
  EXPECT_TRUE(torch::equal(views[1], x.flip({3})));
}

// Ten-crop uses the positions training's pad-and-crop reaches at its extremes and centre: the
// centre crop is the image, a corner crop of the reflect-padded image is shifted by `pad`.
TEST(Tta, TenCropIsTheCentreAndFourCornersOfThePaddedImageEachMirrored) {
  const int pad = 2;
  const auto x = images();
  const auto views = tta_views(x, Tta::kTenCrop, pad);
  ASSERT_EQ(views.size(), 10u);
  for (const auto& v : views) EXPECT_EQ(v.sizes(), x.sizes());
  EXPECT_TRUE(torch::equal(views[0], x));
  const auto padded = torch::nn::functional::pad(
      x, torch::nn::functional::PadFuncOptions({pad, pad, pad, pad}).mode(torch::kReflect));
  // top-left corner: rows/cols [0, H) of the padded image; its interior part is x shifted.
  EXPECT_TRUE(torch::equal(views[1], padded.narrow(2, 0, 9).narrow(3, 0, 7)));
  EXPECT_TRUE(torch::equal(views[1].narrow(2, pad, 9 - pad).narrow(3, pad, 7 - pad),
                           x.narrow(2, 0, 9 - pad).narrow(3, 0, 7 - pad)));
  // bottom-right corner, and the mirrors in the second half.
  EXPECT_TRUE(torch::equal(views[4], padded.narrow(2, 2 * pad, 9).narrow(3, 2 * pad, 7)));
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(torch::equal(views[5 + i], views[i].flip({3})));
}

TEST(Tta, LogProbsAverageTheViewsProbabilities) {
  torch::manual_seed(1);
  ResNet9Options o;
  o.in_channels = 2;
  o.num_classes = 3;
  o.width = 0.0625;
  ResNet9 model(o);
  model->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({4, 2, 16, 16});
  const auto expected = torch::log((torch::softmax(model->forward(x), 1) +
                                    torch::softmax(model->forward(x.flip({3}).contiguous()), 1)) /
                                   2.0);
  EXPECT_TRUE(torch::allclose(tta_log_probs(model, x, Tta::kFlip, 4), expected, 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(tta_log_probs(model, x, Tta::kNone, 4),
                              torch::log_softmax(model->forward(x), 1)));
  EXPECT_TRUE(torch::allclose(tta_log_probs(model, x, Tta::kTenCrop, 4).exp().sum(1),
                              torch::ones({4}), 1e-5, 1e-6));
}

TEST(Tta, NamesRoundTripAndUnknownOnesAreConfigErrors) {
  for (Tta t : {Tta::kNone, Tta::kFlip, Tta::kTenCrop}) EXPECT_EQ(parse_tta(to_string(t)), t);
  EXPECT_THROW(parse_tta("five_crop"), ConfigError);
}

TEST(ClassWeights, BalancedIsInverseFrequencyWithMeanOneOverPresentClasses) {
  const auto w = balanced_class_weights({10, 30, 0, 60});
  ASSERT_EQ(w.size(), 4u);
  EXPECT_DOUBLE_EQ(w[2], 0.0);  // no train image: no weight
  EXPECT_NEAR((w[0] + w[1] + w[3]) / 3.0, 1.0, 1e-12);
  EXPECT_NEAR(w[0] / w[1], 3.0, 1e-12);  // 3x rarer, 3x the weight
  EXPECT_NEAR(w[0] / w[3], 6.0, 1e-12);
  EXPECT_EQ(balanced_class_weights({5, 5}), (std::vector<double>{1.0, 1.0}));
  EXPECT_TRUE(balanced_class_weights({0, 0}).empty());
}

}  // namespace
}  // namespace fer
