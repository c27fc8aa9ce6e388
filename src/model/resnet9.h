// ResNet9 for facial-expression recognition (DESIGN.md "Model"), matching
// shared/reference/resnet9_ref.py layer for layer:
//   conv(64) · conv(128)+pool · res[conv(128),conv(128)] · conv(256)+pool · conv(512)+pool ·
//   res[conv(512),conv(512)] · global max-pool · flatten · dropout · linear(K)
// Each conv is 3x3 pad 1 + BatchNorm + ReLU; widths are scaled by `width` (rounded, >= 1).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include "model/sync_batchnorm.h"

namespace fer {

struct ResNet9Options {
  int in_channels = 1;   // from the manifest
  int num_classes = 7;   // from the manifest
  double width = 1.0;    // channel multiplier
  double dropout = 0.2;  // before the classifier
  bool sync_bn = false;  // SyncBatchNorm2d instead of BatchNorm2d (same parameter names)
  // Convolution weights and activations in NHWC order (torch.channels_last); forward converts
  // its input. A layout, not part of the model: checkpoints do not record it.
  bool channels_last = false;
};

// Channels of a width-scaled layer: max(1, round(base * width)) (the reference's rounding).
int scaled_width(int base, double width);

// 3x3 conv (pad 1) + BatchNorm (or SyncBatchNorm) + ReLU, optionally followed by 2x2 max-pool.
class ConvBlockImpl : public torch::nn::Module {
 public:
  ConvBlockImpl(int in_channels, int out_channels, bool pool, bool sync_bn = false);
  torch::Tensor forward(torch::Tensor x);

 private:
  torch::nn::Conv2d conv_{nullptr};
  // Exactly one of the two is set; either is registered as "1".
  torch::nn::BatchNorm2d bn_{nullptr};
  SyncBatchNorm2d sync_bn_{nullptr};
  bool pool_;
};
TORCH_MODULE(ConvBlock);

class ResNet9Impl : public torch::nn::Module {
 public:
  explicit ResNet9Impl(const ResNet9Options& options);
  // x: [N, C, H, W] float, normalized. Returns logits [N, K]. Dropout draws its own mask from
  // torch's global generator.
  torch::Tensor forward(torch::Tensor x);
  // The same, with the dropout mask given: `keep` [N, feature_size()] of 0/1 on x's device (the
  // kept features are scaled by 1 / (1 - dropout), as torch's dropout does). In training mode
  // only; eval mode ignores it. The trainer draws the mask per global sample so that N ranks
  // reproduce one process (DESIGN.md "Sampling and augmentation").
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& keep);
  // Features entering the dropout and the classifier (the last block's channels).
  int feature_size() const;
  const ResNet9Options& options() const { return options_; }
  // Gives every SyncBatchNorm2d layer the all-reduce it uses in training (empty: a world of 1).
  // No effect when options().sync_bn is false.
  void set_allreduce(const AllReduceSum& allreduce);

 private:
  ResNet9Options options_;
  ConvBlock conv1_{nullptr}, conv2_{nullptr}, conv3_{nullptr}, conv4_{nullptr};
  torch::nn::Sequential res1_{nullptr}, res2_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
  torch::nn::Linear classifier_{nullptr};
};
TORCH_MODULE(ResNet9);

}  // namespace fer
