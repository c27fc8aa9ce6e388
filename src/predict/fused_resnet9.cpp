#include "predict/fused_resnet9.h"

#include <torch/torch.h>

#include <vector>

namespace fer {
namespace {

constexpr double kDefaultEps = 1e-5;          // BatchNorm's, when the module does not say
constexpr double kSelfCheckTolerance = 1e-4;  // relative to the largest logit

// One conv block: 3x3 conv (pad 1) with BatchNorm folded in, ReLU, optional 2x2 max-pool.
struct Block {
  torch::Tensor weight;  // oneDNN layout when mkldnn is on
  torch::Tensor bias;    // dense
  bool pool = false;
};

}  // namespace

struct FusedResNet9::Layers {
  bool mkldnn = false;        // oneDNN tensors (at::hasMKLDNN()); else dense convolutions
  std::vector<Block> blocks;  // conv1 conv2 res1.0 res1.1 conv3 conv4 res2.0 res2.1
  torch::Tensor classifier_weight, classifier_bias;

  torch::Tensor block(const torch::Tensor& x, const Block& b) const {
    torch::Tensor y = mkldnn ? at::mkldnn_convolution(x, b.weight, b.bias, /*padding=*/{1, 1},
                                                      /*stride=*/{1, 1}, /*dilation=*/{1, 1},
                                                      /*groups=*/1)
                             : at::conv2d(x, b.weight, b.bias, /*stride=*/1, /*padding=*/1);
    y = at::relu(y);
    if (!b.pool) return y;
    return mkldnn ? at::mkldnn_max_pool2d(y, /*kernel_size=*/{2, 2}, /*stride=*/{2, 2})
                  : at::max_pool2d(y, /*kernel_size=*/{2, 2});
  }
};

FusedResNet9::FusedResNet9(std::unique_ptr<Layers> layers) : layers_(std::move(layers)) {}
FusedResNet9::~FusedResNet9() = default;

std::unique_ptr<FusedResNet9> FusedResNet9::build(ResNet9& model, std::string* reason) {
  c10::InferenceMode inference;
  auto layers = std::make_unique<Layers>();
  layers->mkldnn = at::hasMKLDNN();
  const auto params = model->named_parameters();
  const auto buffers = model->named_buffers();
  const auto modules = model->named_modules();
  for (const auto& p : params) {
    if (!p.value().device().is_cpu() || p.value().scalar_type() != torch::kFloat32) {
      *reason = "the model is not float32 on the CPU";
      return nullptr;
    }
  }
  // The blocks in forward order, and whether each ends with a 2x2 max-pool (resnet9.cpp).
  const std::vector<std::pair<std::string, bool>> kBlocks = {
      {"conv1", false}, {"conv2", true}, {"res1.0", false}, {"res1.1", false},
      {"conv3", true},  {"conv4", true}, {"res2.0", false}, {"res2.1", false}};
  for (const auto& [name, pool] : kBlocks) {
    const std::vector<std::string> needed = {name + ".0.weight", name + ".0.bias",
                                             name + ".1.weight", name + ".1.bias"};
    for (const auto& key : needed) {
      if (!params.contains(key)) {
        *reason = "no parameter " + key;
        return nullptr;
      }
    }
    if (!buffers.contains(name + ".1.running_mean") || !buffers.contains(name + ".1.running_var")) {
      *reason = "no running statistics for " + name;
      return nullptr;
    }
    double eps = kDefaultEps;
    if (modules.contains(name + ".1")) {
      if (const auto* bn = modules[name + ".1"]->as<torch::nn::BatchNorm2dImpl>()) {
        eps = bn->options.eps();
      }
    }
    // BatchNorm in eval mode is y = gamma * (x - mean) / sqrt(var + eps) + beta: per output
    // channel a scale s and a shift, folded into the convolution's weight and bias.
    const torch::Tensor s =
        params[name + ".1.weight"] / torch::sqrt(buffers[name + ".1.running_var"] + eps);
    torch::Tensor weight = (params[name + ".0.weight"] * s.view({-1, 1, 1, 1})).contiguous();
    const torch::Tensor bias = ((params[name + ".0.bias"] - buffers[name + ".1.running_mean"]) * s +
                                params[name + ".1.bias"])
                                   .contiguous();
    if (layers->mkldnn) {
      weight = at::mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), /*padding=*/{1, 1},
                                                /*stride=*/{1, 1}, /*dilation=*/{1, 1},
                                                /*groups=*/1);
    }
    layers->blocks.push_back({weight, bias, pool});
  }
  if (!params.contains("classifier.weight") || !params.contains("classifier.bias")) {
    *reason = "no classifier";
    return nullptr;
  }
  layers->classifier_weight = params["classifier.weight"].contiguous();
  layers->classifier_bias = params["classifier.bias"].contiguous();
  std::unique_ptr<FusedResNet9> fused(new FusedResNet9(std::move(layers)));

  // Self-check against the module on a random batch of its input size.
  const ResNet9Options& o = model->options();
  const torch::Tensor x =
      torch::randn({2, o.in_channels, 48, 48}, torch::TensorOptions().dtype(torch::kFloat32));
  const bool was_training = model->is_training();
  model->eval();
  const torch::Tensor want = model->forward(x);
  if (was_training) model->train();
  torch::Tensor got;
  try {
    got = fused->forward(x);
  } catch (const std::exception& e) {
    *reason = std::string("its forward failed: ") + e.what();
    return nullptr;
  }
  const double scale = std::max(1.0, want.abs().max().item<double>());
  const double diff = got.sizes() == want.sizes() ? (got - want).abs().max().item<double>() : 1e30;
  if (!(diff <= kSelfCheckTolerance * scale)) {
    *reason = "its logits differ from the module's by " + std::to_string(diff);
    return nullptr;
  }
  return fused;
}

torch::Tensor FusedResNet9::forward(const torch::Tensor& input) const {
  const Layers& l = *layers_;
  const std::vector<Block>& b = l.blocks;
  torch::Tensor x = l.mkldnn ? input.to_mkldnn() : input;
  x = l.block(l.block(x, b[0]), b[1]);
  x = at::add(l.block(l.block(x, b[2]), b[3]), x);
  x = l.block(l.block(x, b[4]), b[5]);
  x = at::add(l.block(l.block(x, b[6]), b[7]), x);
  if (l.mkldnn) x = x.to_dense();
  x = at::amax(x, {2, 3});  // global max-pool + flatten; dropout is the identity in eval mode
  return at::linear(x, l.classifier_weight, l.classifier_bias);
}

}  // namespace fer
