// Input pipeline: DistributedSampler, eval ranges, augmentation, normalization, TrainLoader
// (memory and stream modes) and EvalLoader, on tiny datasets written with the real shard writer.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <set>
#include <thread>

#include "common/errors.h"
#include "common/fs_util.h"
#include "data/augment.h"
#include "data/checksum.h"
#include "data/loader.h"
#include "data/manifest.h"
#include "data/sampler.h"
#include "data/shard.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

using testing::TempFolder;

constexpr int kClasses = 3;
constexpr double kMean = 0.5;
constexpr double kStd = 0.25;

// ----- tiny datasets ----------------------------------------------------------------------------

// Image g of a split: its first two bytes encode g, so a batch can be traced back to its source.
std::vector<std::uint8_t> image_of(std::int64_t g, std::int64_t bytes) {
  std::vector<std::uint8_t> img(static_cast<std::size_t>(bytes));
  for (std::int64_t p = 0; p < bytes; ++p)
    img[p] = static_cast<std::uint8_t>((g * 31 + p * 7) % 251);
  img[0] = static_cast<std::uint8_t>(g & 0xff);
  img[1] = static_cast<std::uint8_t>((g >> 8) & 0xff);
  return img;
}

std::uint8_t label_of(std::int64_t g) { return static_cast<std::uint8_t>((g * 7 + 1) % kClasses); }

struct SplitSpec {
  std::string name;
  std::vector<int> shard_counts;
};

// Writes a dataset with the real writer and returns its manifest.
Manifest write_dataset(const fs::path& dir, const std::vector<SplitSpec>& splits, int side,
                       int channels, int chunk_images) {
  Manifest m;
  m.classes = {"a", "b", "c"};
  m.height = m.width = side;
  m.channels = channels;
  m.mean.assign(channels, kMean);
  m.std.assign(channels, kStd);
  m.source_kind = "csv";
  m.source_path = "synthetic";
  m.packer_version = "test";
  for (const SplitSpec& spec : splits) {
    SplitInfo info;
    info.class_counts.assign(kClasses, 0);
    const int num = static_cast<int>(spec.shard_counts.size());
    std::int64_t g = 0;
    for (int k = 0; k < num; ++k) {
      const std::string file = shard_file_name(spec.name, k, num);
      ShardWriter writer(dir / file, ShardLayout{spec.name, k, num, side, side, channels}, 0,
                         chunk_images);
      for (int i = 0; i < spec.shard_counts[k]; ++i, ++g) {
        writer.append(image_of(g, m.image_bytes()).data(), label_of(g), "x" + std::to_string(g));
        ++info.class_counts[label_of(g)];
      }
      writer.close();
      info.shards.push_back({file, spec.shard_counts[k],
                             static_cast<std::int64_t>(fs::file_size(dir / file)),
                             file_checksum(dir / file)});
    }
    info.count = g;
    m.splits[spec.name] = info;
  }
  write_file_atomic(dir / kManifestName, manifest_to_json(m));
  return load_manifest(dir);
}

// The split index encoded in image i of a batch (needs augmentation off: pixels 0 and 1 intact).
std::int64_t identity(const Batch& batch, int i, std::int64_t image_floats, int channels) {
  auto byte = [&](std::int64_t at) {
    return static_cast<std::int64_t>(std::lround((batch.images[at] * kStd + kMean) * 255.0));
  };
  const std::int64_t base = i * image_floats;
  // CHW: pixel (0,0) of channel 0 is at 0; byte 1 is pixel (0,1) of channel 0 for one channel,
  // or pixel (0,0) of channel 1 for more.
  const std::int64_t second = channels == 1 ? base + 1 : base + image_floats / channels;
  return byte(base) | (byte(second) << 8);
}

// What rank `rank` must receive in memory mode, computed without the loader.
std::vector<Batch> expected_memory_epoch(const Manifest& m, int world_size, int rank,
                                         const LoaderOptions& options, std::int64_t epoch) {
  DistributedSampler sampler(m.split("train").count, world_size, rank, options.batch_per_rank,
                             options.seed);
  const std::int64_t bytes = m.image_bytes();
  std::vector<Batch> out;
  std::vector<std::uint8_t> augmented(bytes);
  for (std::int64_t step = 0; step < sampler.steps_per_epoch(); ++step) {
    Batch b;
    b.epoch = epoch;
    b.step = step;
    b.size = options.batch_per_rank;
    b.images.resize(b.size * bytes);
    for (std::int64_t index : sampler.batch_indices(epoch, step)) {
      const auto image = image_of(index, bytes);
      const std::uint8_t* src = image.data();
      if (options.augment) {
        augment_image(src, m.height, m.width, m.channels, options.seed, epoch, index,
                      options.augment_options, augmented.data());
        src = augmented.data();
      }
      normalize_to_chw(src, m.height, m.width, m.channels, m.mean.data(), m.std.data(),
                       b.images.data() + b.labels.size() * bytes);
      b.labels.push_back(label_of(index));
    }
    out.push_back(std::move(b));
  }
  return out;
}

std::vector<Batch> run_epoch(TrainLoader& loader, std::int64_t epoch, std::int64_t first = 0) {
  loader.start_epoch(epoch, first);
  std::vector<Batch> out;
  Batch b;
  while (loader.next(&b)) out.push_back(b);
  return out;
}

void expect_same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t s = 0; s < a.size(); ++s) {
    EXPECT_EQ(a[s].epoch, b[s].epoch);
    EXPECT_EQ(a[s].step, b[s].step);
    EXPECT_EQ(a[s].size, b[s].size);
    EXPECT_EQ(a[s].labels, b[s].labels) << "step " << a[s].step;
    EXPECT_TRUE(a[s].images == b[s].images) << "images differ at step " << a[s].step;
  }
}

LoaderOptions options_with(const std::string& mode, int batch, int workers, bool augment) {
  LoaderOptions o;
  o.mode = mode;
  o.batch_per_rank = batch;
  o.workers = workers;
  o.prefetch_batches = 3;
  o.shuffle_buffer = 16;
  o.augment = augment;
  o.augment_options.pad = 2;
  o.seed = 1234;
  return o;
}

// ----- sampler ----------------------------------------------------------------------------------

TEST(Sampler, EachEpochPermutesEveryIndexExactlyOnce) {
  DistributedSampler sampler(103, 1, 0, 10, 7);
  for (std::int64_t epoch : {0, 1, 5}) {
    auto perm = sampler.epoch_permutation(epoch);
    ASSERT_EQ(perm.size(), 103u);
    std::sort(perm.begin(), perm.end());
    for (std::int64_t i = 0; i < 103; ++i) ASSERT_EQ(perm[i], i);
  }
}

TEST(Sampler, RanksTakeDisjointContiguousSlicesOfTheKeptPermutation) {
  const int world = 3, batch = 5;
  const std::int64_t n = 100;  // 6 steps of 15, 10 dropped
  std::vector<std::int64_t> seen;
  for (int rank = 0; rank < world; ++rank) {
    DistributedSampler sampler(n, world, rank, batch, 9);
    ASSERT_EQ(sampler.steps_per_epoch(), 6);
    const auto perm = sampler.epoch_permutation(2);
    for (std::int64_t step = 0; step < 6; ++step) {
      const auto idx = sampler.batch_indices(2, step);
      const auto at = perm.begin() + step * world * batch + rank * batch;
      EXPECT_EQ(idx, std::vector<std::int64_t>(at, at + batch));
      seen.insert(seen.end(), idx.begin(), idx.end());
    }
  }
  std::set<std::int64_t> unique(seen.begin(), seen.end());
  EXPECT_EQ(unique.size(), 90u);
  EXPECT_EQ(seen.size(), 90u);
}

TEST(Sampler, GlobalBatchIsTheSameForAnyWorldSizeWithTheSameGlobalBatch) {
  const std::int64_t n = 200;
  DistributedSampler single(n, 1, 0, 16, 42);
  for (int world : {2, 4}) {
    for (std::int64_t epoch : {0, 3}) {
      for (std::int64_t step = 0; step < single.steps_per_epoch(); ++step) {
        std::vector<std::int64_t> global;
        for (int rank = 0; rank < world; ++rank) {
          DistributedSampler part(n, world, rank, 16 / world, 42);
          ASSERT_EQ(part.steps_per_epoch(), single.steps_per_epoch());
          const auto idx = part.batch_indices(epoch, step);
          global.insert(global.end(), idx.begin(), idx.end());
        }
        EXPECT_EQ(global, single.batch_indices(epoch, step)) << "W=" << world << " step " << step;
      }
    }
  }
}

TEST(Sampler, DifferentEpochsAndSeedsGiveDifferentOrders) {
  DistributedSampler a(500, 1, 0, 10, 1), b(500, 1, 0, 10, 2);
  EXPECT_NE(a.epoch_permutation(0), a.epoch_permutation(1));
  EXPECT_NE(a.epoch_permutation(0), b.epoch_permutation(0));
  EXPECT_EQ(a.epoch_permutation(3), DistributedSampler(500, 2, 1, 4, 1).epoch_permutation(3));
}

TEST(Sampler, StepsPerEpochDropsTheLastPartialGlobalBatch) {
  EXPECT_EQ(DistributedSampler(100, 2, 0, 8, 0).steps_per_epoch(), 6);  // 96 used, 4 dropped
  EXPECT_EQ(DistributedSampler(16, 2, 1, 8, 0).steps_per_epoch(), 1);
  EXPECT_EQ(DistributedSampler(31, 1, 0, 16, 0).steps_per_epoch(), 1);
  EXPECT_EQ(DistributedSampler(28709, 4, 3, 64, 0).steps_per_epoch(), 112);
  DistributedSampler s(100, 2, 0, 8, 0);
  EXPECT_THROW(s.batch_indices(0, 6), ConfigError);
}

TEST(Sampler, GlobalBatchLargerThanTheSplitIsAConfigError) {
  try {
    DistributedSampler(15, 2, 0, 8, 0);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("larger than the training split"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(DistributedSampler(100, 2, 2, 8, 0), ConfigError);
  EXPECT_THROW(DistributedSampler(100, 0, 0, 8, 0), ConfigError);
  EXPECT_THROW(DistributedSampler(100, 1, 0, 0, 0), ConfigError);
}

TEST(Sampler, ConcurrentCallsAcrossEpochsMatchSequentialOnes) {
  DistributedSampler shared(1000, 2, 1, 10, 5);
  DistributedSampler reference(1000, 2, 1, 10, 5);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const std::int64_t epoch = (i + t) % 3, step = (i * 7 + t) % 50;
        if (shared.batch_indices(epoch, step) !=
            DistributedSampler(1000, 2, 1, 10, 5).batch_indices(epoch, step)) {
          ++mismatches;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(shared.batch_indices(1, 3), reference.batch_indices(1, 3));
}

TEST(EvalRange, CoversEverySampleExactlyOnceWithBalancedParts) {
  for (std::int64_t n : {0, 1, 3, 7, 37, 101}) {
    for (int world = 1; world <= 4; ++world) {
      std::vector<int> hits(n, 0);
      std::int64_t smallest = n, largest = 0, previous_end = 0;
      for (int rank = 0; rank < world; ++rank) {
        const EvalRange r = eval_range(n, world, rank);
        EXPECT_EQ(r.begin, previous_end) << "contiguous, in rank order";
        previous_end = r.end;
        smallest = std::min(smallest, r.size());
        largest = std::max(largest, r.size());
        for (std::int64_t i = r.begin; i < r.end; ++i) ++hits[i];
      }
      EXPECT_EQ(previous_end, n);
      EXPECT_LE(largest - smallest, 1) << "n=" << n << " W=" << world;
      for (std::int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i], 1) << "n=" << n << " i=" << i;
    }
  }
  EXPECT_THROW(eval_range(10, 2, 2), ConfigError);
}

// ----- augmentation and normalization -----------------------------------------------------------

std::vector<std::uint8_t> augmented(const std::vector<std::uint8_t>& src, int h, int w, int c,
                                    std::uint64_t seed, std::int64_t epoch, std::int64_t index,
                                    const AugmentOptions& options = {}) {
  std::vector<std::uint8_t> dst(src.size());
  augment_image(src.data(), h, w, c, seed, epoch, index, options, dst.data());
  return dst;
}

TEST(Augment, IsAPureFunctionOfSeedEpochAndIndex) {
  const auto img = image_of(3, 12 * 12 * 3);
  const auto first = augmented(img, 12, 12, 3, 11, 2, 77);
  // Other calls in between, and a call from another thread, change nothing.
  for (int i = 0; i < 50; ++i) augmented(img, 12, 12, 3, 11, 2, i);
  std::vector<std::uint8_t> from_thread;
  std::thread([&] { from_thread = augmented(img, 12, 12, 3, 11, 2, 77); }).join();
  EXPECT_EQ(augmented(img, 12, 12, 3, 11, 2, 77), first);
  EXPECT_EQ(from_thread, first);
  // Each of seed, epoch and index changes the draws for some sample.
  int seed_diff = 0, epoch_diff = 0, index_diff = 0;
  for (int i = 0; i < 40; ++i) {
    const auto base = augmented(img, 12, 12, 3, 11, 2, i);
    seed_diff += augmented(img, 12, 12, 3, 12, 2, i) != base;
    epoch_diff += augmented(img, 12, 12, 3, 11, 3, i) != base;
    index_diff += augmented(img, 12, 12, 3, 11, 2, i + 1000) != base;
  }
  EXPECT_GT(seed_diff, 20);
  EXPECT_GT(epoch_diff, 20);
  EXPECT_GT(index_diff, 20);
}

TEST(Augment, ReflectPaddingOfA4x4ImageMatchesHandComputedCrops) {
  // 0  1  2  3 / 4 5 6 7 / 8 9 10 11 / 12 13 14 15, padded by 2 with "reflect":
  // row -1 is row 1, row 4 is row 2, row 5 is row 1; column -1 is column 1, column 4 is column 2.
  std::vector<std::uint8_t> src(16);
  for (int i = 0; i < 16; ++i) src[i] = static_cast<std::uint8_t>(i);
  std::vector<std::uint8_t> dst(16);
  augment_with(src.data(), 4, 4, 1, 2, /*dy=*/0, /*dx=*/0, false, dst.data());
  EXPECT_EQ(dst, (std::vector<std::uint8_t>{10, 9, 8, 9, 6, 5, 4, 5, 2, 1, 0, 1, 6, 5, 4, 5}));
  augment_with(src.data(), 4, 4, 1, 2, /*dy=*/4, /*dx=*/3, false, dst.data());
  EXPECT_EQ(dst,
            (std::vector<std::uint8_t>{9, 10, 11, 10, 13, 14, 15, 14, 9, 10, 11, 10, 5, 6, 7, 6}));
  augment_with(src.data(), 4, 4, 1, 2, /*dy=*/2, /*dx=*/2, true, dst.data());
  EXPECT_EQ(dst, (std::vector<std::uint8_t>{3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12}));
  augment_with(src.data(), 4, 4, 1, 2, /*dy=*/1, /*dx=*/0, true, dst.data());
  EXPECT_EQ(dst, (std::vector<std::uint8_t>{5, 4, 5, 6, 1, 0, 1, 2, 5, 4, 5, 6, 9, 8, 9, 10}));
}

TEST(Augment, MatchesExplicitReflectPaddingForEveryOffsetAndFlip) {
  const int h = 5, w = 7, c = 3, pad = 3;
  const auto src = image_of(9, h * w * c);
  const int ph = h + 2 * pad, pw = w + 2 * pad;
  auto reflect = [](int i, int n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); };
  std::vector<std::uint8_t> padded(ph * pw * c);  // numpy.pad(mode="reflect")
  for (int y = 0; y < ph; ++y)
    for (int x = 0; x < pw; ++x)
      for (int ch = 0; ch < c; ++ch)
        padded[(y * pw + x) * c + ch] =
            src[(reflect(y - pad, h) * w + reflect(x - pad, w)) * c + ch];
  std::vector<std::uint8_t> dst(src.size()), want(src.size());
  for (int dy = 0; dy <= 2 * pad; ++dy) {
    for (int dx = 0; dx <= 2 * pad; ++dx) {
      for (bool flip : {false, true}) {
        for (int y = 0; y < h; ++y)
          for (int x = 0; x < w; ++x)
            for (int ch = 0; ch < c; ++ch)
              want[(y * w + x) * c + ch] =
                  padded[((y + dy) * pw + (flip ? w - 1 - x : x) + dx) * c + ch];
        augment_with(src.data(), h, w, c, pad, dy, dx, flip, dst.data());
        ASSERT_EQ(dst, want) << "dy=" << dy << " dx=" << dx << " flip=" << flip;
      }
    }
  }
}

TEST(Augment, FlipsAboutHalfOfTheImages) {
  const int side = 6;
  const auto src = image_of(1, side * side);
  std::vector<std::uint8_t> mirrored(src.size());
  augment_with(src.data(), side, side, 1, 0, 0, 0, true, mirrored.data());
  AugmentOptions only_flip;
  only_flip.pad = 0;
  int flipped = 0;
  const int n = 4000;
  for (int i = 0; i < n; ++i) {
    const auto out = augmented(src, side, side, 1, 3, 0, i, only_flip);
    ASSERT_TRUE(out == src || out == mirrored);
    flipped += out == mirrored;
  }
  EXPECT_NEAR(flipped, n / 2, 4 * std::sqrt(n / 4.0));  // 4 sigma
}

TEST(Augment, CropOffsetsCoverTheWholeRangeUniformly) {
  AugmentOptions options;
  options.pad = 2;
  std::vector<int> counts(25, 0);
  const int n = 5000;
  for (int i = 0; i < n; ++i) {
    const AugmentDecision d = draw_augment(8, 1, i, options);
    ASSERT_GE(d.dy, 0);
    ASSERT_LE(d.dy, 4);
    ASSERT_GE(d.dx, 0);
    ASSERT_LE(d.dx, 4);
    ++counts[d.dy * 5 + d.dx];
  }
  for (int k = 0; k < 25; ++k) EXPECT_NEAR(counts[k], n / 25, 60) << "offset " << k;
  options.crop = false;
  const AugmentDecision centred = draw_augment(8, 1, 0, options);
  EXPECT_EQ(centred.dy, 2);
  EXPECT_EQ(centred.dx, 2);
  options.flip = false;
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(draw_augment(8, 1, i, options).flip);
}

TEST(Augment, ZeroPaddingWithoutFlipIsTheIdentity) {
  AugmentOptions options;
  options.pad = 0;
  options.flip = false;
  const auto src = image_of(5, 9 * 7 * 3);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(augmented(src, 9, 7, 3, 1, 2, i, options), src);
  options.pad = 3;
  options.crop = false;
  EXPECT_EQ(augmented(src, 9, 7, 3, 1, 2, 0, options), src);
}

TEST(Augment, RejectsPaddingTheImageCannotReflect) {
  const auto src = image_of(0, 4 * 4);
  AugmentOptions options;
  options.pad = 4;
  EXPECT_THROW(augmented(src, 4, 4, 1, 0, 0, 0, options), ConfigError);
  std::vector<std::uint8_t> dst(16);
  EXPECT_THROW(augment_with(src.data(), 4, 4, 1, 2, 5, 0, false, dst.data()), ConfigError);
}

TEST(Normalize, ConvertsHwcBytesToNormalizedChwFloats) {
  // 1x2 image, 3 channels: HWC bytes (0, 255, 51) (102, 204, 153).
  const std::vector<std::uint8_t> src{0, 255, 51, 102, 204, 153};
  const double mean[3] = {0.5, 0.25, 0.0};
  const double std[3] = {0.5, 0.25, 2.0};
  std::vector<float> dst(6);
  normalize_to_chw(src.data(), 1, 2, 3, mean, std, dst.data());
  const std::vector<float> want{-1.0f, -0.2f, 3.0f, 2.2f, 0.1f, 0.3f};
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(dst[i], want[i], 1e-6) << i;
  std::vector<float> again(6);
  Normalizer(3, mean, std).apply(src.data(), 1, 2, again.data());
  EXPECT_EQ(again, dst);
  const double zero_std[3] = {0.5, 0.0, 1.0};
  EXPECT_THROW(Normalizer(3, mean, zero_std), ConfigError);
}

// ----- TrainLoader, memory mode -----------------------------------------------------------------

class MemoryLoader : public ::testing::Test {
 protected:
  MemoryLoader() : folder_("pipeline_memory") {
    manifest_ = write_dataset(folder_.path(), {{"train", {45, 35}}, {"val", {10}}}, 10, 3, 8);
  }
  TempFolder folder_;
  Manifest manifest_;
};

TEST_F(MemoryLoader, BatchesAreTheSamplersImagesAugmentedAndNormalized) {
  for (bool augment : {true, false}) {
    const LoaderOptions options = options_with("memory", 6, 2, augment);
    TrainLoader loader(folder_.path(), manifest_, 2, 1, options);
    ASSERT_EQ(loader.steps_per_epoch(), 80 / 12);
    for (std::int64_t epoch : {0, 1}) {
      expect_same_batches(run_epoch(loader, epoch),
                          expected_memory_epoch(manifest_, 2, 1, options, epoch));
    }
  }
}

TEST_F(MemoryLoader, OutputIsIdenticalForOneAndThreeWorkers) {
  LoaderOptions one = options_with("memory", 4, 1, true);
  LoaderOptions three = options_with("memory", 4, 3, true);
  one.prefetch_batches = 1;
  three.prefetch_batches = 7;
  TrainLoader a(folder_.path(), manifest_, 1, 0, one);
  TrainLoader b(folder_.path(), manifest_, 1, 0, three);
  for (std::int64_t epoch : {0, 4}) expect_same_batches(run_epoch(a, epoch), run_epoch(b, epoch));
}

TEST_F(MemoryLoader, RanksTogetherReproduceTheSingleRankGlobalBatch) {
  const LoaderOptions whole = options_with("memory", 16, 2, true);
  TrainLoader single(folder_.path(), manifest_, 1, 0, whole);
  const auto global = run_epoch(single, 3);
  for (int world : {2, 4}) {
    std::vector<std::vector<Batch>> parts;
    for (int rank = 0; rank < world; ++rank) {
      TrainLoader loader(folder_.path(), manifest_, world, rank,
                         options_with("memory", 16 / world, 2, true));
      parts.push_back(run_epoch(loader, 3));
      ASSERT_EQ(parts.back().size(), global.size());
    }
    for (std::size_t s = 0; s < global.size(); ++s) {
      std::vector<float> images;
      std::vector<std::int64_t> labels;
      for (int rank = 0; rank < world; ++rank) {
        images.insert(images.end(), parts[rank][s].images.begin(), parts[rank][s].images.end());
        labels.insert(labels.end(), parts[rank][s].labels.begin(), parts[rank][s].labels.end());
      }
      EXPECT_TRUE(images == global[s].images) << "W=" << world << " step " << s;
      EXPECT_EQ(labels, global[s].labels);
    }
  }
}

TEST_F(MemoryLoader, ResumeFromStepKGivesTheRestOfTheFullEpoch) {
  const LoaderOptions options = options_with("memory", 5, 2, true);
  TrainLoader loader(folder_.path(), manifest_, 1, 0, options);
  const auto full = run_epoch(loader, 2);
  ASSERT_EQ(full.size(), 16u);
  for (std::int64_t k : {1, 9, 15, 16}) {
    TrainLoader resumed(folder_.path(), manifest_, 1, 0, options);
    expect_same_batches(run_epoch(resumed, 2, k), std::vector<Batch>(full.begin() + k, full.end()));
  }
}

TEST_F(MemoryLoader, StartingANewEpochMidwayDropsTheOldOne) {
  const LoaderOptions options = options_with("memory", 5, 3, true);
  TrainLoader loader(folder_.path(), manifest_, 1, 0, options);
  loader.start_epoch(0);
  Batch b;
  ASSERT_TRUE(loader.next(&b));
  ASSERT_TRUE(loader.next(&b));
  EXPECT_EQ(b.step, 1);
  expect_same_batches(run_epoch(loader, 1), expected_memory_epoch(manifest_, 1, 0, options, 1));
  EXPECT_FALSE(loader.next(&b));
}

TEST_F(MemoryLoader, CorruptShardRaisesDataErrorFromNextNamingTheShard) {
  const fs::path victim = folder_ / shard_file_name("train", 1, 2);
  std::string bytes = read_file(victim);
  bytes[bytes.size() / 2] ^= 0x01;
  std::ofstream(victim, std::ios::binary | std::ios::trunc) << bytes;
  for (const char* mode : {"memory", "stream"}) {
    TrainLoader loader(folder_.path(), manifest_, 1, 0, options_with(mode, 4, 2, true));
    loader.start_epoch(0);
    Batch b;
    try {
      while (loader.next(&b)) {
      }
      ADD_FAILURE() << mode << ": no error";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("train-00001-of-00002.h5"), std::string::npos)
          << e.what();
    }
    EXPECT_THROW(loader.next(&b), DataError) << "the failure is sticky";
  }
}

TEST_F(MemoryLoader, DestructorDoesNotHangWithAPendingEpoch) {
  auto finished = std::make_shared<std::promise<void>>();
  auto done = finished->get_future();
  std::thread([this, finished] {
    for (const char* mode : {"memory", "stream"}) {
      LoaderOptions options = options_with(mode, 4, 3, true);
      { TrainLoader never_started(folder_.path(), manifest_, 1, 0, options); }
      {
        TrainLoader started(folder_.path(), manifest_, 1, 0, options);
        started.start_epoch(0);
      }
      {
        TrainLoader consumer_stops_early(folder_.path(), manifest_, 1, 0, options);
        consumer_stops_early.start_epoch(0);
        Batch b;
        consumer_stops_early.next(&b);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the queue fill
        consumer_stops_early.start_epoch(1, 3);
      }
    }
    finished->set_value();
  }).detach();
  if (done.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    std::fprintf(stderr, "TrainLoader destructor hangs\n");
    std::abort();  // a detached thread still holds the loader: no clean way to continue
  }
}

TEST_F(MemoryLoader, RejectsInvalidOptionsAndMisuse) {
  auto make = [&](LoaderOptions o) { TrainLoader loader(folder_.path(), manifest_, 2, 0, o); };
  LoaderOptions o = options_with("memory", 4, 1, true);
  o.mode = "disk";
  EXPECT_THROW(make(o), ConfigError);
  o = options_with("memory", 0, 1, true);
  EXPECT_THROW(make(o), ConfigError);
  o = options_with("memory", 4, 0, true);
  EXPECT_THROW(make(o), ConfigError);
  o = options_with("stream", 41, 1, true);  // 2 x 41 > 80 images
  EXPECT_THROW(make(o), ConfigError);
  o = options_with("memory", 4, 1, true);
  o.augment_options.pad = 10;  // not < 10 pixels
  EXPECT_THROW(make(o), ConfigError);
  TrainLoader loader(folder_.path(), manifest_, 2, 0, options_with("memory", 4, 1, true));
  Batch b;
  EXPECT_THROW(loader.next(&b), std::logic_error);
  EXPECT_THROW(loader.start_epoch(0, loader.steps_per_epoch() + 1), ConfigError);
}

// ----- TrainLoader, stream mode -----------------------------------------------------------------

class StreamLoader : public ::testing::Test {
 protected:
  StreamLoader() : folder_("pipeline_stream") {}
  Manifest write(const std::vector<int>& train_shards) {
    return write_dataset(folder_.path(), {{"train", train_shards}, {"val", {5}}}, 8, 1, 8);
  }
  // The split indices of every image of an epoch, in order (augmentation must be off).
  static std::vector<std::int64_t> identities(const std::vector<Batch>& epoch) {
    std::vector<std::int64_t> out;
    for (const Batch& b : epoch) {
      for (int i = 0; i < b.size; ++i) {
        const std::int64_t g = identity(b, i, 64, 1);
        EXPECT_EQ(b.labels[i], label_of(g)) << "image " << g;
        out.push_back(g);
      }
    }
    return out;
  }
  TempFolder folder_;
};

TEST_F(StreamLoader, EachEpochYieldsStepsPerEpochFullBatchesWithValidLabels) {
  const Manifest m = write({40, 30, 20});
  for (int world : {1, 2, 4}) {
    for (int rank = 0; rank < world; ++rank) {
      TrainLoader loader(folder_.path(), m, world, rank, options_with("stream", 4, 2, true));
      EXPECT_EQ(loader.steps_per_epoch(), 90 / (4 * world));
      for (std::int64_t epoch : {0, 1}) {
        const auto batches = run_epoch(loader, epoch);
        ASSERT_EQ(static_cast<std::int64_t>(batches.size()), loader.steps_per_epoch());
        for (std::size_t s = 0; s < batches.size(); ++s) {
          EXPECT_EQ(batches[s].step, static_cast<std::int64_t>(s));
          EXPECT_EQ(batches[s].epoch, epoch);
          ASSERT_EQ(batches[s].size, 4);
          ASSERT_EQ(batches[s].images.size(), 4u * 64u);
          for (std::int64_t label : batches[s].labels) {
            EXPECT_TRUE(label >= 0 && label < kClasses) << label;
          }
        }
      }
    }
  }
}

TEST_F(StreamLoader, AnEpochShowsEveryImageOfTheRanksShardsOnce) {
  const Manifest m = write({32, 32, 32, 32});  // rank r owns shards r and r + 2
  std::set<std::int64_t> all;
  for (int rank = 0; rank < 2; ++rank) {
    TrainLoader loader(folder_.path(), m, 2, rank, options_with("stream", 8, 2, false));
    ASSERT_EQ(loader.steps_per_epoch(), 8);
    for (std::int64_t epoch : {0, 1}) {
      auto seen = identities(run_epoch(loader, epoch));
      ASSERT_EQ(seen.size(), 64u);
      std::vector<std::int64_t> want;
      for (int shard : {rank, rank + 2}) {
        for (int i = 0; i < 32; ++i) want.push_back(shard * 32 + i);
      }
      const auto in_order = seen;
      std::sort(seen.begin(), seen.end());
      EXPECT_EQ(seen, want) << "rank " << rank << " epoch " << epoch;
      EXPECT_NE(in_order, seen) << "shuffled, not in file order";
      all.insert(seen.begin(), seen.end());
    }
  }
  EXPECT_EQ(all.size(), 128u);
}

TEST_F(StreamLoader, IsDeterministicForASeedAndIndependentOfWorkers) {
  const Manifest m = write({40, 40});
  LoaderOptions options = options_with("stream", 6, 1, true);
  TrainLoader a(folder_.path(), m, 2, 1, options);
  options.workers = 3;
  options.prefetch_batches = 1;
  TrainLoader b(folder_.path(), m, 2, 1, options);
  options.seed += 1;
  TrainLoader other_seed(folder_.path(), m, 2, 1, options);
  const auto first = run_epoch(a, 0);
  expect_same_batches(first, run_epoch(b, 0));
  expect_same_batches(run_epoch(a, 1), run_epoch(b, 1));
  const auto reseeded = run_epoch(other_seed, 0);
  EXPECT_FALSE(first[0].labels == reseeded[0].labels && first[0].images == reseeded[0].images)
      << "another seed gives another sequence";
  EXPECT_NE(first[0].images, run_epoch(a, 1)[0].images) << "epochs differ";
}

TEST_F(StreamLoader, ResumeFromStepKGivesTheRestOfTheFullEpoch) {
  const Manifest m = write({50, 30, 44});
  for (int world : {1, 2}) {
    LoaderOptions options = options_with("stream", 5, 2, true);
    options.shuffle_buffer = 13;
    TrainLoader loader(folder_.path(), m, world, world - 1, options);
    const auto full = run_epoch(loader, 1);
    for (std::int64_t k :
         {std::int64_t{1}, std::int64_t{4}, static_cast<std::int64_t>(full.size()) - 1}) {
      TrainLoader resumed(folder_.path(), m, world, world - 1, options);
      expect_same_batches(run_epoch(resumed, 1, k),
                          std::vector<Batch>(full.begin() + k, full.end()));
    }
  }
}

TEST_F(StreamLoader, WrapsAroundWhenARankOwnsFewerImages) {
  const Manifest m = write({24, 24, 24});  // rank 0: shards 0, 2; rank 1: shard 1 only
  TrainLoader loader(folder_.path(), m, 2, 1, options_with("stream", 8, 2, false));
  ASSERT_EQ(loader.steps_per_epoch(), 4);  // 32 images wanted, 24 owned
  const auto seen = identities(run_epoch(loader, 0));
  ASSERT_EQ(seen.size(), 32u);
  std::vector<std::int64_t> first_pass(seen.begin(), seen.begin() + 24);
  std::sort(first_pass.begin(), first_pass.end());
  for (int i = 0; i < 24; ++i) EXPECT_EQ(first_pass[i], 24 + i);
  for (std::int64_t g : seen) EXPECT_TRUE(g >= 24 && g < 48) << g;
}

TEST_F(StreamLoader, FewerShardsThanRanksSplitsTheBlocksDisjointly) {
  const Manifest m = write({64});  // 8 blocks of 8: rank r takes blocks r, r + 2, ...
  std::vector<std::int64_t> all;
  for (int rank = 0; rank < 2; ++rank) {
    TrainLoader loader(folder_.path(), m, 2, rank, options_with("stream", 8, 1, false));
    const auto seen = identities(run_epoch(loader, 0));
    ASSERT_EQ(seen.size(), 32u);
    for (std::int64_t g : seen) EXPECT_EQ((g / 8) % 2, rank) << g;
    all.insert(all.end(), seen.begin(), seen.end());
  }
  std::sort(all.begin(), all.end());
  for (int i = 0; i < 64; ++i) EXPECT_EQ(all[i], i);
}

TEST_F(StreamLoader, AugmentsEachImageByItsIndexInTheSplit) {
  const Manifest m = write({30, 30});
  const LoaderOptions plain = options_with("stream", 6, 2, false);
  const LoaderOptions aug = options_with("stream", 6, 2, true);
  TrainLoader a(folder_.path(), m, 1, 0, plain);
  TrainLoader b(folder_.path(), m, 1, 0, aug);
  const auto unaugmented = run_epoch(a, 2);
  const auto batches = run_epoch(b, 2);
  const auto ids = identities(unaugmented);  // the order does not depend on augmentation
  ASSERT_EQ(batches.size(), unaugmented.size());
  std::vector<std::uint8_t> out(64);
  std::vector<float> want(64);
  std::size_t at = 0;
  for (const Batch& batch : batches) {
    for (int i = 0; i < batch.size; ++i, ++at) {
      const auto src = image_of(ids[at], 64);
      augment_image(src.data(), 8, 8, 1, aug.seed, 2, ids[at], aug.augment_options, out.data());
      normalize_to_chw(out.data(), 8, 8, 1, m.mean.data(), m.std.data(), want.data());
      EXPECT_TRUE(std::equal(want.begin(), want.end(), batch.images.begin() + i * 64))
          << "image " << ids[at];
    }
  }
}

// ----- EvalLoader -------------------------------------------------------------------------------

TEST(EvalLoaderTest, RanksTogetherCoverTheSplitExactlyOnce) {
  TempFolder folder("pipeline_eval");
  const Manifest m = write_dataset(folder.path(), {{"train", {8}}, {"val", {20, 17}}}, 8, 1, 8);
  for (int world = 1; world <= 4; ++world) {
    std::vector<int> hits(37, 0);
    for (int rank = 0; rank < world; ++rank) {
      EvalLoader loader(folder.path(), m, "val", world, rank, 5);
      EXPECT_EQ(loader.size(), eval_range(37, world, rank).size());
      std::vector<std::int64_t> first_pass;
      for (int pass = 0; pass < 2; ++pass) {
        Batch b;
        std::int64_t total = 0, step = 0;
        std::vector<std::int64_t> seen;
        while (loader.next(&b)) {
          EXPECT_EQ(b.step, step++);
          EXPECT_EQ(b.size, std::min<std::int64_t>(5, loader.size() - total));
          ASSERT_EQ(b.images.size(), static_cast<std::size_t>(b.size) * 64);
          for (int i = 0; i < b.size; ++i) {
            const std::int64_t g = identity(b, i, 64, 1);
            EXPECT_EQ(b.labels[i], label_of(g));
            seen.push_back(g);
          }
          total += b.size;
        }
        EXPECT_EQ(total, loader.size());
        if (pass == 0) {
          first_pass = seen;
          for (std::int64_t g : seen) ++hits[g];
        } else {
          EXPECT_EQ(seen, first_pass) << "reset() starts again";
        }
        loader.reset();
      }
    }
    for (int g = 0; g < 37; ++g) EXPECT_EQ(hits[g], 1) << "W=" << world << " image " << g;
  }
}

}  // namespace
}  // namespace fer
