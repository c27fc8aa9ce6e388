// The trainer's input pipeline: packed shards -> sampled, augmented, normalized float batches.
// Torch-free: the trainer wraps Batch::images with torch::from_blob.
//
// TrainLoader modes (LoaderOptions::mode):
//  - "memory": the whole train split is read into RAM once (every shard checksum-verified through
//    open_verified_shard) and batches follow DistributedSampler. Bit-identical across world sizes:
//    the global batch at step k (ranks' batches concatenated in rank order) is the same for any W
//    with the same W*B, because sampling and augmentation depend only on (seed, epoch, index).
//  - "stream": for splits larger than RAM. Rank r owns shards {i : i % W == r} when the split has
//    at least W shards; with fewer shards than ranks every rank opens all shards and owns the
//    chunk-aligned blocks {j : j % W == r} of the global block list (shard order, then offset),
//    or every block when there are fewer blocks than ranks. A block is one HDF5 chunk
//    (ShardReader::chunk_images() images). Each pass visits the rank's blocks in an order permuted
//    by derive_seed({seed, kStreamBlockTag, epoch, rank, pass}) and feeds them through a shuffle
//    buffer of `shuffle_buffer` images (draws from derive_seed({seed, kStreamBufferTag, epoch,
//    rank})), drained at the end of each pass, so one pass emits every owned image exactly once.
//    A rank yields exactly steps_per_epoch() full batches per epoch (the sampler's count, the same
//    on every rank), starting another pass when its images run out and dropping what the last pass
//    did not emit. Deterministic for (seed, epoch, rank, world size, dataset, options) and
//    independent of `workers`, but NOT equivalent across world sizes (each rank shuffles only its
//    own shards). Augmentation still uses each image's index in the split. RAM: the shuffle
//    buffer, one block and prefetch_batches raw batches. A resume at step k replays the sequence
//    index-only up to k, then reads just the blocks whose images sit in the buffer.
//
// Threading: TrainLoader owns one I/O thread (all of its HDF5 calls: opening, verifying and
// reading shards) and `workers` threads that augment and normalize; all are started by the
// constructor, reused across epochs and joined by the destructor. Call the public methods from one
// thread (the training thread); it only waits for finished batches and never decodes. HDF5 calls
// of every loader in the process (train and eval) are also serialized by one process-wide mutex:
// Debian's libhdf5 1.10 reports H5is_library_threadsafe() == true, but builds without
// --enable-threadsafe exist, and serializing costs nothing here because each loader reads from a
// single thread anyway. (The mutex also covers open_verified_shard's checksum pass; code outside
// this file, e.g. verify_dataset, does not take it.)
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "data/augment.h"
#include "data/manifest.h"

namespace fer {

inline constexpr std::uint64_t kStreamBlockTag = 0x535452424c4b3031ULL;   // "STRBLK01"
inline constexpr std::uint64_t kStreamBufferTag = 0x5354524255463031ULL;  // "STRBUF01"

struct LoaderOptions {
  std::string mode = "memory";  // memory | stream
  int batch_per_rank = 64;      // images per batch on this rank, >= 1
  int workers = 2;              // background threads preparing batches, >= 1
  int prefetch_batches = 4;     // batches prepared ahead of the consumer, >= 1
  int shuffle_buffer = 4096;    // stream mode only, images, >= 1
  bool augment = true;          // random crop + flip (train only)
  AugmentOptions augment_options;
  std::uint64_t seed = 0;  // sampling and augmentation seed, the same on every rank
};

struct Batch {
  std::int64_t epoch = 0, step = 0;  // step within the epoch
  int size = 0;                      // images in this batch
  std::vector<float> images;         // [size, C, H, W], normalized with the manifest's mean/std
  std::vector<std::int64_t> labels;  // [size], class indices from the shards
};

// One per rank. See the file comment for the modes and threading.
class TrainLoader {
 public:
  // Validates the options (ConfigError: unknown mode, non-positive sizes, a global batch larger
  // than the split, a pad the image cannot reflect) and starts the threads; shards are opened and
  // read in the background, so a bad shard surfaces as a DataError from next().
  TrainLoader(const std::filesystem::path& dataset_dir, const Manifest& manifest, int world_size,
              int rank, const LoaderOptions& options);
  // Stops and joins the threads, also mid-epoch or with an exception pending. Never throws.
  ~TrainLoader();
  TrainLoader(const TrainLoader&) = delete;
  TrainLoader& operator=(const TrainLoader&) = delete;

  // floor(N / (world_size * batch_per_rank)), N = the train split's count; equal on every rank.
  std::int64_t steps_per_epoch() const;

  // Starts producing epoch `epoch` from step `first_step` (resume mid-epoch) in the background,
  // abandoning whatever the previous epoch had not delivered. first_step in [0, steps_per_epoch()].
  // Steps first_step.. are identical to those of an epoch started at 0.
  void start_epoch(std::int64_t epoch, std::int64_t first_step = 0);

  // Blocks until the next batch of the current epoch is ready, in step order; false after the
  // last one. Rethrows a background thread's exception (e.g. DataError naming a corrupt shard) on
  // the calling thread; after that the loader stays failed and only destruction is useful.
  // std::logic_error when no epoch was started.
  bool next(Batch* batch);

 private:
  class Impl;  // threads, buffers and shard readers (loader.cpp)
  std::unique_ptr<Impl> impl_;
};

// Sequential batches over this rank's eval_range() of a split (val/test): no augmentation, no
// padding or duplicates, so counts and sums add up exactly over ranks. Shards overlapping the
// range are checksum-verified and opened by the constructor (DataError naming a bad one); images
// are read batch by batch on the calling thread under the process-wide HDF5 mutex. Not
// thread-safe: one thread per EvalLoader.
class EvalLoader {
 public:
  EvalLoader(const std::filesystem::path& dataset_dir, const Manifest& manifest,
             const std::string& split, int world_size, int rank, int batch_size);
  ~EvalLoader();
  EvalLoader(const EvalLoader&) = delete;
  EvalLoader& operator=(const EvalLoader&) = delete;

  std::int64_t size() const;  // samples of this rank
  // The next batch of at most batch_size images in split order (the last one may be smaller);
  // false at the end. Batch::step counts batches from 0, Batch::epoch is 0.
  bool next(Batch* batch);
  void reset();  // start again from the first sample of the range

 private:
  class Impl;  // shard readers and scratch buffers (loader.cpp)
  std::unique_ptr<Impl> impl_;
};

}  // namespace fer
