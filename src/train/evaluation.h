// Evaluation of a model on a split (DESIGN.md "Sampling and augmentation": each rank evaluates a
// disjoint part; counts and losses are summed over ranks on the control plane).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "model/resnet9.h"
#include "model/tta.h"
#include "train/metrics.h"

namespace fer {

class ControlPlane;
struct Batch;
struct Manifest;

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
// on the CPU: views of the batch's buffers, valid while the batch is; to CUDA through pinned
// memory, non_blocking).
torch::Tensor batch_images(Batch& batch, const Manifest& m, const torch::Device& device);
torch::Tensor batch_labels(Batch& batch, const torch::Device& device);

// This rank's part of a val/test split as batches on the model's device, in split order: read by
// EvalLoader on the host and copied (data.loader memory/stream), or held on the device by
// DeviceSplit::eval (data.loader device: no host-to-device traffic per batch). Both give the same
// floats bit for bit.
class EvalBatches {
 public:
  EvalBatches(const std::filesystem::path& dataset_dir, const Manifest& manifest,
              const std::string& split, int world_size, int rank, int batch_size,
              const torch::Device& device, bool on_device);
  ~EvalBatches();
  EvalBatches(const EvalBatches&) = delete;
  EvalBatches& operator=(const EvalBatches&) = delete;
  void reset();
  // The next batch (images [B, C, H, W] float32, labels [B] int64 on the device); false at the end.
  bool next(torch::Tensor* images, torch::Tensor* labels);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Loss and confusion matrix of the samples `batches` yields (this rank's part of a split), in eval
// mode without gradients, with the test-time augmentation of `options`. The sums stay on the
// device until the end: one host read per evaluation, none per batch.
EvalResult evaluate(ResNet9& model, EvalBatches& batches, int num_classes,
                    const EvalOptions& options = {});

// Sums a rank's evaluation over all ranks (collective on the control plane): the whole split's.
void reduce_eval(EvalResult* r, ControlPlane& control);

// {loss, accuracy, macro_f1, count, tta, per_class: {name: {precision, recall, f1}}, confusion}
nlohmann::json eval_json(const EvalResult& r, const std::vector<std::string>& classes);

}  // namespace fer
