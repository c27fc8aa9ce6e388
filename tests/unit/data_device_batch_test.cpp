// DeviceSplit (src/data/device_batch.h) on CPU tensors against the CPU path it replaces on a GPU:
// its uint8 crops are augment_image()'s byte for byte for every sample of an epoch, and its
// normalized batches are the memory-mode TrainLoader's and the EvalLoader's floats bit for bit.
// Datasets are written with the real shard writer; images are not square (H != W) so that a
// swapped axis cannot pass. The CUDA case compares a GPU against the CPU and skips without one.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <set>

#include "common/errors.h"
#include "common/fs_util.h"
#include "data/augment.h"
#include "data/checksum.h"
#include "data/device_batch.h"
#include "data/loader.h"
#include "data/manifest.h"
#include "data/sampler.h"
#include "data/shard.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

using testing::TempFolder;

constexpr int kClasses = 5;
constexpr int kHeight = 9;  // rows
constexpr int kWidth = 7;   // columns; pad 4 < 7 is the widest reflect padding this image allows
constexpr int kTrain = 48;  // divisible by every global batch below: an epoch uses every sample
const std::vector<int> kTrainShards = {20, 28};
const std::vector<int> kValShards = {13, 10};

// Image g of a split: every byte value occurs, and neighbouring pixels and channels differ.
std::vector<std::uint8_t> image_of(std::int64_t g, std::int64_t bytes) {
  std::vector<std::uint8_t> img(static_cast<std::size_t>(bytes));
  for (std::int64_t p = 0; p < bytes; ++p) {
    img[p] = static_cast<std::uint8_t>((g * 131 + p * 37 + (p * p) % 17) % 256);
  }
  return img;
}

std::uint8_t label_of(std::int64_t g) { return static_cast<std::uint8_t>((g * 3 + 2) % kClasses); }

// Writes train and val splits with the real shard writer; channel-specific mean and std, so a
// lookup in the wrong channel's table cannot pass.
Manifest write_dataset(const fs::path& dir, int channels) {
  Manifest m;
  for (int k = 0; k < kClasses; ++k) m.classes.push_back("c" + std::to_string(k));
  m.height = kHeight;
  m.width = kWidth;
  m.channels = channels;
  for (int c = 0; c < channels; ++c) {
    m.mean.push_back(0.51 - 0.07 * c);
    m.std.push_back(0.247 + 0.031 * c);
  }
  m.source_kind = "csv";
  m.source_path = "synthetic";
  m.packer_version = "test";
  for (const auto& [name, counts] : std::vector<std::pair<std::string, std::vector<int>>>{
           {"train", kTrainShards}, {"val", kValShards}}) {
    SplitInfo info;
    info.class_counts.assign(kClasses, 0);
    const int num = static_cast<int>(counts.size());
    std::int64_t g = 0;
    for (int k = 0; k < num; ++k) {
      const std::string file = shard_file_name(name, k, num);
      ShardWriter writer(dir / file, ShardLayout{name, k, num, kHeight, kWidth, channels}, 0,
                         /*chunk_images=*/8);
      for (int i = 0; i < counts[k]; ++i, ++g) {
        writer.append(image_of(g, m.image_bytes()).data(), label_of(g), "x" + std::to_string(g));
        ++info.class_counts[label_of(g)];
      }
      writer.close();
      info.shards.push_back({file, counts[k], static_cast<std::int64_t>(fs::file_size(dir / file)),
                             file_checksum(dir / file)});
    }
    info.count = g;
    m.splits[name] = info;
  }
  write_file_atomic(dir / kManifestName, manifest_to_json(m));
  return load_manifest(dir);
}

LoaderOptions options_with(int batch, bool flip, std::uint64_t seed) {
  LoaderOptions o;
  o.mode = "memory";
  o.batch_per_rank = batch;
  o.workers = 2;
  o.augment = true;
  o.augment_options.pad = 4;
  o.augment_options.flip = flip;
  o.seed = seed;
  return o;
}

// Byte-exact and bit-exact comparisons, reporting the first differing element.
template <typename T>
void expect_same_bytes(const torch::Tensor& actual, const T* expected, std::int64_t n,
                       const std::string& what) {
  const torch::Tensor a = actual.contiguous();
  ASSERT_EQ(a.numel(), n) << what;
  const T* got = a.data_ptr<T>();
  if (std::memcmp(got, expected, static_cast<std::size_t>(n) * sizeof(T)) == 0) return;
  for (std::int64_t i = 0; i < n; ++i) {
    if (std::memcmp(&got[i], &expected[i], sizeof(T)) != 0) {
      ADD_FAILURE() << what << ": element " << i << " is " << +got[i] << ", expected "
                    << +expected[i];
      return;
    }
  }
}

std::vector<Batch> run_epoch(TrainLoader& loader, std::int64_t epoch) {
  loader.start_epoch(epoch);
  std::vector<Batch> out;
  Batch b;
  while (loader.next(&b)) out.push_back(b);
  return out;
}

// ----- train crops and batches ------------------------------------------------------------------

struct Variant {
  int channels;
  bool flip;
};

void PrintTo(const Variant& v, std::ostream* os) {
  *os << v.channels << " channels, flip " << (v.flip ? "on" : "off");
}

class DeviceTrainSplit : public ::testing::TestWithParam<Variant> {
 protected:
  DeviceTrainSplit()
      : folder_("device_batch_" + std::to_string(GetParam().channels) +
                (GetParam().flip ? "_flip" : "")),
        manifest_(write_dataset(folder_.path(), GetParam().channels)),
        split_(DeviceSplit::train(folder_.path(), manifest_, torch::kCPU)) {}

  TempFolder folder_;
  Manifest manifest_;
  DeviceSplit split_;
};

TEST_P(DeviceTrainSplit, HoldsTheSplitAsUint8WithInt64Labels) {
  const std::int64_t bytes = manifest_.image_bytes();
  ASSERT_EQ(split_.size(), kTrain);
  EXPECT_EQ(split_.images().scalar_type(), torch::kUInt8);
  EXPECT_EQ(split_.images().sizes(),
            torch::IntArrayRef({kTrain, kHeight, kWidth, GetParam().channels}));
  EXPECT_EQ(split_.labels().scalar_type(), torch::kInt64);
  for (std::int64_t g = 0; g < kTrain; ++g) {
    expect_same_bytes(split_.images()[g], image_of(g, bytes).data(), bytes,
                      "image " + std::to_string(g));
    EXPECT_EQ(split_.labels()[g].item<std::int64_t>(), label_of(g));
  }
}

// Every sample of several epochs and seeds, one batch holding the whole split.
TEST_P(DeviceTrainSplit, CropsOfEverySampleEqualAugmentImage) {
  const std::int64_t bytes = manifest_.image_bytes();
  std::vector<std::int64_t> all(kTrain);
  for (std::int64_t g = 0; g < kTrain; ++g) all[g] = g;
  std::vector<std::uint8_t> expected(static_cast<std::size_t>(bytes));
  std::set<std::pair<int, int>> offsets;  // (dy, dx) seen, to know the draws were exercised
  for (std::uint64_t seed : {0ULL, 7ULL, 0xfeedbeefULL}) {
    const LoaderOptions options = options_with(8, GetParam().flip, seed);
    for (std::int64_t epoch : {0, 1, 5}) {
      const torch::Tensor crops = split_.train_crops(all, epoch, options);
      ASSERT_EQ(crops.sizes(), torch::IntArrayRef({kTrain, kHeight, kWidth, GetParam().channels}));
      for (std::int64_t g = 0; g < kTrain; ++g) {
        augment_image(image_of(g, bytes).data(), kHeight, kWidth, GetParam().channels, seed, epoch,
                      g, options.augment_options, expected.data());
        expect_same_bytes(crops[g], expected.data(), bytes,
                          "seed " + std::to_string(seed) + " epoch " + std::to_string(epoch) +
                              " sample " + std::to_string(g));
        const AugmentDecision d = draw_augment(seed, epoch, g, options.augment_options);
        offsets.insert({d.dy, d.dx});
      }
    }
  }
  EXPECT_GT(offsets.size(), 40u) << "most of the 81 crop offsets should occur";
}

// The sampler's slices for world 1 and 2, every rank: crops equal augment_image, and the
// normalized batch equals the memory-mode TrainLoader's floats and labels bit for bit.
TEST_P(DeviceTrainSplit, BatchesEqualTheMemoryTrainLoaderBitForBit) {
  const std::int64_t bytes = manifest_.image_bytes();
  std::vector<std::uint8_t> expected(static_cast<std::size_t>(bytes));
  for (std::uint64_t seed : {3ULL, 1234567ULL}) {
    for (int world : {1, 2}) {
      std::vector<int> seen(kTrain, 0);
      for (int rank = 0; rank < world; ++rank) {
        const LoaderOptions options = options_with(12 / world, GetParam().flip, seed);
        TrainLoader loader(folder_.path(), manifest_, world, rank, options);
        const DistributedSampler sampler(kTrain, world, rank, options.batch_per_rank, seed);
        for (std::int64_t epoch : {0, 2}) {
          const std::vector<Batch> cpu = run_epoch(loader, epoch);
          ASSERT_EQ(static_cast<std::int64_t>(cpu.size()), sampler.steps_per_epoch());
          for (std::int64_t step = 0; step < sampler.steps_per_epoch(); ++step) {
            const std::string where = "seed " + std::to_string(seed) +
                                      " W=" + std::to_string(world) + " rank " +
                                      std::to_string(rank) + " epoch " + std::to_string(epoch) +
                                      " step " + std::to_string(step);
            const std::vector<std::int64_t> indices = sampler.batch_indices(epoch, step);
            const torch::Tensor crops = split_.train_crops(indices, epoch, options);
            for (std::size_t i = 0; i < indices.size(); ++i) {
              augment_image(image_of(indices[i], bytes).data(), kHeight, kWidth,
                            GetParam().channels, seed, epoch, indices[i], options.augment_options,
                            expected.data());
              expect_same_bytes(crops[static_cast<std::int64_t>(i)], expected.data(), bytes,
                                where + " crop " + std::to_string(i));
              if (epoch == 0) ++seen[indices[i]];
            }
            const DeviceBatch batch = split_.train_batch(sampler, epoch, step, options);
            ASSERT_EQ(batch.images.scalar_type(), torch::kFloat32);
            ASSERT_EQ(
                batch.images.sizes(),
                torch::IntArrayRef({options.batch_per_rank, GetParam().channels, kHeight, kWidth}));
            EXPECT_TRUE(batch.images.is_contiguous());
            expect_same_bytes(batch.images, cpu[step].images.data(),
                              static_cast<std::int64_t>(cpu[step].images.size()),
                              where + " images");
            expect_same_bytes(batch.labels, cpu[step].labels.data(),
                              static_cast<std::int64_t>(cpu[step].labels.size()),
                              where + " labels");
            const DeviceBatch last =
                split_.train_batch(indices, epoch, options, torch::MemoryFormat::ChannelsLast);
            EXPECT_TRUE(last.images.is_contiguous(torch::MemoryFormat::ChannelsLast));
            EXPECT_TRUE(torch::equal(last.images, batch.images)) << where << " channels_last";
          }
        }
      }
      for (int g = 0; g < kTrain; ++g) {
        EXPECT_EQ(seen[g], 1) << "W=" << world << ": an epoch covers sample " << g << " once";
      }
    }
  }
}

TEST_P(DeviceTrainSplit, WithoutAugmentationTheCropsAreTheStoredImages) {
  LoaderOptions options = options_with(4, GetParam().flip, 9);
  options.augment = false;
  options.augment_options.pad = 1000;  // not read when augmentation is off, as in TrainLoader
  const std::vector<std::int64_t> indices = {47, 0, 13, 13, 30};
  const torch::Tensor crops = split_.train_crops(indices, 3, options);
  for (std::size_t i = 0; i < indices.size(); ++i) {
    EXPECT_TRUE(torch::equal(crops[static_cast<std::int64_t>(i)], split_.images()[indices[i]]));
  }
}

INSTANTIATE_TEST_SUITE_P(ChannelsAndFlip, DeviceTrainSplit,
                         ::testing::Values(Variant{1, true}, Variant{1, false}, Variant{3, true},
                                           Variant{3, false}),
                         [](const ::testing::TestParamInfo<Variant>& info) {
                           return std::to_string(info.param.channels) + "ch_" +
                                  (info.param.flip ? "flip" : "noflip");
                         });

TEST(DeviceTrainSplitEdges, ZeroPaddingWithoutFlipIsTheIdentityAndCentredCropsDoNotShift) {
  TempFolder folder("device_batch_edges");
  const Manifest m = write_dataset(folder.path(), 3);
  const DeviceSplit split = DeviceSplit::train(folder.path(), m, torch::kCPU);
  const std::vector<std::int64_t> indices = {5, 6, 7, 40};
  LoaderOptions options = options_with(4, /*flip=*/false, 11);
  options.augment_options.pad = 0;
  EXPECT_TRUE(torch::equal(split.train_crops(indices, 2, options),
                           split.images().index_select(0, torch::tensor(indices))));
  options.augment_options.pad = 3;
  options.augment_options.crop = false;
  EXPECT_TRUE(torch::equal(split.train_crops(indices, 2, options),
                           split.images().index_select(0, torch::tensor(indices))));
}

TEST(DeviceTrainSplitEdges, RejectsWhatTheCpuPathRejects) {
  TempFolder folder("device_batch_errors");
  const Manifest m = write_dataset(folder.path(), 1);
  const DeviceSplit split = DeviceSplit::train(folder.path(), m, torch::kCPU);
  LoaderOptions options = options_with(4, true, 0);
  EXPECT_THROW(split.train_crops({0, kTrain}, 0, options), ConfigError);
  EXPECT_THROW(split.train_crops({-1}, 0, options), ConfigError);
  EXPECT_THROW(split.train_crops({}, 0, options), ConfigError);
  EXPECT_THROW(split.train_crops({0}, -1, options), ConfigError);
  options.augment_options.pad = kWidth;  // reflect padding needs pad < min(H, W)
  EXPECT_THROW(split.train_batch({0}, 0, options), ConfigError);
  EXPECT_THROW(split.eval_batch(0, 0), ConfigError);
  EXPECT_THROW(split.eval_batch(kTrain - 1, 2), ConfigError);
  EXPECT_THROW(split.eval_batch(-1, 1), ConfigError);
  EXPECT_THROW(split.eval_batch(0, 1, torch::MemoryFormat::ChannelsLast3d), ConfigError);
  EXPECT_THROW(DeviceSplit(folder.path(), m, "train", EvalRange{0, kTrain + 1}, torch::kCPU),
               ConfigError);
}

TEST(DeviceTrainSplitEdges, ACorruptShardIsADataErrorNamingIt) {
  TempFolder folder("device_batch_corrupt");
  const Manifest m = write_dataset(folder.path(), 1);
  const fs::path shard = folder.path() / m.split("train").shards[1].file;
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(shard) / 2));
    f.put('\x5a');
  }
  try {
    DeviceSplit::train(folder.path(), m, torch::kCPU);
    FAIL() << "no DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(shard.filename().string()), std::string::npos) << e.what();
  }
}

// ----- evaluation batches -----------------------------------------------------------------------

TEST(DeviceEvalSplit, BatchesEqualTheEvalLoaderBitForBit) {
  for (int channels : {1, 3}) {
    TempFolder folder("device_batch_eval_" + std::to_string(channels));
    const Manifest m = write_dataset(folder.path(), channels);
    for (int world : {1, 2, 3}) {
      for (int rank = 0; rank < world; ++rank) {
        const DeviceSplit split =
            DeviceSplit::eval(folder.path(), m, "val", world, rank, torch::kCPU);
        const EvalRange range = eval_range(m.split("val").count, world, rank);
        EXPECT_EQ(split.range().begin, range.begin);
        EXPECT_EQ(split.size(), range.size());
        for (int batch_size : {4, 23}) {
          EvalLoader loader(folder.path(), m, "val", world, rank, batch_size);
          Batch cpu;
          std::int64_t first = 0;
          while (loader.next(&cpu)) {
            const std::string where = std::to_string(channels) +
                                      " channels W=" + std::to_string(world) + " rank " +
                                      std::to_string(rank) + " batch " + std::to_string(cpu.step);
            const DeviceBatch batch = split.eval_batch(first, cpu.size);
            EXPECT_TRUE(batch.images.is_contiguous());
            expect_same_bytes(batch.images, cpu.images.data(),
                              static_cast<std::int64_t>(cpu.images.size()), where + " images");
            expect_same_bytes(batch.labels, cpu.labels.data(),
                              static_cast<std::int64_t>(cpu.labels.size()), where + " labels");
            const DeviceBatch last =
                split.eval_batch(first, cpu.size, torch::MemoryFormat::ChannelsLast);
            EXPECT_TRUE(torch::equal(last.images, batch.images)) << where << " channels_last";
            first += cpu.size;
          }
          EXPECT_EQ(first, split.size());
        }
      }
    }
  }
}

// ----- CUDA -------------------------------------------------------------------------------------

TEST(DeviceSplitCuda, GivesTheCpuResultsOnAGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs CUDA";
  TempFolder folder("device_batch_cuda");
  const Manifest m = write_dataset(folder.path(), 3);
  const DeviceSplit cpu = DeviceSplit::train(folder.path(), m, torch::kCPU);
  const DeviceSplit gpu = DeviceSplit::train(folder.path(), m, torch::Device(torch::kCUDA, 0));
  EXPECT_TRUE(gpu.images().is_cuda());
  const LoaderOptions options = options_with(12, true, 5);
  const DistributedSampler sampler(kTrain, 1, 0, 12, options.seed);
  for (std::int64_t step = 0; step < sampler.steps_per_epoch(); ++step) {
    const DeviceBatch a = cpu.train_batch(sampler, 1, step, options);
    const DeviceBatch b = gpu.train_batch(sampler, 1, step, options);
    EXPECT_TRUE(b.images.is_cuda());
    EXPECT_TRUE(torch::equal(a.images, b.images.cpu())) << "step " << step;
    EXPECT_TRUE(torch::equal(a.labels, b.labels.cpu())) << "step " << step;
  }
  const DeviceSplit val_cpu = DeviceSplit::eval(folder.path(), m, "val", 1, 0, torch::kCPU);
  const DeviceSplit val_gpu =
      DeviceSplit::eval(folder.path(), m, "val", 1, 0, torch::Device(torch::kCUDA, 0));
  EXPECT_TRUE(torch::equal(val_cpu.eval_batch(0, val_cpu.size()).images,
                           val_gpu.eval_batch(0, val_gpu.size()).images.cpu()));
}

}  // namespace
}  // namespace fer
