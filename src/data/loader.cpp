#include "data/loader.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <thread>

#include "common/errors.h"
#include "common/random.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "data/shard.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

constexpr const char* kTrainSplit = "train";
constexpr std::int64_t kMemoryReadChunks = 16;  // HDF5 chunks per read while loading a split
constexpr std::size_t kMaxSpareBatches = 4;     // recycled Batch buffers kept for the workers

// Serializes every HDF5 call of the loaders in this process (see loader.h).
std::mutex& hdf5_mutex() {
  static std::mutex mutex;
  return mutex;
}

// Opens (checksum-verifies) shard `index` under the HDF5 mutex.
ShardReader open_shard(const fs::path& dir, const Manifest& m, const std::string& split,
                       int index) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  return open_verified_shard(dir, m, split, index);
}

// Closes readers under the HDF5 mutex (ShardReader's destructor calls into HDF5).
void close_shards(std::vector<ShardReader>* readers) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  readers->clear();
}

void read_shard(const ShardReader& reader, std::int64_t start, std::int64_t n, std::uint8_t* pixels,
                std::uint8_t* labels) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  reader.read_images(start, n, pixels);
  reader.read_labels(start, n, labels);
}

// Index in the split of the first image of every shard, plus the total at the end.
std::vector<std::int64_t> shard_offsets(const SplitInfo& split) {
  std::vector<std::int64_t> offsets{0};
  for (const ShardInfo& shard : split.shards) offsets.push_back(offsets.back() + shard.count);
  return offsets;
}

// The manifest's normalization, checked to have one mean and std per channel.
Normalizer make_normalizer(const Manifest& m) {
  FER_CHECK(m.mean.size() == static_cast<std::size_t>(m.channels) &&
                m.std.size() == static_cast<std::size_t>(m.channels),
            ConfigError, "normalization needs one mean and std per channel, the manifest has ",
            m.mean.size(), " and ", m.std.size(), " for ", m.channels, " channels");
  return Normalizer(m.channels, m.mean.data(), m.std.data());
}

// Thrown inside the I/O thread to unwind when the loader is being destroyed.
struct StopRequested {};

// A contiguous, chunk-aligned run of images in one shard (stream mode).
struct Block {
  int reader = 0;                // index into the owner's readers
  std::int64_t start = 0;        // first image in the shard
  std::int64_t count = 0;        // images, >= 1
  std::int64_t first_index = 0;  // index in the split of the first image
};

using BlockReader = std::function<void(int block, std::uint8_t* pixels, std::uint8_t* labels)>;

// Stream mode's sequence of images for one (epoch, rank): passes over the blocks in permuted order
// through a shuffle buffer that is drained at the end of every pass (loader.h). It runs
// index-only until materialize(), so a resume can skip steps without reading them, then reads
// just the blocks whose images sit in the buffer. Used by the I/O thread only.
class StreamSequence {
 public:
  StreamSequence(const std::vector<Block>& blocks, std::uint64_t seed, std::int64_t epoch, int rank,
                 int capacity, std::int64_t image_bytes)
      : blocks_(blocks),
        seed_(seed),
        epoch_(epoch),
        rank_(rank),
        capacity_(static_cast<std::size_t>(capacity)),
        image_bytes_(static_cast<std::size_t>(image_bytes)),
        buffer_rng_(derive_seed({seed, kStreamBufferTag, static_cast<std::uint64_t>(epoch),
                                 static_cast<std::uint64_t>(rank)})) {
    start_pass(0);
  }

  // Advances by n images without pixels (before materialize()).
  void skip(std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) emit(nullptr, nullptr);
  }

  // Loads the pixels of everything buffered and of the current block; from then on emit() fills
  // pixels and labels.
  void materialize(const BlockReader& read_block) {
    read_block_ = read_block;
    pixels_.resize(entries_.size() * image_bytes_);
    labels_.resize(entries_.size());
    std::map<int, std::vector<std::size_t>> by_block;  // block -> buffer slots
    for (std::size_t slot = 0; slot < entries_.size(); ++slot) {
      by_block[entries_[slot].block].push_back(slot);
    }
    for (const auto& [block, slots] : by_block) {
      load_block(block);
      for (std::size_t slot : slots) {
        copy_from_block(entries_[slot].offset, slot);
      }
    }
    loaded_block_ = -1;
    if (order_pos_ < order_.size() && offset_ > 0) load_block(order_[order_pos_]);
    materialized_ = true;
  }

  // The next image: its index in the split, and when materialized its label and pixels.
  std::int64_t emit(std::uint8_t* label, std::uint8_t* pixels) {
    for (;;) {
      if (order_pos_ == order_.size()) {
        if (entries_.empty()) {
          start_pass(pass_ + 1);
          continue;
        }
        // Pass over: drain the buffer in random order before the next pass starts.
        const auto slot = static_cast<std::size_t>(uniform_index(buffer_rng_, entries_.size()));
        const std::int64_t index = take(slot, label, pixels);
        const std::size_t last = entries_.size() - 1;
        if (slot != last) move_slot(last, slot);
        entries_.pop_back();
        return index;
      }
      const Entry incoming{order_[order_pos_], offset_};
      if (materialized_ && loaded_block_ != incoming.block) load_block(incoming.block);
      if (++offset_ == blocks_[incoming.block].count) {
        offset_ = 0;
        ++order_pos_;
      }
      if (entries_.size() < capacity_) {
        entries_.push_back(incoming);
        if (materialized_) {
          pixels_.resize(entries_.size() * image_bytes_);
          labels_.resize(entries_.size());
          copy_from_block(incoming.offset, entries_.size() - 1);
        }
        continue;
      }
      const auto slot = static_cast<std::size_t>(uniform_index(buffer_rng_, capacity_));
      const std::int64_t index = take(slot, label, pixels);
      entries_[slot] = incoming;
      if (materialized_) copy_from_block(incoming.offset, slot);
      return index;
    }
  }

 private:
  struct Entry {
    int block = 0;
    std::int64_t offset = 0;  // within the block
  };

  void start_pass(std::int64_t pass) {
    pass_ = pass;
    order_.resize(blocks_.size());
    for (std::size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<int>(i);
    std::mt19937_64 rng(
        derive_seed({seed_, kStreamBlockTag, static_cast<std::uint64_t>(epoch_),
                     static_cast<std::uint64_t>(rank_), static_cast<std::uint64_t>(pass)}));
    shuffle_in_place(order_, rng);
    order_pos_ = 0;
    offset_ = 0;
  }

  void load_block(int block) {
    const auto n = static_cast<std::size_t>(blocks_[block].count);
    block_pixels_.resize(n * image_bytes_);
    block_labels_.resize(n);
    read_block_(block, block_pixels_.data(), block_labels_.data());
    loaded_block_ = block;
  }

  void copy_from_block(std::int64_t offset, std::size_t slot) {
    std::copy_n(block_pixels_.data() + offset * image_bytes_, image_bytes_,
                pixels_.data() + slot * image_bytes_);
    labels_[slot] = block_labels_[static_cast<std::size_t>(offset)];
  }

  void move_slot(std::size_t from, std::size_t to) {
    entries_[to] = entries_[from];
    if (!materialized_) return;
    std::copy_n(pixels_.data() + from * image_bytes_, image_bytes_,
                pixels_.data() + to * image_bytes_);
    labels_[to] = labels_[from];
  }

  std::int64_t take(std::size_t slot, std::uint8_t* label, std::uint8_t* pixels) const {
    const Entry& e = entries_[slot];
    if (materialized_) {
      std::copy_n(pixels_.data() + slot * image_bytes_, image_bytes_, pixels);
      *label = labels_[slot];
    }
    return blocks_[e.block].first_index + e.offset;
  }

  const std::vector<Block>& blocks_;
  std::uint64_t seed_;
  std::int64_t epoch_;
  int rank_;
  std::size_t capacity_;
  std::size_t image_bytes_;
  std::mt19937_64 buffer_rng_;
  std::int64_t pass_ = 0;
  std::vector<int> order_;  // this pass's block order
  std::size_t order_pos_ = 0;
  std::int64_t offset_ = 0;     // next image within blocks_[order_[order_pos_]]
  std::vector<Entry> entries_;  // the shuffle buffer
  bool materialized_ = false;
  BlockReader read_block_;
  std::vector<std::uint8_t> pixels_;  // one image per buffer slot (when materialized)
  std::vector<std::uint8_t> labels_;
  int loaded_block_ = -1;
  std::vector<std::uint8_t> block_pixels_;
  std::vector<std::uint8_t> block_labels_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// TrainLoader

class TrainLoader::Impl {
 public:
  Impl(const fs::path& dataset_dir, const Manifest& manifest, int world_size, int rank,
       const LoaderOptions& options);
  ~Impl();

  std::int64_t steps_per_epoch() const { return sampler_.steps_per_epoch(); }
  void start_epoch(std::int64_t epoch, std::int64_t first_step);
  bool next(Batch* batch);

 private:
  // Stream mode: one step's images before augmentation, made by the I/O thread.
  struct RawBatch {
    std::int64_t step = 0;
    std::vector<std::int64_t> indices;  // in the split
    std::vector<std::uint8_t> labels;
    std::vector<std::uint8_t> pixels;  // HWC images back to back
  };

  bool stream() const { return options_.mode == "stream"; }
  void check_stop() const {
    if (stop_.load()) throw StopRequested{};
  }
  void stop_and_join();
  void io_main();
  void worker_main();
  void load_memory();
  void open_stream_shards();
  void stream_epochs();
  void produce(std::int64_t epoch, std::int64_t step, const RawBatch* raw, Batch* out) const;

  const fs::path dataset_dir_;
  const Manifest manifest_;
  const int world_size_;
  const int rank_;
  const LoaderOptions options_;
  const DistributedSampler sampler_;
  const std::int64_t image_bytes_;
  const Normalizer normalizer_;

  // Memory mode: the whole split, written by the I/O thread before data_ready_ is set.
  std::vector<std::uint8_t> images_;
  std::vector<std::uint8_t> labels_;
  // Stream mode: touched by the I/O thread only.
  std::vector<ShardReader> readers_;
  std::vector<Block> blocks_;

  // Everything below is guarded by mutex_; one condition variable wakes all parties (a handful of
  // threads, woken a few times per batch).
  std::mutex mutex_;
  std::condition_variable changed_;
  std::atomic<bool> stop_{false};  // written under mutex_, read lock-free by the I/O thread
  bool data_ready_ = false;        // memory mode: split loaded
  std::exception_ptr error_;       // first background failure; sticky
  std::uint64_t generation_ = 0;   // bumped by start_epoch; 0 = no epoch yet
  std::int64_t epoch_ = 0;
  std::int64_t first_step_ = 0;
  std::int64_t next_claim_ = 0;          // memory mode: next step a worker takes
  std::int64_t next_consume_ = 0;        // next step next() returns
  std::deque<RawBatch> raw_;             // stream mode: steps in order, waiting for a worker
  std::map<std::int64_t, Batch> ready_;  // finished batches by step
  std::vector<Batch> spare_;             // recycled buffers, saving a large allocation per batch

  std::thread io_thread_;
  std::vector<std::thread> workers_;
};

TrainLoader::Impl::Impl(const fs::path& dataset_dir, const Manifest& manifest, int world_size,
                        int rank, const LoaderOptions& options)
    : dataset_dir_(dataset_dir),
      manifest_(manifest),
      world_size_(world_size),
      rank_(rank),
      options_(options),
      sampler_(manifest.split(kTrainSplit).count, world_size, rank, options.batch_per_rank,
               options.seed),
      image_bytes_(manifest.image_bytes()),
      normalizer_(make_normalizer(manifest)) {
  FER_CHECK(options.mode == "memory" || options.mode == "stream", ConfigError, "loader mode '",
            options.mode, "' is not memory or stream");
  FER_CHECK(options.workers >= 1, ConfigError, "loader workers must be >= 1, got ",
            options.workers);
  FER_CHECK(options.prefetch_batches >= 1, ConfigError, "prefetch batches must be >= 1, got ",
            options.prefetch_batches);
  FER_CHECK(options.shuffle_buffer >= 1, ConfigError, "shuffle buffer must be >= 1 image, got ",
            options.shuffle_buffer);
  if (options.augment) {
    std::vector<std::uint8_t> probe(static_cast<std::size_t>(image_bytes_)), out(probe.size());
    augment_image(probe.data(), manifest.height, manifest.width, manifest.channels, 0, 0, 0,
                  options.augment_options, out.data());  // ConfigError for an impossible pad
  }
  try {
    io_thread_ = std::thread([this] { io_main(); });
    for (int i = 0; i < options.workers; ++i) workers_.emplace_back([this] { worker_main(); });
  } catch (...) {  // std::system_error: no destructor runs for a half-built Impl
    stop_and_join();
    throw;
  }
}

TrainLoader::Impl::~Impl() {
  stop_and_join();
  close_shards(&readers_);
}

void TrainLoader::Impl::stop_and_join() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  if (io_thread_.joinable()) io_thread_.join();
  for (std::thread& worker : workers_) worker.join();
  workers_.clear();
}

void TrainLoader::Impl::start_epoch(std::int64_t epoch, std::int64_t first_step) {
  FER_CHECK(epoch >= 0, ConfigError, "epoch must be >= 0, got ", epoch);
  FER_CHECK(first_step >= 0 && first_step <= steps_per_epoch(), ConfigError, "first step ",
            first_step, " is outside [0, ", steps_per_epoch(), "]");
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++generation_;
    epoch_ = epoch;
    first_step_ = first_step;
    next_claim_ = first_step;
    next_consume_ = first_step;
    raw_.clear();
    ready_.clear();  // batches still being made for the old epoch are dropped on arrival
  }
  changed_.notify_all();
}

bool TrainLoader::Impl::next(Batch* batch) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (generation_ == 0) throw std::logic_error("TrainLoader::next() before start_epoch()");
  const std::int64_t steps = steps_per_epoch();
  changed_.wait(
      lock, [&] { return error_ || next_consume_ >= steps || ready_.count(next_consume_) > 0; });
  if (error_) std::rethrow_exception(error_);
  if (next_consume_ >= steps) return false;
  auto it = ready_.find(next_consume_);
  Batch used = std::move(*batch);
  *batch = std::move(it->second);
  ready_.erase(it);
  // The caller's previous batch is done with: its buffers go to the next worker that needs one.
  if (used.images.capacity() > 0 && spare_.size() < kMaxSpareBatches) {
    spare_.push_back(std::move(used));
  }
  ++next_consume_;
  lock.unlock();
  changed_.notify_all();  // the prefetch window moved
  return true;
}

void TrainLoader::Impl::io_main() {
  try {
    if (stream()) {
      open_stream_shards();
      stream_epochs();
    } else {
      load_memory();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        data_ready_ = true;
      }
      changed_.notify_all();
    }
  } catch (const StopRequested&) {
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    changed_.notify_all();
  }
}

void TrainLoader::Impl::load_memory() {
  const auto begin = std::chrono::steady_clock::now();
  const SplitInfo& split = manifest_.split(kTrainSplit);
  // The manifest bounds count * image_bytes (no overflow); refuse what this machine cannot hold
  // before allocating, rather than dying of an out-of-memory kill half-way.
  const double need = static_cast<double>(split.count) * static_cast<double>(image_bytes_);
  const double have = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) *
                      static_cast<double>(::sysconf(_SC_PAGESIZE));
  if (have > 0 && need > have) {
    throw DataError("the train split needs " + std::to_string(std::llround(need / (1 << 20))) +
                        " MiB in memory, more than this machine has (" +
                        std::to_string(std::llround(have / (1 << 20))) + " MiB)",
                    "use data.loader=stream for datasets larger than RAM");
  }
  images_.resize(static_cast<std::size_t>(split.count * image_bytes_));
  labels_.resize(static_cast<std::size_t>(split.count));
  std::int64_t at = 0;
  for (int i = 0; i < static_cast<int>(split.shards.size()); ++i) {
    check_stop();
    std::vector<ShardReader> reader;
    reader.push_back(open_shard(dataset_dir_, manifest_, kTrainSplit, i));
    try {
      const std::int64_t count = reader[0].count();
      const std::int64_t step =
          std::max<std::int64_t>(1, reader[0].chunk_images()) * kMemoryReadChunks;
      for (std::int64_t start = 0; start < count; start += step) {
        check_stop();
        const std::int64_t n = std::min(step, count - start);
        read_shard(reader[0], start, n, images_.data() + (at + start) * image_bytes_,
                   labels_.data() + at + start);
      }
      at += count;
    } catch (...) {
      close_shards(&reader);
      throw;
    }
    close_shards(&reader);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  spdlog::info("train split: {} images ({:.1f} MB) from {} shards in RAM in {:.2f} s", at,
               static_cast<double>(images_.size()) / 1e6, split.shards.size(), seconds);
}

void TrainLoader::Impl::open_stream_shards() {
  const SplitInfo& split = manifest_.split(kTrainSplit);
  const std::vector<std::int64_t> offsets = shard_offsets(split);
  const int num_shards = static_cast<int>(split.shards.size());
  const bool by_shard = num_shards >= world_size_;
  std::vector<Block> all;
  for (int i = 0; i < num_shards; ++i) {
    if (by_shard && i % world_size_ != rank_) continue;
    check_stop();
    readers_.push_back(open_shard(dataset_dir_, manifest_, kTrainSplit, i));
    const ShardReader& reader = readers_.back();
    const std::int64_t chunk = std::max<std::int64_t>(1, reader.chunk_images());
    for (std::int64_t start = 0; start < reader.count(); start += chunk) {
      all.push_back(Block{static_cast<int>(readers_.size()) - 1, start,
                          std::min(chunk, reader.count() - start), offsets[i] + start});
    }
  }
  if (by_shard || static_cast<int>(all.size()) < world_size_) {
    blocks_ = std::move(all);
  } else {
    for (std::size_t j = 0; j < all.size(); ++j) {
      if (static_cast<int>(j % world_size_) == rank_) blocks_.push_back(all[j]);
    }
  }
  if (blocks_.empty()) {
    throw DataError(detail::concat("rank ", rank_, " of ", world_size_,
                                   " owns no images of the train split of ",
                                   dataset_dir_.string()));
  }
}

void TrainLoader::Impl::stream_epochs() {
  const int batch = options_.batch_per_rank;
  const std::int64_t steps = steps_per_epoch();
  const BlockReader read_block = [this](int b, std::uint8_t* pixels, std::uint8_t* labels) {
    check_stop();
    const Block& block = blocks_[b];
    read_shard(readers_[block.reader], block.start, block.count, pixels, labels);
  };
  std::uint64_t served = 0;  // the generation this thread last produced
  for (;;) {
    std::int64_t epoch, step;
    std::uint64_t generation;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return stop_.load() || generation_ != served; });
      if (stop_) return;
      generation = served = generation_;
      epoch = epoch_;
      step = first_step_;
    }
    StreamSequence sequence(blocks_, options_.seed, epoch, rank_, options_.shuffle_buffer,
                            image_bytes_);
    sequence.skip(step * batch);
    sequence.materialize(read_block);
    for (; step < steps; ++step) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] {
          return stop_.load() || generation_ != generation ||
                 step < next_consume_ + options_.prefetch_batches;
        });
        if (stop_) return;
        if (generation_ != generation) break;
      }
      RawBatch raw;
      raw.step = step;
      raw.indices.resize(static_cast<std::size_t>(batch));
      raw.labels.resize(static_cast<std::size_t>(batch));
      raw.pixels.resize(static_cast<std::size_t>(batch * image_bytes_));
      for (int i = 0; i < batch; ++i) {
        raw.indices[i] = sequence.emit(&raw.labels[i], raw.pixels.data() + i * image_bytes_);
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (generation_ != generation) continue;  // the loop head notices and breaks
        raw_.push_back(std::move(raw));
      }
      changed_.notify_all();
    }
  }
}

void TrainLoader::Impl::worker_main() {
  for (;;) {
    std::optional<RawBatch> raw;
    Batch batch;
    std::int64_t epoch, step;
    std::uint64_t generation;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] {
        if (stop_) return true;
        if (error_ || generation_ == 0) return false;
        if (stream()) return !raw_.empty();
        return data_ready_ && next_claim_ < steps_per_epoch() &&
               next_claim_ < next_consume_ + options_.prefetch_batches;
      });
      if (stop_) return;
      if (stream()) {
        raw.emplace(std::move(raw_.front()));
        raw_.pop_front();
        step = raw->step;
      } else {
        step = next_claim_++;
      }
      generation = generation_;
      epoch = epoch_;
      if (!spare_.empty()) {
        batch = std::move(spare_.back());
        spare_.pop_back();
      }
    }
    try {
      produce(epoch, step, raw ? &*raw : nullptr, &batch);
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      changed_.notify_all();
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (generation_ != generation) continue;  // a newer start_epoch() made it stale
      ready_.emplace(step, std::move(batch));
    }
    changed_.notify_all();
  }
}

void TrainLoader::Impl::produce(std::int64_t epoch, std::int64_t step, const RawBatch* raw,
                                Batch* out) const {
  const int h = manifest_.height, w = manifest_.width, c = manifest_.channels;
  const int size = options_.batch_per_rank;
  const std::vector<std::int64_t> indices =
      raw ? raw->indices : sampler_.batch_indices(epoch, step);
  out->epoch = epoch;
  out->step = step;
  out->size = size;
  out->images.resize(static_cast<std::size_t>(size * image_bytes_));
  out->labels.resize(static_cast<std::size_t>(size));
  std::vector<std::uint8_t> augmented(static_cast<std::size_t>(image_bytes_));
  for (int i = 0; i < size; ++i) {
    const std::int64_t index = indices[i];
    const std::uint8_t* image =
        raw ? raw->pixels.data() + i * image_bytes_ : images_.data() + index * image_bytes_;
    out->labels[i] = raw ? raw->labels[i] : labels_[static_cast<std::size_t>(index)];
    if (options_.augment) {
      augment_image(image, h, w, c, options_.seed, epoch, index, options_.augment_options,
                    augmented.data());
      image = augmented.data();
    }
    normalizer_.apply(image, h, w, out->images.data() + i * image_bytes_);
  }
}

TrainLoader::TrainLoader(const fs::path& dataset_dir, const Manifest& manifest, int world_size,
                         int rank, const LoaderOptions& options)
    : impl_(std::make_unique<Impl>(dataset_dir, manifest, world_size, rank, options)) {}
TrainLoader::~TrainLoader() = default;
std::int64_t TrainLoader::steps_per_epoch() const { return impl_->steps_per_epoch(); }
void TrainLoader::start_epoch(std::int64_t epoch, std::int64_t first_step) {
  impl_->start_epoch(epoch, first_step);
}
bool TrainLoader::next(Batch* batch) { return impl_->next(batch); }

// ---------------------------------------------------------------------------------------------
// EvalLoader

class EvalLoader::Impl {
 public:
  Impl(const fs::path& dataset_dir, const Manifest& manifest, const std::string& split,
       int world_size, int rank, int batch_size)
      : manifest_(manifest), normalizer_(make_normalizer(manifest)), batch_size_(batch_size) {
    FER_CHECK(batch_size >= 1, ConfigError, "eval batch size must be >= 1, got ", batch_size);
    const SplitInfo& info = manifest.split(split);
    range_ = eval_range(info.count, world_size, rank);
    position_ = range_.begin;
    const std::vector<std::int64_t> offsets = shard_offsets(info);
    try {
      for (int i = 0; i < static_cast<int>(info.shards.size()); ++i) {
        if (offsets[i + 1] <= range_.begin || offsets[i] >= range_.end) continue;
        readers_.push_back(open_shard(dataset_dir, manifest, split, i));
        parts_.push_back(
            Part{static_cast<int>(readers_.size()) - 1, offsets[i], info.shards[i].count});
      }
    } catch (...) {
      close_shards(&readers_);
      throw;
    }
    pixels_.resize(static_cast<std::size_t>(batch_size * manifest.image_bytes()));
    labels_.resize(static_cast<std::size_t>(batch_size));
  }
  ~Impl() { close_shards(&readers_); }

  std::int64_t size() const { return range_.size(); }
  void reset() {
    position_ = range_.begin;
    step_ = 0;
  }

  bool next(Batch* batch) {
    if (position_ >= range_.end) return false;
    const std::int64_t n = std::min<std::int64_t>(batch_size_, range_.end - position_);
    const std::int64_t image_bytes = manifest_.image_bytes();
    // Copy [position_, position_ + n) out of the shards it spans.
    for (const Part& part : parts_) {
      const std::int64_t from = std::max(position_, part.split_begin);
      const std::int64_t to = std::min(position_ + n, part.split_begin + part.count);
      if (from >= to) continue;
      read_shard(readers_[part.reader], from - part.split_begin, to - from,
                 pixels_.data() + (from - position_) * image_bytes,
                 labels_.data() + (from - position_));
    }
    batch->epoch = 0;
    batch->step = step_++;
    batch->size = static_cast<int>(n);
    batch->images.resize(static_cast<std::size_t>(n * image_bytes));
    batch->labels.assign(labels_.begin(), labels_.begin() + n);
    for (std::int64_t i = 0; i < n; ++i) {
      normalizer_.apply(pixels_.data() + i * image_bytes, manifest_.height, manifest_.width,
                        batch->images.data() + i * image_bytes);
    }
    position_ += n;
    return true;
  }

 private:
  struct Part {
    int reader = 0;                // index into readers_
    std::int64_t split_begin = 0;  // index in the split of the shard's first image
    std::int64_t count = 0;        // images in the shard
  };
  const Manifest manifest_;
  const Normalizer normalizer_;
  const int batch_size_;
  EvalRange range_;
  std::vector<ShardReader> readers_;
  std::vector<Part> parts_;    // shards overlapping range_, in split order
  std::int64_t position_ = 0;  // next index in the split
  std::int64_t step_ = 0;
  std::vector<std::uint8_t> pixels_;  // scratch: batch_size images
  std::vector<std::uint8_t> labels_;  // scratch
};

EvalLoader::EvalLoader(const fs::path& dataset_dir, const Manifest& manifest,
                       const std::string& split, int world_size, int rank, int batch_size)
    : impl_(std::make_unique<Impl>(dataset_dir, manifest, split, world_size, rank, batch_size)) {}
EvalLoader::~EvalLoader() = default;
std::int64_t EvalLoader::size() const { return impl_->size(); }
bool EvalLoader::next(Batch* batch) { return impl_->next(batch); }
void EvalLoader::reset() { impl_->reset(); }

}  // namespace fer
