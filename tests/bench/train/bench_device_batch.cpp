// Device batch benchmark (not a timed test): images/s of DeviceSplit::train_batch on CPU tensors
// (gather crop + flip + table normalization as tensor ops on LibTorch's intra-op threads) against
// the threaded memory-mode TrainLoader (augment_image + Normalizer on worker threads), for one
// epoch of a synthetic split written with the real shard writer, at 1 and 2 threads. On a GPU the
// same ops run as a handful of kernels; this run says what they cost where there is none. The
// CPU trainer keeps the threaded loader: at 2 intra-op threads each of the ~20 small ops per batch
// is an OpenMP region, which collapses on a loaded machine (one thread descheduled stalls all).
//
// What is timed: EPOCHS epochs after a warm-up epoch (the warm-up also loads the split). The data
// check is part of every run: the first batch of each timed epoch must equal the loader's bit for
// bit, else the benchmark fails.
//
// Usage: bench_device_batch [IMAGES=10000] [BATCH=64] [EPOCHS=1] [SIDE=48] [CHANNELS=1]
// Prints one line per path and thread count: "path=P threads=T images=N seconds=S images_per_s=X",
// then the ratio device/loader per thread count.
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/fs_util.h"
#include "common/logging.h"
#include "data/checksum.h"
#include "data/device_batch.h"
#include "data/loader.h"
#include "data/manifest.h"
#include "data/sampler.h"
#include "data/shard.h"

namespace fs = std::filesystem;

namespace {

constexpr int kShardImages = 2500;  // images per shard of the synthetic split

// A train split of `images` random images (fixed seed) written with the real shard writer.
fer::Manifest write_split(const fs::path& dir, int images, int side, int channels) {
  fer::Manifest m;
  m.classes = {"a", "b", "c", "d", "e", "f", "g"};
  m.height = m.width = side;
  m.channels = channels;
  m.mean.assign(channels, 0.5);
  m.std.assign(channels, 0.25);
  m.source_kind = "csv";
  m.source_path = "synthetic";
  m.packer_version = "bench";
  fer::SplitInfo info;
  info.class_counts.assign(m.classes.size(), 0);
  const int shards = (images + kShardImages - 1) / kShardImages;
  std::mt19937_64 rng(20260101);
  std::vector<std::uint8_t> image(static_cast<std::size_t>(m.image_bytes()));
  for (int k = 0, g = 0; k < shards; ++k) {
    const std::string file = fer::shard_file_name("train", k, shards);
    fer::ShardWriter writer(dir / file, fer::ShardLayout{"train", k, shards, side, side, channels},
                            0);
    const int n = std::min(kShardImages, images - g);
    for (int i = 0; i < n; ++i, ++g) {
      for (auto& byte : image) byte = static_cast<std::uint8_t>(rng());
      const auto label = static_cast<std::uint8_t>(g % m.classes.size());
      writer.append(image.data(), label, std::to_string(g));
      ++info.class_counts[label];
    }
    writer.close();
    info.shards.push_back({file, n, static_cast<std::int64_t>(fs::file_size(dir / file)),
                           fer::file_checksum(dir / file)});
  }
  info.count = images;
  m.splits["train"] = info;
  fer::write_file_atomic(dir / fer::kManifestName, fer::manifest_to_json(m));
  return fer::load_manifest(dir);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void check_same(const fer::DeviceBatch& device, const fer::Batch& cpu, int threads) {
  const torch::Tensor images = device.images.contiguous();
  if (images.numel() != static_cast<std::int64_t>(cpu.images.size()) ||
      std::memcmp(images.data_ptr<float>(), cpu.images.data(), cpu.images.size() * 4) != 0) {
    throw std::runtime_error("data check failed at " + std::to_string(threads) +
                             " threads: the device batch differs from the loader's");
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    fer::LogOptions log;
    log.level = "warn";
    fer::init_logging(log);
    const int images = argc > 1 ? std::atoi(argv[1]) : 10000;
    const int batch = argc > 2 ? std::atoi(argv[2]) : 64;
    const int epochs = argc > 3 ? std::atoi(argv[3]) : 1;
    const int side = argc > 4 ? std::atoi(argv[4]) : 48;
    const int channels = argc > 5 ? std::atoi(argv[5]) : 1;
    const fs::path dir =
        fs::temp_directory_path() / ("fer_bench_device_batch_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    struct Cleanup {
      fs::path dir;
      ~Cleanup() {
        std::error_code ec;
        fs::remove_all(dir, ec);
      }
    } cleanup{dir};
    const fer::Manifest manifest = write_split(dir, images, side, channels);

    fer::LoaderOptions options;  // memory mode, augment on, pad 4, flip: the trainer's defaults
    options.batch_per_rank = batch;
    const fer::DistributedSampler sampler(images, 1, 0, batch, options.seed);
    const fer::DeviceSplit split = fer::DeviceSplit::train(dir, manifest, torch::kCPU);
    std::vector<double> loader_rate, device_rate;
    for (int threads : {1, 2}) {
      options.workers = threads;
      fer::TrainLoader loader(dir, manifest, 1, 0, options);
      fer::Batch b;
      std::vector<fer::Batch> first(static_cast<std::size_t>(epochs) + 1);
      loader.start_epoch(0);  // warm-up: loads the split, fills the buffers
      while (loader.next(&b)) {
      }
      std::int64_t n = 0;
      auto start = std::chrono::steady_clock::now();
      for (int epoch = 1; epoch <= epochs; ++epoch) {
        loader.start_epoch(epoch);
        for (bool got_first = false; loader.next(&b); n += b.size) {
          if (!got_first) first[epoch] = b;
          got_first = true;
        }
      }
      double s = seconds_since(start);
      loader_rate.push_back(n / s);
      std::printf("path=loader threads=%d images=%lld seconds=%.3f images_per_s=%.1f\n", threads,
                  static_cast<long long>(n), s, n / s);

      torch::set_num_threads(threads);
      for (std::int64_t step = 0; step < sampler.steps_per_epoch(); ++step) {
        split.train_batch(sampler, 0, step, options);  // warm-up
      }
      n = 0;
      start = std::chrono::steady_clock::now();
      for (int epoch = 1; epoch <= epochs; ++epoch) {
        for (std::int64_t step = 0; step < sampler.steps_per_epoch(); ++step, n += batch) {
          const fer::DeviceBatch d = split.train_batch(sampler, epoch, step, options);
          if (step == 0) check_same(d, first[epoch], threads);
        }
      }
      s = seconds_since(start);
      device_rate.push_back(n / s);
      std::printf("path=device_cpu threads=%d images=%lld seconds=%.3f images_per_s=%.1f\n",
                  threads, static_cast<long long>(n), s, n / s);
    }
    for (std::size_t i = 0; i < device_rate.size(); ++i) {
      std::printf("ratio device_cpu/loader threads=%zu: %.2f\n", i + 1,
                  device_rate[i] / loader_rate[i]);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_device_batch: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
