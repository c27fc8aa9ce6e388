// Loader benchmark (not a timed test): images/s that fer::TrainLoader delivers on its own —
// memory mode, random crop + flip, normalization to float CHW, batching — with a consumer that
// does nothing but take batches. Compared against the training step's consumption rate, it says
// how much headroom the input pipeline leaves (the issue asks for >= 20x).
//
// What is timed: EPOCHS full epochs after a warm-up epoch 0 (the warm-up also reads the split
// into RAM, which is start-up cost, not throughput). Each timed epoch includes start_epoch's
// refill of the prefetch window, as in training.
//
// Usage: bench_loader DATASET [WORKERS=2] [BATCH=64] [EPOCHS=10] [PREFETCH=4]
//   DATASET: a fer-pack output folder (its train split is used).
// Prints: "workers=W batch=B images=N seconds=S images_per_s=X".
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "common/logging.h"
#include "data/loader.h"
#include "data/manifest.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: bench_loader DATASET [WORKERS=2] [BATCH=64] [EPOCHS=10] "
                 "[PREFETCH=4]\n");
    return 2;
  }
  try {
    fer::LogOptions log;
    log.level = "warn";
    fer::init_logging(log);
    const std::string dataset = argv[1];
    fer::LoaderOptions options;  // memory mode, augment on, pad 4: the trainer's defaults
    options.workers = argc > 2 ? std::atoi(argv[2]) : 2;
    options.batch_per_rank = argc > 3 ? std::atoi(argv[3]) : 64;
    const int epochs = argc > 4 ? std::atoi(argv[4]) : 10;
    options.prefetch_batches = argc > 5 ? std::atoi(argv[5]) : 4;
    const fer::Manifest manifest = fer::load_manifest(dataset);
    fer::TrainLoader loader(dataset, manifest, /*world_size=*/1, /*rank=*/0, options);

    fer::Batch batch;
    loader.start_epoch(0);  // warm-up: loads the split, fills the buffers
    while (loader.next(&batch)) {
    }
    std::int64_t images = 0;
    const auto start = std::chrono::steady_clock::now();
    for (int epoch = 1; epoch <= epochs; ++epoch) {
      loader.start_epoch(epoch);
      while (loader.next(&batch)) images += batch.size;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("workers=%d batch=%d images=%lld seconds=%.3f images_per_s=%.2f\n", options.workers,
                options.batch_per_rank, static_cast<long long>(images), seconds, images / seconds);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_loader: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
