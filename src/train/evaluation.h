// Evaluation of a model on a split (DESIGN.md "Sampling and augmentation": each rank evaluates a
// disjoint part; counts and losses are summed over ranks on the control plane).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <string>
#include <vector>

#include "model/resnet9.h"
#include "train/metrics.h"

namespace fer {

class ControlPlane;
class EvalLoader;
struct Batch;
struct Manifest;

// Test-time augmentation (eval.tta), the config's choice as an enum.
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

struct EvalOptions {
  Tta tta = Tta::kNone;
  int pad = 4;  // data.pad of the recipe: the crop positions of kTenCrop
};

struct EvalResult {
  double loss = 0.0;  // mean cross-entropy (of the TTA-averaged probabilities) per sample
  ConfusionMatrix confusion;
  Tta tta = Tta::kNone;
  explicit EvalResult(int k) : confusion(k) {}
};

// [size, C, H, W] float32 images and [size] int64 labels of a loader batch, on `device` (no copy
// on the CPU: views of the batch's buffers, valid while the batch is).
torch::Tensor batch_images(Batch& batch, const Manifest& m, const torch::Device& device);
torch::Tensor batch_labels(Batch& batch, const torch::Device& device);

// Loss and confusion matrix of the samples `loader` yields (this rank's part of a split), in eval
// mode without gradients, with the test-time augmentation of `options`.
EvalResult evaluate(ResNet9& model, EvalLoader& loader, const Manifest& m,
                    const torch::Device& device, const EvalOptions& options = {});

// Sums a rank's evaluation over all ranks (collective on the control plane): the whole split's.
void reduce_eval(EvalResult* r, ControlPlane& control);

// {loss, accuracy, macro_f1, count, tta, per_class: {name: {precision, recall, f1}}, confusion}
nlohmann::json eval_json(const EvalResult& r, const std::vector<std::string>& classes);

}  // namespace fer
