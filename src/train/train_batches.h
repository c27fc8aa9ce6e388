// Where the trainer's batches come from (data.loader): the threaded host loader (memory, stream;
// src/data/loader.h), or the train split held on the model's device and augmented there with
// batched tensor ops (device; src/data/device_batch.h). Both give a step the same samples with the
// same augmentation draws (DESIGN.md "Sampling and augmentation"), so a run's numbers do not
// depend on the choice (tested on the CPU, where the device path runs too).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "data/device_batch.h"
#include "data/loader.h"
#include "data/manifest.h"
#include "data/sampler.h"

namespace fer {

class TrainBatches {
 public:
  // `options.mode`: memory | stream | device (auto resolves before: device on CUDA, else memory).
  TrainBatches(const std::filesystem::path& dataset_dir, const Manifest& manifest, int world_size,
               int rank, const LoaderOptions& options, const torch::Device& device);

  std::int64_t steps_per_epoch() const;
  void start_epoch(std::int64_t epoch, std::int64_t first_step);
  // The next step's normalized images [B, C, H, W] float32 and labels [B] int64 on the device;
  // false at the end of the epoch. The tensors stay valid until the next call.
  bool next(torch::Tensor* images, torch::Tensor* labels);

 private:
  LoaderOptions options_;
  torch::Device device_;
  std::unique_ptr<TrainLoader> host_;    // memory | stream
  Batch batch_;                          // the host loader's current batch
  Manifest manifest_;                    // image shape for the host batches' tensors
  std::optional<DeviceSplit> split_;     // device
  std::optional<DistributedSampler> sampler_;
  std::int64_t epoch_ = 0, step_ = 0;
};

// data.loader "auto" for a model on `device`: "device" on CUDA, "memory" otherwise.
std::string resolve_loader_mode(const std::string& mode, const torch::Device& device);

}  // namespace fer
