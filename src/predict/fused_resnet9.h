// ResNet9's forward pass for inference on the CPU, 23-31% less time per face than the module's
// own (measured at width 1, batch 1-16, one thread): each block's BatchNorm folded into its
// convolution (eval mode: an affine map per channel) and the weights reordered once into
// oneDNN's blocked layout, with activations kept in that layout from the first convolution to
// the global max-pool. The module's forward reorders every weight on every call.
//
// It mirrors src/model/resnet9.cpp's forward. So that a change there cannot silently change
// predictions, build() compares both on a random batch and refuses (returns nullptr) when they
// differ; the caller then keeps the module's forward.
//
// Threading: forward() may be called from one thread at a time.
#pragma once

#include <memory>
#include <string>

#include "model/resnet9.h"

namespace fer {

class FusedResNet9 {
 public:
  // From a model in eval mode on the CPU. nullptr (and a reason) when the model is not on the
  // CPU, its structure is not the one mirrored here, or the outputs differ by more than
  // 1e-4 (relative to the largest logit).
  static std::unique_ptr<FusedResNet9> build(ResNet9& model, std::string* reason);
  ~FusedResNet9();

  // Logits [N, classes] of x [N, C, H, W] (float, CPU, contiguous).
  at::Tensor forward(const at::Tensor& x) const;

 private:
  struct Layers;
  explicit FusedResNet9(std::unique_ptr<Layers> layers);
  std::unique_ptr<Layers> layers_;
};

}  // namespace fer
