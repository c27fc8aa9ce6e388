// Test-time augmentation (eval.tta, fer-predict --tta): class probabilities averaged over views
// of the input. Torch only (fer_model), so that fer-predict can use it without the trainer.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "model/resnet9.h"

namespace fer {

enum class Tta {
  kNone,
  kFlip,     // the image and its mirror
  kTenCrop,  // the five pad-and-crop positions of training (centre, corners), each mirrored
};
Tta parse_tta(const std::string& name);  // none | flip | ten_crop; ConfigError otherwise
const char* to_string(Tta tta);

// The views of a batch of normalized images [B, C, H, W] that `tta` averages over: the batch
// itself first; its mirror; with kTenCrop, reflect-padded by `pad` pixels and cropped back to
// H x W at the four corners and the centre (the centre is the batch itself), each mirrored.
std::vector<torch::Tensor> tta_views(const torch::Tensor& x, Tta tta, int pad);

// The pad of training's default recipe (data.pad): the crop positions fer-dist-train --eval-only
// and fer-predict average over with kTenCrop.
inline constexpr int kDefaultTtaPad = 4;

// Logits [B, classes] of a batch of normalized images [B, C, H, W] (contiguous): a model's
// forward pass in eval mode, or another implementation of it (fer-predict's fused one).
using TtaForward = std::function<torch::Tensor(const torch::Tensor&)>;

// Class probabilities of `x` [B, classes]: the softmax of each view's logits, summed over
// tta_views in their order and divided by their count (kNone: the softmax of the logits). Each
// view is made contiguous and passed to `forward` separately.
torch::Tensor tta_probs(const TtaForward& forward, const torch::Tensor& x, Tta tta, int pad);

// Log of the class probabilities of `x`, averaged over tta_views (kNone: log_softmax of the
// logits): log(tta_probs) otherwise. Eval mode, no gradients: the caller's job.
torch::Tensor tta_log_probs(const TtaForward& forward, const torch::Tensor& x, Tta tta, int pad);
torch::Tensor tta_log_probs(ResNet9& model, const torch::Tensor& x, Tta tta, int pad);

}  // namespace fer
