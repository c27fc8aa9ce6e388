#include "model/resnet9.h"

#include <torch/torch.h>

#include <cmath>

namespace fer {

ConvBlockImpl::ConvBlockImpl(int in_channels, int out_channels, bool pool, bool sync_bn)
    : pool_(pool) {
  // Registered as "0" and "1" so parameter names match the reference's nn.Sequential.
  conv_ = register_module(
      "0", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, out_channels,
                                                      /*kernel_size=*/3)
                                 .padding(1)));
  if (sync_bn) {
    sync_bn_ = register_module("1", SyncBatchNorm2d(out_channels));
  } else {
    bn_ = register_module("1", torch::nn::BatchNorm2d(out_channels));
  }
}

torch::Tensor ConvBlockImpl::forward(torch::Tensor x) {
  x = conv_->forward(x);
  x = sync_bn_ ? sync_bn_->forward(x) : bn_->forward(x);
  x.relu_();
  return pool_ ? torch::max_pool2d(x, /*kernel_size=*/{2, 2}) : x;
}

int scaled_width(int base, double width) {
  return std::max(1, static_cast<int>(std::nearbyint(base * width)));
}

ResNet9Impl::ResNet9Impl(const ResNet9Options& options) : options_(options) {
  const auto w = [&](int c) { return scaled_width(c, options.width); };
  const auto conv_block = [&](int in, int out, bool pool) {
    return ConvBlock(in, out, pool, options.sync_bn);
  };
  conv1_ = register_module("conv1", conv_block(options.in_channels, w(64), false));
  conv2_ = register_module("conv2", conv_block(w(64), w(128), true));
  res1_ = register_module("res1", torch::nn::Sequential(conv_block(w(128), w(128), false),
                                                        conv_block(w(128), w(128), false)));
  conv3_ = register_module("conv3", conv_block(w(128), w(256), true));
  conv4_ = register_module("conv4", conv_block(w(256), w(512), true));
  res2_ = register_module("res2", torch::nn::Sequential(conv_block(w(512), w(512), false),
                                                        conv_block(w(512), w(512), false)));
  dropout_ = register_module("dropout", torch::nn::Dropout(options.dropout));
  classifier_ = register_module("classifier", torch::nn::Linear(w(512), options.num_classes));
  if (options.channels_last) {
    torch::NoGradGuard no_grad;
    // Module::to(device) keeps a tensor's strides, so the layout survives the move.
    for (auto& p : parameters()) {
      if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
    }
  }
}

void ResNet9Impl::set_allreduce(const AllReduceSum& allreduce) {
  for (const auto& module : modules(/*include_self=*/false)) {
    if (auto* sync_bn = module->as<SyncBatchNorm2dImpl>()) sync_bn->set_allreduce(allreduce);
  }
}

torch::Tensor ResNet9Impl::forward(torch::Tensor x) { return forward(std::move(x), {}); }

torch::Tensor ResNet9Impl::forward(torch::Tensor x, const torch::Tensor& keep) {
  if (options_.channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  x = conv2_->forward(conv1_->forward(x));
  x = res1_->forward(x) + x;
  x = conv4_->forward(conv3_->forward(x));
  x = res2_->forward(x) + x;
  x = torch::amax(x, {2, 3});  // global max-pool + flatten
  if (keep.defined() && is_training() && options_.dropout > 0) {
    x = x * keep * (1.0 / (1.0 - options_.dropout));
  } else {
    x = dropout_->forward(x);
  }
  return classifier_->forward(x);
}

int ResNet9Impl::feature_size() const { return scaled_width(512, options_.width); }

}  // namespace fer
