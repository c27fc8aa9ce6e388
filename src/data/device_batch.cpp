#include "data/device_batch.h"

#include <algorithm>
#include <array>

#include "common/errors.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/shard.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

constexpr int kByteValues = 256;  // entries per channel in the normalization table

// Pinned when bound for a CUDA device, so that a non_blocking copy is truly asynchronous (the
// caching host allocator keeps the block alive until the copy has run).
torch::TensorOptions host_options(torch::ScalarType dtype, const torch::Device& device) {
  return torch::TensorOptions().dtype(dtype).pinned_memory(device.is_cuda());
}

// The Normalizer's tables as one float32 [C * 256] host tensor, read out of the CPU path by
// normalizing a 1 x 256 ramp image: one definition of the formula and its rounding.
torch::Tensor normalization_table(const Manifest& m) {
  FER_CHECK(m.mean.size() == static_cast<std::size_t>(m.channels) &&
                m.std.size() == static_cast<std::size_t>(m.channels),
            ConfigError, "normalization needs one mean and std per channel, the manifest has ",
            m.mean.size(), " and ", m.std.size(), " for ", m.channels, " channels");
  const Normalizer normalizer(m.channels, m.mean.data(), m.std.data());
  std::vector<std::uint8_t> ramp(static_cast<std::size_t>(kByteValues) * m.channels);
  for (std::size_t p = 0; p < ramp.size(); ++p) {
    ramp[p] = static_cast<std::uint8_t>(p / static_cast<std::size_t>(m.channels));  // HWC
  }
  torch::Tensor table = torch::empty({std::int64_t{m.channels} * kByteValues}, torch::kFloat32);
  // CHW out of a 1 x 256 image: channel c's 256 values are table[c * 256 .. c * 256 + 255].
  normalizer.apply(ramp.data(), /*height=*/1, /*width=*/kByteValues, table.data_ptr<float>());
  return table;
}

// numpy/torch "reflect" index for i in [-(n-1), 2n-2] (the edge is not repeated), elementwise:
// (n-1) - |(n-1) - |i||, which is -i below 0, i inside and 2(n-1) - i past the end.
torch::Tensor reflect(const torch::Tensor& i, std::int64_t n) {
  return (n - 1) - ((n - 1) - i.abs()).abs();
}

}  // namespace

DeviceSplit::DeviceSplit(const fs::path& dataset_dir, const Manifest& manifest,
                         const std::string& split, EvalRange range, torch::Device device)
    : range_(range),
      height_(manifest.height),
      width_(manifest.width),
      channels_(manifest.channels) {
  const SplitInfo& info = manifest.split(split);
  FER_CHECK(range.begin >= 0 && range.begin <= range.end && range.end <= info.count, ConfigError,
            "sample range [", range.begin, ", ", range.end, ") is outside split '", split, "' of ",
            info.count, " images");
  const torch::Tensor table = normalization_table(manifest);
  const std::int64_t image_bytes = manifest.image_bytes();
  const std::int64_t n = range.size();
  // Pageable host memory for this one-time upload: pinned blocks would stay page-locked in the
  // caching host allocator for the life of the process, and a synchronous copy at start-up costs
  // a few milliseconds for FER2013's 66 MB.
  torch::Tensor host_images;
  torch::Tensor host_labels;
  try {
    host_images = torch::empty({n, height_, width_, channels_}, torch::kUInt8);
    host_labels = torch::empty({n}, torch::kUInt8);
  } catch (const c10::Error& e) {
    throw DataError(
        detail::concat("split '", split, "' (", n * image_bytes / (1 << 20),
                       " MiB) does not fit in host memory: ", e.what_without_backtrace()),
        "use data.loader=stream for datasets larger than RAM");
  }
  std::int64_t shard_begin = 0;  // index in the split of the shard's first image
  for (int s = 0; s < static_cast<int>(info.shards.size()); ++s) {
    const std::int64_t shard_end = shard_begin + info.shards[s].count;
    const std::int64_t from = std::max(range.begin, shard_begin);
    const std::int64_t to = std::min(range.end, shard_end);
    if (from < to) {
      const ShardReader reader = open_verified_shard(dataset_dir, manifest, split, s);
      const std::int64_t at = from - range.begin;
      reader.read_images(from - shard_begin, to - from,
                         host_images.data_ptr<std::uint8_t>() + at * image_bytes);
      reader.read_labels(from - shard_begin, to - from, host_labels.data_ptr<std::uint8_t>() + at);
    }
    shard_begin = shard_end;
  }
  try {
    images_ = host_images.to(device);
    labels_ = host_labels.to(device, torch::kInt64);
  } catch (const c10::Error& e) {
    throw DataError(
        detail::concat("split '", split, "' (", n * image_bytes / (1 << 20),
                       " MiB) cannot be held on ", device.str(), ": ", e.what_without_backtrace()),
        "train with the CPU loader (data on the host) or free device memory");
  }
  table_ = table.to(device);
  const torch::TensorOptions index_options =
      torch::TensorOptions().dtype(torch::kInt64).device(device);
  channel_ = torch::arange(channels_, index_options);
  channel_offset_ = channel_ * kByteValues;
  rows_ = torch::arange(height_, index_options);
  cols_ = torch::arange(width_, index_options);
}

DeviceSplit DeviceSplit::train(const fs::path& dataset_dir, const Manifest& manifest,
                               torch::Device device) {
  const std::int64_t count = manifest.split("train").count;
  return DeviceSplit(dataset_dir, manifest, "train", EvalRange{0, count}, device);
}

DeviceSplit DeviceSplit::eval(const fs::path& dataset_dir, const Manifest& manifest,
                              const std::string& split, int world_size, int rank,
                              torch::Device device) {
  const EvalRange range = eval_range(manifest.split(split).count, world_size, rank);
  return DeviceSplit(dataset_dir, manifest, split, range, device);
}

torch::Tensor DeviceSplit::upload_plan(const std::vector<std::int64_t>& indices, std::int64_t epoch,
                                       const LoaderOptions& options) const {
  const auto batch = static_cast<std::int64_t>(indices.size());
  FER_CHECK(batch >= 1, ConfigError, "a batch needs at least one sample");
  FER_CHECK(epoch >= 0, ConfigError, "epoch must be >= 0, got ", epoch);
  const int pad = options.augment_options.pad;
  if (options.augment) {
    FER_CHECK(pad >= 0 && pad < height_ && pad < width_, ConfigError, "augmentation padding ", pad,
              " must be in [0, min(height, width)) = [0, ", std::min(height_, width_),
              ") for reflect padding");
  }
  torch::Tensor plan = torch::zeros({4, batch}, host_options(torch::kInt64, device()));
  std::int64_t* row = plan.data_ptr<std::int64_t>();
  std::int64_t* shift_y = row + batch;
  std::int64_t* shift_x = shift_y + batch;
  std::int64_t* flip = shift_x + batch;
  for (std::int64_t i = 0; i < batch; ++i) {
    const std::int64_t index = indices[static_cast<std::size_t>(i)];
    // Checked here: an out-of-range gather on a GPU is a device-side assert, not an exception.
    FER_CHECK(index >= range_.begin && index < range_.end, ConfigError, "sample index ", index,
              " is outside the held samples [", range_.begin, ", ", range_.end, ")");
    row[i] = index - range_.begin;
    if (!options.augment) continue;
    const AugmentDecision d = draw_augment(options.seed, epoch, index, options.augment_options);
    shift_y[i] = d.dy - pad;
    shift_x[i] = d.dx - pad;
    flip[i] = d.flip ? 1 : 0;
  }
  return plan.to(device(), /*non_blocking=*/true);
}

torch::Tensor DeviceSplit::crops(const torch::Tensor& plan, bool augment) const {
  const torch::Tensor rows = plan[0];
  if (!augment) return images_.index_select(0, rows);
  const std::int64_t batch = rows.size(0);
  // augment_with's definition, dst(y, x) = src(reflect(y + dy - pad), reflect(xs + dx - pad))
  // with xs = W-1-x when flipping, as two gathers: whole source rows by (sample, y), then within
  // each row the bytes of the source columns. Index grids are [B, H] and [B, W * C]; measured on
  // CPU, as fast as one gather by a [B, H, W] pixel index at 3 channels, 3-5x faster at 1.
  const torch::Tensor src_y = reflect(rows_.unsqueeze(0) + plan[1].unsqueeze(1), height_);  // B,H
  const torch::Tensor xs = cols_ + plan[3].unsqueeze(1) * ((width_ - 1) - 2 * cols_);       // B,W
  torch::Tensor src_x = reflect(xs + plan[2].unsqueeze(1), width_);                         // B,W
  if (channels_ > 1) src_x = (src_x.unsqueeze(2) * channels_ + channel_).view({batch, -1});
  const std::int64_t row_bytes = std::int64_t{width_} * channels_;
  const torch::Tensor lines = images_.view({-1, row_bytes})
                                  .index_select(0, (rows.unsqueeze(1) * height_ + src_y).view({-1}))
                                  .view({batch, height_, row_bytes});
  return lines.gather(2, src_x.view({batch, 1, row_bytes}).expand({batch, height_, row_bytes}))
      .view({batch, height_, width_, channels_});
}

torch::Tensor DeviceSplit::train_crops(const std::vector<std::int64_t>& indices, std::int64_t epoch,
                                       const LoaderOptions& options) const {
  return crops(upload_plan(indices, epoch, options), options.augment);
}

DeviceBatch DeviceSplit::train_batch(const std::vector<std::int64_t>& indices, std::int64_t epoch,
                                     const LoaderOptions& options,
                                     torch::MemoryFormat format) const {
  const torch::Tensor plan = upload_plan(indices, epoch, options);
  DeviceBatch batch;
  batch.images = normalize(crops(plan, options.augment), format);
  batch.labels = labels_.index_select(0, plan[0]);
  return batch;
}

DeviceBatch DeviceSplit::train_batch(const DistributedSampler& sampler, std::int64_t epoch,
                                     std::int64_t step, const LoaderOptions& options,
                                     torch::MemoryFormat format) const {
  return train_batch(sampler.batch_indices(epoch, step), epoch, options, format);
}

DeviceBatch DeviceSplit::eval_batch(std::int64_t first, std::int64_t count,
                                    torch::MemoryFormat format) const {
  FER_CHECK(first >= 0 && count >= 1 && first + count <= size(), ConfigError, "eval batch [", first,
            ", ", first + count, ") is outside the held samples [0, ", size(), ")");
  DeviceBatch batch;
  batch.images = normalize(images_.narrow(0, first, count), format);
  batch.labels = labels_.narrow(0, first, count);
  return batch;
}

torch::Tensor DeviceSplit::normalize(const torch::Tensor& crops, torch::MemoryFormat format) const {
  const std::int64_t c = channels_;
  if (format == torch::MemoryFormat::ChannelsLast) {
    // Look up in NHWC order; the NCHW view of the result has channels_last strides.
    torch::Tensor index = crops.to(torch::kInt64);
    if (c > 1) index.add_(channel_offset_);
    return lookup(index).permute({0, 3, 1, 2});
  }
  FER_CHECK(format == torch::MemoryFormat::Contiguous, ConfigError,
            "device batches come in Contiguous or ChannelsLast memory format, not ", format);
  torch::Tensor index = crops.permute({0, 3, 1, 2})
                            .to(torch::kInt64, /*non_blocking=*/false, /*copy=*/false,
                                torch::MemoryFormat::Contiguous);
  if (c > 1) index.add_(channel_offset_.view({1, c, 1, 1}));
  return lookup(index);
}

torch::Tensor DeviceSplit::lookup(const torch::Tensor& index) const {
  // index_select on the flat table, not take(): 1.5-4x faster on CPU (LibTorch 1.13).
  return table_.index_select(0, index.view({-1})).view(index.sizes());
}

}  // namespace fer
