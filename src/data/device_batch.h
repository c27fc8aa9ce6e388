// The memory loader's per-batch work as batched tensor ops that run on any torch device
// (DESIGN.md "Sampling and augmentation": on a GPU the split stays uint8 on the device and is
// augmented there, with the same draws as the CPU path, so a CPU test checks it).
//
// DeviceSplit holds a split, or one rank's part of it, as uint8 [N, H, W, C] on a device, its
// labels as int64 [N] and the manifest's normalization as a float32 lookup table [C * 256].
//  - train_batch() gathers a step's samples by index and does reflect-pad crop and flip as two
//    gathers (index grids built from per-sample offsets), then normalizes by table lookup;
//  - eval_batch() normalizes a contiguous run of samples (no augmentation).
//
// Equivalence with the CPU loaders (tests/unit/data_device_batch_test.cpp, on CPU tensors):
//  - the crop offset and flip of sample `index` in `epoch` are draw_augment(seed, epoch, index,
//    augment_options), computed on the host by the CPU path's own function, so train_crops() is
//    augment_image() of every sample, byte for byte;
//  - the lookup table is read out of the CPU path's Normalizer (the formula is computed in double
//    and rounded once to float), so train_batch() and eval_batch() images equal TrainLoader's and
//    EvalLoader's floats bit for bit.
//
// Host-to-device traffic: the split once at construction (a synchronous copy); per train batch
// 4 int64 per sample (row, dy, dx, flip) from pinned memory, copied non_blocking; none per eval
// batch. Kernels are queued on torch's current stream; a batch call reads no device value.
//
// Threading: immutable after construction; the const methods may run on several threads at once.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/manifest.h"
#include "data/sampler.h"

namespace fer {

// One batch on the split's device.
struct DeviceBatch {
  torch::Tensor images;  // float32 [B, C, H, W], normalized with the manifest's mean/std
  torch::Tensor labels;  // int64 [B], class indices; may view the held labels: do not modify
};

class DeviceSplit {
 public:
  // Samples [range.begin, range.end) of `split`, read through open_verified_shard (each shard
  // overlapping the range is checksum-verified; DataError naming a bad one) and copied to `device`.
  // Reads on the calling thread without the loaders' HDF5 mutex: do not construct one while a
  // TrainLoader or EvalLoader of the same process reads on another thread, unless libhdf5 is
  // thread-safe (Debian's is). ConfigError for a range outside [0, count] or a manifest without one
  // mean and std (> 0) per channel; DataError when the device cannot hold the split.
  DeviceSplit(const std::filesystem::path& dataset_dir, const Manifest& manifest,
              const std::string& split, EvalRange range, torch::Device device);

  // The whole train split: what the memory-mode TrainLoader holds.
  static DeviceSplit train(const std::filesystem::path& dataset_dir, const Manifest& manifest,
                           torch::Device device);
  // This rank's eval_range() of `split` (val/test): what EvalLoader reads.
  static DeviceSplit eval(const std::filesystem::path& dataset_dir, const Manifest& manifest,
                          const std::string& split, int world_size, int rank, torch::Device device);

  std::int64_t size() const { return range_.size(); }
  EvalRange range() const { return range_; }  // indices in the split of the held samples
  torch::Device device() const { return images_.device(); }
  const torch::Tensor& images() const { return images_; }  // uint8 [size(), H, W, C]
  const torch::Tensor& labels() const { return labels_; }  // int64 [size()]

  // uint8 [B, H, W, C] on the device: sample indices[i] (an index in the split, inside range())
  // cropped and flipped as draw_augment(options.seed, epoch, indices[i], options.augment_options)
  // decides, i.e. exactly augment_image()'s output; the stored images when options.augment is
  // false. Reads only options.seed, .augment and .augment_options (the batch size is
  // indices.size(), >= 1). ConfigError for an index outside range(), epoch < 0, or a pad the image
  // cannot reflect (0 <= pad < H, W), as the CPU path.
  torch::Tensor train_crops(const std::vector<std::int64_t>& indices, std::int64_t epoch,
                            const LoaderOptions& options) const;

  // train_crops() normalized to float32 [B, C, H, W] (in `format`: Contiguous, or ChannelsLast
  // at no extra cost), with the samples' labels. For the same indices, epoch and options it equals
  // the TrainLoader's Batch::images bit for bit.
  DeviceBatch train_batch(const std::vector<std::int64_t>& indices, std::int64_t epoch,
                          const LoaderOptions& options,
                          torch::MemoryFormat format = torch::MemoryFormat::Contiguous) const;

  // Step `step` of `epoch` of this rank: train_batch(sampler.batch_indices(epoch, step), ...),
  // the batch the memory-mode TrainLoader with the same sampler settings delivers.
  DeviceBatch train_batch(const DistributedSampler& sampler, std::int64_t epoch, std::int64_t step,
                          const LoaderOptions& options,
                          torch::MemoryFormat format = torch::MemoryFormat::Contiguous) const;

  // Held samples [first, first + count) (0-based within range()), normalized, no augmentation.
  // EvalLoader's batch k with batch size B is eval_batch(k * B, min(B, size() - k * B)), bit for
  // bit. ConfigError unless 0 <= first, 1 <= count and first + count <= size().
  DeviceBatch eval_batch(std::int64_t first, std::int64_t count,
                         torch::MemoryFormat format = torch::MemoryFormat::Contiguous) const;

 private:
  // int64 [4, B] on the device: per sample its row in images_, the crop's shift against the
  // unpadded image (dy - pad, dx - pad) and the flip (0/1), drawn on the host by draw_augment and
  // copied from pinned memory. Checks what train_crops() documents.
  torch::Tensor upload_plan(const std::vector<std::int64_t>& indices, std::int64_t epoch,
                            const LoaderOptions& options) const;
  // uint8 [B, H, W, C]: the plan's samples, cropped and flipped when `augment`.
  torch::Tensor crops(const torch::Tensor& plan, bool augment) const;
  // uint8 [B, H, W, C] -> normalized float32 [B, C, H, W] in `format`, by table lookup.
  torch::Tensor normalize(const torch::Tensor& crops, torch::MemoryFormat format) const;
  // table_[index], elementwise, in index's shape (contiguous int64).
  torch::Tensor lookup(const torch::Tensor& index) const;

  EvalRange range_;
  int height_ = 0, width_ = 0, channels_ = 0;
  torch::Tensor images_;          // uint8 [N, H, W, C], contiguous
  torch::Tensor labels_;          // int64 [N]
  torch::Tensor table_;           // float32 [C * 256]: table_[c * 256 + v] = normalized v
  torch::Tensor channel_;         // int64 arange(C)
  torch::Tensor channel_offset_;  // int64 [C]: c * 256, the table row of each channel
  torch::Tensor rows_, cols_;     // int64 arange(H), arange(W): the crop's index grids
};

}  // namespace fer
