#include "train/train_batches.h"

#include <torch/torch.h>

#include "train/evaluation.h"

namespace fer {

std::string resolve_loader_mode(const std::string& mode, const torch::Device& device) {
  if (mode != "auto") return mode;
  return device.is_cuda() ? "device" : "memory";
}

TrainBatches::TrainBatches(const std::filesystem::path& dataset_dir, const Manifest& manifest,
                           int world_size, int rank, const LoaderOptions& options,
                           const torch::Device& device)
    : options_(options),
      device_(device),
      manifest_(manifest) {
  if (options.mode == "device") {
    split_.emplace(DeviceSplit::train(dataset_dir, manifest, device));
    sampler_.emplace(manifest.split("train").count, world_size, rank, options.batch_per_rank,
                     options.seed);
  } else {
    host_ = std::make_unique<TrainLoader>(dataset_dir, manifest, world_size, rank, options);
  }
}

std::int64_t TrainBatches::steps_per_epoch() const {
  return host_ ? host_->steps_per_epoch() : sampler_->steps_per_epoch();
}

void TrainBatches::start_epoch(std::int64_t epoch, std::int64_t first_step) {
  epoch_ = epoch;
  step_ = first_step;
  if (host_) host_->start_epoch(epoch, first_step);
}

bool TrainBatches::next(torch::Tensor* images, torch::Tensor* labels) {
  if (host_) {
    if (!host_->next(&batch_)) return false;
    *images = batch_images(batch_, manifest_, device_);
    *labels = batch_labels(batch_, device_);
    return true;
  }
  if (step_ >= sampler_->steps_per_epoch()) return false;
  DeviceBatch b = split_->train_batch(*sampler_, epoch_, step_++, options_);
  *images = std::move(b.images);
  *labels = std::move(b.labels);
  return true;
}

}  // namespace fer
