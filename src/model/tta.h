// Test-time augmentation (eval.tta, fer-predict --tta): class probabilities averaged over views
// of the input. Torch only (fer_model), so that fer-predict can use it without the trainer.
#pragma once

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

// Log of the class probabilities of `x`, averaged over tta_views (kNone: log_softmax of the
// logits). Eval mode, no gradients: the caller's job.
torch::Tensor tta_log_probs(ResNet9& model, const torch::Tensor& x, Tta tta, int pad);

}  // namespace fer
