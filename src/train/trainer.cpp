#include "train/trainer.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <optional>
#include <thread>

#include "common/cancel.h"
#include "common/errors.h"
#include "common/fault.h"
#include "common/fs_util.h"
#include "common/logging.h"
#include "common/random.h"
#include "common/trace.h"
#include "data/checksum.h"
#include "data/loader.h"
#include "data/manifest.h"
#include "dist/communicator.h"
#include "dist/grad_sync.h"
#include "dist/mpi_context.h"
#include "model/resnet9.h"
#include "train/checkpoint.h"
#include "train/device.h"
#include "train/metrics.h"
#include "train/one_cycle.h"
#include "train/progress.h"
#include "train/timeline.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace fer {
namespace {

constexpr std::uint64_t kDropoutTag = 0xd509;  // derive_seed tag of per-step dropout seeds
constexpr std::uint64_t kInitTag = 0x1417;     // derive_seed tag of the model initialization
constexpr int kMinSide = 8;                    // ResNet9 pools three times

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The config fields that change how fast a run goes but not what it computes: a resume may
// change them, and the config hash ignores them. The per-rank batch counts as the global batch
// (batch x world size), so a run can resume on another number of ranks.
TrainConfig numerics_only(TrainConfig c, int world) {
  c.train.threads = 0;
  c.data.workers = 1;
  c.data.prefetch_batches = 1;
  c.train.log_every = 1;
  c.train.max_steps = 0;
  c.train.batch_size *= world;
  return c;
}

std::string config_hash(const TrainConfig& config, int world) {
  TrainConfig copy = numerics_only(config, world);
  const std::string yaml = train_config_yaml(copy);
  Sha256 sha;
  sha.update(yaml.data(), yaml.size());
  return sha.hex_digest().substr(0, 16);
}

// Append-only metrics.jsonl: one JSON object per line, flushed per record.
class MetricsLog {
 public:
  // Keeps only records with step <= keep_through_step and, of the epoch records, those of epochs
  // before first_epoch (a resumed run replays the rest; a run resumed mid-epoch writes that
  // epoch's record again).
  MetricsLog(const fs::path& path, std::int64_t keep_through_step, std::int64_t first_epoch)
      : path_(path) {
    if (keep_through_step >= 0 && fs::exists(path)) {
      std::ifstream in(path);
      std::string line, kept;
      while (std::getline(in, line)) {
        try {
          const json record = json::parse(line);
          const bool replayed_epoch = record.value("type", "") == "epoch" &&
                                      record.value("epoch", std::int64_t{0}) >= first_epoch;
          if (record.value("step", std::int64_t{0}) <= keep_through_step && !replayed_epoch) {
            kept += line + "\n";
          }
        } catch (const json::exception&) {
          // a torn last line from a crash: dropped
        }
      }
      write_file_atomic(path, kept);
    } else if (keep_through_step < 0) {
      write_file_atomic(path, "");
    }
    out_.open(path, std::ios::app);
    if (!out_) throw IoError("cannot open " + path.string() + " for writing");
  }
  void append(const json& record) {
    out_ << record.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    out_.flush();
    if (!out_) throw IoError("cannot write " + path_.string() + " (disk full?)");
  }

 private:
  fs::path path_;
  std::ofstream out_;
};

struct EvalResult {
  double loss = 0.0;  // mean cross-entropy over the evaluated samples
  ConfusionMatrix confusion;
  explicit EvalResult(int k) : confusion(k) {}
};

// [size, C, H, W] tensor over a batch's buffer (no copy on CPU).
torch::Tensor batch_images(Batch& batch, const Manifest& m, const torch::Device& device) {
  return torch::from_blob(batch.images.data(), {batch.size, m.channels, m.height, m.width},
                          torch::kFloat32)
      .to(device);
}

torch::Tensor batch_labels(Batch& batch, const torch::Device& device) {
  return torch::from_blob(batch.labels.data(), {batch.size}, torch::kInt64).to(device);
}

// Loss and confusion matrix of this rank's part of a split.
EvalResult evaluate(ResNet9& model, EvalLoader& loader, const Manifest& m,
                    const torch::Device& device) {
  torch::NoGradGuard no_grad;
  model->eval();
  loader.reset();
  EvalResult result(static_cast<int>(m.classes.size()));
  double loss_sum = 0.0;
  Batch batch;
  while (loader.next(&batch)) {
    const auto logits = model->forward(batch_images(batch, m, device));
    const auto labels = batch_labels(batch, device);
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, labels,
                    torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
    const auto predicted = logits.argmax(1).to(torch::kCPU);
    const auto truth = labels.to(torch::kCPU);
    const auto* p = predicted.data_ptr<std::int64_t>();
    const auto* t = truth.data_ptr<std::int64_t>();
    for (int i = 0; i < batch.size; ++i) {
      result.confusion.add(static_cast<int>(t[i]), static_cast<int>(p[i]));
    }
  }
  const auto n = result.confusion.total();
  result.loss = n ? loss_sum / n : 0.0;
  return result;
}

json eval_json(const EvalResult& r, const std::vector<std::string>& classes) {
  const auto& cm = r.confusion;
  json per_class = json::object();
  const auto p = cm.precision(), rc = cm.recall(), f = cm.f1();
  for (std::size_t c = 0; c < classes.size(); ++c) {
    per_class[classes[c]] = {{"precision", p[c]}, {"recall", rc[c]}, {"f1", f[c]}};
  }
  json matrix = json::array();
  for (int t = 0; t < cm.num_classes(); ++t) {
    json row = json::array();
    for (int q = 0; q < cm.num_classes(); ++q) row.push_back(cm.at(t, q));
    matrix.push_back(row);
  }
  return {{"loss", r.loss},        {"accuracy", cm.accuracy()}, {"macro_f1", cm.macro_f1()},
          {"count", cm.total()},   {"per_class", per_class},    {"confusion", matrix}};
}

}  // namespace

namespace {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimConfig& o, double lr,
                                                        ResNet9& model) {
  const auto betas = std::make_tuple(o.betas[0], o.betas[1]);
  if (o.name == "adamw") {
    return std::make_unique<torch::optim::AdamW>(
        model->parameters(),
        torch::optim::AdamWOptions(lr).betas(betas).eps(o.eps).weight_decay(o.weight_decay));
  }
  return std::make_unique<torch::optim::Adam>(
      model->parameters(),
      torch::optim::AdamOptions(lr).betas(betas).eps(o.eps).weight_decay(o.weight_decay));
}

// Sets lr and beta1 on every parameter group (Adam and AdamW have the same option fields).
void set_lr_and_beta1(torch::optim::Optimizer& optimizer, const std::string& name, double lr,
                      double beta1) {
  for (auto& group : optimizer.param_groups()) {
    if (name == "adamw") {
      auto& o = static_cast<torch::optim::AdamWOptions&>(group.options());
      o.lr(lr);
      o.betas(std::make_tuple(beta1, std::get<1>(o.betas())));
    } else {
      auto& o = static_cast<torch::optim::AdamOptions&>(group.options());
      o.lr(lr);
      o.betas(std::make_tuple(beta1, std::get<1>(o.betas())));
    }
  }
}

OneCycleOptions schedule_options(const ScheduleConfig& s, double beta1,
                                 std::int64_t total_steps) {
  OneCycleOptions o;
  o.max_lr = s.max_lr;
  o.total_steps = total_steps;
  o.pct_start = s.pct_start;
  o.anneal = s.anneal;
  o.div_factor = s.div_factor;
  o.final_div_factor = s.final_div_factor;
  o.three_phase = s.three_phase;
  o.cycle_momentum = s.cycle_momentum;
  o.base_momentum = s.base_momentum;
  o.max_momentum = s.max_momentum;
  o.beta1_when_not_cycling = beta1;
  return o;
}

LoaderOptions loader_options(const TrainConfig& c) {
  LoaderOptions o;
  o.mode = c.data.loader;
  o.batch_per_rank = c.train.batch_size;
  o.workers = c.data.workers;
  o.prefetch_batches = c.data.prefetch_batches;
  o.shuffle_buffer = c.data.shuffle_buffer;
  o.augment = c.data.augment;
  o.augment_options.pad = c.data.pad;
  o.augment_options.crop = c.data.pad > 0;
  o.augment_options.flip = c.data.flip;
  o.seed = static_cast<std::uint64_t>(c.train.seed);
  return o;
}

CheckpointMeta make_meta(const Manifest& m, const ResNet9& model, const TrainConfig& c,
                         const std::string& yaml, const std::string& hash) {
  CheckpointMeta meta;
  meta.classes = m.classes;
  meta.mean = m.mean;
  meta.std = m.std;
  meta.height = m.height;
  meta.width = m.width;
  meta.channels = m.channels;
  meta.model = model->options();
  meta.optimizer = c.optim.name;
  meta.config_yaml = yaml;
  meta.config_hash = hash;
  return meta;
}

// Decides where a run starts: a fresh run folder, or a checkpoint to resume from (whose config
// hash is checked against this run's once it is read).
std::optional<fs::path> resolve_resume(const TrainRunOptions& opt) {
  if (opt.resume.empty()) {
    if (fs::exists(opt.run_dir / "config.yaml")) {
      throw ConfigError("run folder " + opt.run_dir.string() + " already holds a run",
                        "pass --resume auto to continue it, or choose another --out");
    }
    return std::nullopt;
  }
  if (opt.resume == "auto") {
    auto found = newest_valid_checkpoint(opt.run_dir / "checkpoints");
    if (!found) spdlog::info("--resume auto: no checkpoint in {}, starting fresh",
                             opt.run_dir.string());
    return found;
  }
  return fs::path(opt.resume);
}

}  // namespace

namespace {

// A blocking collective that cannot hang: waits at most timeout_s, then aborts the whole job
// naming what it waited for (a blocking MPI call cannot be cancelled, so the wait is on Work).
void wait_or_abort(std::unique_ptr<Work> work, double timeout_s, const std::string& what) {
  if (!work->wait_for(timeout_s)) {
    abort_job(static_cast<int>(ExitCode::kComm),
              what + " timed out after " + std::to_string(timeout_s) + " s: " + work->describe() +
                  " (another rank died or hangs)");
  }
  work->wait();
}

void timed_allreduce(Communicator& comm, at::Tensor& t, ReduceOp op, double timeout_s,
                     const std::string& what) {
  wait_or_abort(comm.allreduce_async(t, op), timeout_s, what);
}

// Sums an evaluation over ranks: confusion counts and losses (each rank saw a disjoint part of
// the split, so the sums are the whole split's).
void reduce_eval(EvalResult* r, Communicator& comm, double timeout_s) {
  auto& counts = r->confusion.counts();
  const double local_loss_sum = r->loss * static_cast<double>(r->confusion.total());
  at::Tensor c = torch::tensor(counts, torch::kInt64);
  timed_allreduce(comm, c, ReduceOp::kSum, timeout_s, "evaluation all-reduce");
  std::copy(c.data_ptr<std::int64_t>(), c.data_ptr<std::int64_t>() + c.numel(), counts.begin());
  at::Tensor loss = torch::tensor({local_loss_sum}, torch::kFloat64);
  timed_allreduce(comm, loss, ReduceOp::kSum, timeout_s, "evaluation all-reduce");
  const auto n = r->confusion.total();
  r->loss = n ? loss.item<double>() / n : 0.0;
}

// 64-bit prefix of a SHA-256, as a signed integer for an int64 all-gather.
std::int64_t hash64(const std::string& text) {
  Sha256 sha;
  sha.update(text.data(), text.size());
  return static_cast<std::int64_t>(std::stoull(sha.hex_digest().substr(0, 15), nullptr, 16));
}

// Start-up agreement (DESIGN.md): every rank must train the same thing. Compares hashes of the
// resolved config, the manifest and the parameter shapes; a mismatch stops every rank with the
// same error naming the rank and the item.
void check_agreement(Communicator& comm, const std::string& config_yaml, const Manifest& manifest,
                     ResNet9& model) {
  std::string shapes;
  for (const auto& p : model->named_parameters()) {
    shapes += p.key() + ":" + std::to_string(p.value().numel()) + ";";
  }
  const char* items[] = {"config", "dataset manifest", "model parameter shapes"};
  at::Tensor mine = torch::tensor(
      {hash64(config_yaml), hash64(manifest_to_json(manifest)), hash64(shapes)}, torch::kInt64);
  const at::Tensor all = comm.allgather(mine).view({comm.size(), 3});
  for (int r = 1; r < comm.size(); ++r) {
    for (int i = 0; i < 3; ++i) {
      if (all[r][i].item<std::int64_t>() != all[0][i].item<std::int64_t>()) {
        throw CommError(std::string("start-up agreement failed: rank ") + std::to_string(r) +
                            "'s " + items[i] + " differs from rank 0's",
                        "every rank must get the same --config, --set, --data and build");
      }
    }
  }
}

void broadcast_model(Communicator& comm, ResNet9& model, double timeout_s) {
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) {
    at::Tensor t = p.data();
    wait_or_abort(comm.broadcast_async(t, 0), timeout_s, "initial weight broadcast");
  }
  for (auto& b : model->buffers()) {
    wait_or_abort(comm.broadcast_async(b, 0), timeout_s, "initial buffer broadcast");
  }
}

// Every rank's parameters and buffers, copied (the best model so far, kept in memory).
std::vector<at::Tensor> snapshot(ResNet9& model) {
  std::vector<at::Tensor> out;
  for (const auto& p : model->parameters()) out.push_back(p.detach().clone());
  for (const auto& b : model->buffers()) out.push_back(b.detach().clone());
  return out;
}

void restore(ResNet9& model, const std::vector<at::Tensor>& saved) {
  torch::NoGradGuard no_grad;
  std::size_t i = 0;
  for (auto& p : model->parameters()) p.copy_(saved[i++]);
  for (auto& b : model->buffers()) b.copy_(saved[i++]);
}

[[noreturn]] void hang_forever() {
  while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
}

}  // namespace

TrainSummary run_training(const TrainConfig& config_in, const TrainRunOptions& opt) {
  TrainConfig config = config_in;
  config.validate();
  Communicator* comm = opt.comm;
  const int rank = comm ? comm->rank() : 0;
  const int world = comm ? comm->size() : 1;
  const bool leader = rank == 0;
  const auto started = Clock::now();
  const int threads = configure_threads(opt.threads > 0 ? opt.threads : config.train.threads);
  if (leader) check_blas();
  const torch::Device device(resolve_device_name(opt.device));
  const Manifest manifest = load_manifest(opt.data_dir);
  if (manifest.height < kMinSide || manifest.width < kMinSide) {
    throw DataError("images of " + opt.data_dir.string() + " are " +
                        std::to_string(manifest.height) + "x" + std::to_string(manifest.width) +
                        "; ResNet9 needs at least " + std::to_string(kMinSide) + "x" +
                        std::to_string(kMinSide),
                    "re-pack with a larger --size");
  }
  if (!manifest.splits.count("val")) {
    throw DataError(opt.data_dir.string() + " has no val split", "re-pack it with fer-pack");
  }
  const int num_classes = static_cast<int>(manifest.classes.size());

  const std::string yaml = train_config_yaml(config);
  const std::string hash = config_hash(config, world);
  const auto resume_from = resolve_resume(opt);
  const fs::path ckpt_dir = opt.run_dir / "checkpoints";
  if (comm) comm->barrier();  // every rank has looked at the run folder before rank 0 writes it
  fs::create_directories(opt.run_dir / "logs");
  add_log_file((opt.run_dir / "logs" / ("rank-" + std::to_string(rank) + ".log")).string());
  if (leader) {
    fs::create_directories(ckpt_dir);
    write_file_atomic(opt.run_dir / "config.yaml", yaml);
  }
  const bool sync_bn =
      config.model.sync_bn == "on" || (config.model.sync_bn == "auto" && world > 1);
  spdlog::info("fer-dist-train: data {} ({} classes, {}x{}x{}), run {}, device {}, {} rank(s) x "
               "{} threads, SyncBN {}",
               opt.data_dir.string(), num_classes, manifest.height, manifest.width,
               manifest.channels, opt.run_dir.string(), device.str(), world, threads,
               sync_bn ? "on" : "off");
  if (leader) spdlog::info("resolved config (hash {}):\n{}", hash, yaml);

  torch::manual_seed(derive_seed({static_cast<std::uint64_t>(config.train.seed), kInitTag}));
  ResNet9Options model_options;
  model_options.in_channels = manifest.channels;
  model_options.num_classes = num_classes;
  model_options.width = config.model.width;
  model_options.dropout = config.model.dropout;
  model_options.sync_bn = sync_bn;
  ResNet9 model(model_options);
  model->to(device);
  if (sync_bn && comm) {
    const double timeout_s = config.dist.comm_timeout_s;
    model->set_allreduce([comm, timeout_s](torch::Tensor& t) {
      const trace::ScopedLabel label("syncbn allreduce");
      const trace::Span span("syncbn allreduce");
      timed_allreduce(*comm, t, ReduceOp::kSum, timeout_s, "SyncBatchNorm all-reduce");
    });
  }
  if (comm && world > 1) {
    check_agreement(*comm, yaml, manifest, model);
    broadcast_model(*comm, model, config.dist.comm_timeout_s);
  }
  auto optimizer = make_optimizer(config.optim, config.schedule.max_lr, model);

  TrainLoader loader(opt.data_dir, manifest, world, rank, loader_options(config));
  EvalLoader val_loader(opt.data_dir, manifest, "val", world, rank,
                        config.train.eval_batch_size);
  const std::int64_t steps_per_epoch = loader.steps_per_epoch();
  const std::int64_t total_steps = steps_per_epoch * config.train.epochs;
  const OneCycleSchedule schedule(
      schedule_options(config.schedule, config.optim.betas[0], total_steps));
  const std::int64_t last_step =
      config.train.max_steps > 0 ? std::min<std::int64_t>(total_steps, config.train.max_steps)
                                 : total_steps;

  CheckpointMeta meta = make_meta(manifest, model, config, yaml, hash);
  meta.world_size = world;
  std::int64_t step = 0, epoch = 0, first_step_in_epoch = 0;
  CheckpointMeta resumed_partial;  // train statistics of the part of `epoch` already done
  if (resume_from) {
    CheckpointMeta saved;
    load_checkpoint_into(*resume_from, model, optimizer.get(), &saved);
    if (saved.config_hash != hash) {
      throw ConfigError("the config differs from the one that wrote " + resume_from->string() +
                            " (only threads, workers, logging, max_steps and the split of the "
                            "global batch over ranks may change on resume)",
                        "resume with the same config, or start a new run with another --out");
    }
    step = saved.step;
    epoch = saved.epoch;
    first_step_in_epoch = saved.step_in_epoch;
    meta.best_val_accuracy = saved.best_val_accuracy;
    meta.best_step = saved.best_step;
    resumed_partial = saved;
    spdlog::info("resuming from {} at step {} (epoch {}, step {} of it; written by {} rank(s))",
                 resume_from->string(), step, epoch, first_step_in_epoch, saved.world_size);
  }
  std::unique_ptr<MetricsLog> metrics;
  if (leader) {
    metrics = std::make_unique<MetricsLog>(opt.run_dir / "metrics.jsonl",
                                           resume_from ? step : -1, epoch);
  }
  std::unique_ptr<GradSync> grad_sync;
  if (comm && world > 1) {
    GradSyncOptions gs;
    gs.bucket_mb = config.dist.bucket_mb;
    gs.overlap = config.dist.overlap;
    gs.timeout_s = config.dist.comm_timeout_s;
    grad_sync = std::make_unique<GradSync>(model->parameters(), *comm, gs);
    spdlog::info("GradSync: {} buckets, overlap {}", grad_sync->num_buckets(),
                 config.dist.overlap ? "on" : "off");
  }

  auto save = [&](std::int64_t next_epoch, std::int64_t next_step_in_epoch) {
    if (!leader) return;
    const trace::Span span("checkpoint");
    meta.step = step;
    meta.epoch = next_epoch;
    meta.step_in_epoch = next_step_in_epoch;
    save_checkpoint(ckpt_dir / checkpoint_file_name(step), model, optimizer.get(), meta);
    prune_checkpoints(ckpt_dir, config.checkpoint.keep_last);
  };
  // The mean of a per-rank scalar over ranks (the global batch's mean loss for equal batches).
  auto global_mean = [&](double value) {
    if (!comm || world == 1) return value;
    at::Tensor t = torch::tensor({value}, torch::kFloat64);
    const trace::ScopedLabel label("loss allreduce");
    timed_allreduce(*comm, t, ReduceOp::kAvg, config.dist.comm_timeout_s,
                    "loss all-reduce at step " + std::to_string(step));
    return t.item<double>();
  };
  auto global_reduce = [&](std::int64_t value, ReduceOp op) {
    if (!comm || world == 1) return value;
    at::Tensor t = torch::tensor({value}, torch::kInt64);
    timed_allreduce(*comm, t, op, config.dist.comm_timeout_s,
                    "all-reduce at step " + std::to_string(step));
    return t.item<std::int64_t>();
  };
  auto global_sum = [&](std::int64_t value) { return global_reduce(value, ReduceOp::kSum); };
  // The train statistics of the steps done in the current epoch, for the next checkpoint.
  auto set_partial_epoch = [&](double loss_sum, std::int64_t loss_steps, std::int64_t correct,
                               std::int64_t seen) {
    meta.epoch_loss_sum = loss_sum;
    meta.epoch_loss_steps = loss_steps;
    meta.epoch_correct = correct;
    meta.epoch_seen = seen;
  };
  auto evaluate_all = [&](EvalLoader& l) {
    const trace::Span span("eval");
    EvalResult r = evaluate(model, l, manifest, device);
    if (comm && world > 1) reduce_eval(&r, *comm, config.dist.comm_timeout_s);
    return r;
  };

  std::int64_t images_trained = 0, skipped_steps = 0;
  double train_seconds = 0.0, exposed_comm_seconds = 0.0;
  // Process CPU time (all threads: compute, loader, communication) spent in training epochs: on a
  // machine shared with other jobs it measures the work per image far more steadily than the
  // wall clock (the scaling benchmark compares both).
  double train_cpu_seconds = 0.0;
  std::vector<at::Tensor> best_state;
  RateLimiter nonfinite_warnings(std::chrono::seconds(10));
  const FaultPlan fault = fault_plan_from_env();
  namespace F = torch::nn::functional;
  const auto ce_options = F::CrossEntropyFuncOptions().label_smoothing(config.optim.label_smoothing);
  Timeline timeline(opt.timeline, opt.run_dir, world > 1 ? comm : nullptr,
                    config.dist.comm_timeout_s);
  ProgressReporter progress(leader && ::isatty(STDERR_FILENO), step, last_step, steps_per_epoch,
                            config.train.epochs);
  // The next batch, and the time the training thread waited for it.
  auto next_batch = [&](Batch* b) {
    timeline.before_step(step);
    const trace::Span span("data wait");
    return loader.next(b);
  };

  for (; epoch < config.train.epochs && step < last_step; ++epoch, first_step_in_epoch = 0) {
    const auto epoch_start = Clock::now();
    const std::clock_t epoch_cpu_start = std::clock();
    loader.start_epoch(epoch, first_step_in_epoch);
    progress.start_epoch(epoch, first_step_in_epoch);
    model->train();
    // Per-epoch train statistics: loss_sum adds the global mean loss of each step (the same on
    // every rank), correct/seen count this rank's samples. A run resumed mid-epoch starts from the
    // checkpoint's sums (the counts on rank 0 only, so the epoch's global sums come out exact).
    double loss_sum = 0.0;
    std::int64_t loss_steps = 0, correct = 0, seen = 0, seen_before_resume = 0;
    if (first_step_in_epoch > 0 && resumed_partial.epoch == epoch) {
      loss_sum = resumed_partial.epoch_loss_sum;
      loss_steps = resumed_partial.epoch_loss_steps;
      if (leader) {
        correct = resumed_partial.epoch_correct;
        seen = seen_before_resume = resumed_partial.epoch_seen;
      }
    }
    auto window_start = Clock::now();
    std::int64_t window_images = 0;
    Batch batch;
    while (step < last_step && next_batch(&batch)) {
      if (fault.fires(rank, step, "exit")) {
        spdlog::critical("fault injection: rank {} exits at step {}", rank, step);
        std::_Exit(99);
      }
      if (fault.fires(rank, step, "hang")) {
        spdlog::critical("fault injection: rank {} hangs at step {}", rank, step);
        hang_forever();
      }
      if (fault.fires(rank, step, "preempt")) {
        spdlog::critical("fault injection: rank {} raises SIGUSR1 at step {}", rank, step);
        std::raise(SIGUSR1);
      }
      // Every rank polls its signal flag once per step and the ranks agree (max: preemption wins
      // over interrupt) so that all stop at the same step, before it starts.
      const auto stop = static_cast<StopReason>(
          global_reduce(static_cast<std::int64_t>(stop_reason()), ReduceOp::kMax));
      if (stop != StopReason::kNone) {
        set_partial_epoch(loss_sum, loss_steps, global_sum(correct), global_sum(seen));
        save(epoch, batch.step);
        // No rank exits before the checkpoint is on disk: a launcher that sees one rank end
        // with an error code kills the others, rank 0 included.
        global_sum(0);
        if (stop == StopReason::kPreempt) {
          spdlog::warn("preempted (SIGUSR1/SIGTERM): checkpoint written at step {}; exiting with "
                       "code {} so the job is requeued, resume with --resume auto",
                       step, static_cast<int>(ExitCode::kPreempted));
          throw Preempted();
        }
        spdlog::warn("interrupted: checkpoint written at step {}; resume with --resume auto",
                     step);
        throw Interrupted();
      }
      const double lr = schedule.lr(step);
      const double beta1 = schedule.momentum(step);
      set_lr_and_beta1(*optimizer, config.optim.name, lr, beta1);
      torch::manual_seed(
          derive_seed({static_cast<std::uint64_t>(config.train.seed), kDropoutTag,
                       static_cast<std::uint64_t>(step), static_cast<std::uint64_t>(rank)}));
      trace::Span forward_span("forward");
      const auto x = batch_images(batch, manifest, device);
      const auto y = batch_labels(batch, device);
      for (auto& p : model->parameters()) p.mutable_grad().reset();  // set_to_none
      const auto logits = model->forward(x);
      auto loss = F::cross_entropy(logits, y, ce_options);
      if (fault.fires(rank, step, "nan")) loss = loss * std::nan("");
      forward_span.end();
      trace::Span loss_span("loss allreduce");
      const double loss_value = global_mean(loss.item<double>());
      loss_span.end();
      if (!std::isfinite(loss_value)) {
        if (!config.train.skip_nonfinite) {
          throw TrainingError(
              "loss is " + std::to_string(loss_value) + " at step " + std::to_string(step) +
                  " (epoch " + std::to_string(epoch) + "); stopping, the last good checkpoint is "
                  "in " + ckpt_dir.string(),
              "lower schedule.max_lr or raise optim.grad_clip_*, or set "
              "train.skip_nonfinite=true to skip such steps");
        }
        long suppressed = 0;
        if (nonfinite_warnings.allow(&suppressed)) {
          spdlog::warn("skipping step {}: loss is {} ({} more skipped quietly)", step, loss_value,
                       suppressed);
        }
        ++skipped_steps;
        ++step;
        continue;
      }
      trace::Span backward_span("backward");
      loss.backward();
      backward_span.end();
      if (grad_sync) {
        const trace::Span span("grad sync wait");
        grad_sync->finish(step);
        exposed_comm_seconds += grad_sync->last_wait_seconds();
      }
      trace::Span optimizer_span("optimizer");
      if (config.optim.grad_clip_value > 0) {
        torch::nn::utils::clip_grad_value_(model->parameters(), config.optim.grad_clip_value);
      }
      if (config.optim.grad_clip_norm > 0) {
        torch::nn::utils::clip_grad_norm_(model->parameters(), config.optim.grad_clip_norm);
      }
      optimizer->step();
      optimizer_span.end();
      ++step;
      loss_sum += loss_value;
      ++loss_steps;
      correct += logits.argmax(1).eq(y).sum().item<std::int64_t>();
      seen += batch.size;
      window_images += batch.size;
      progress.step(step, loss_value, lr, static_cast<std::int64_t>(world) * batch.size);
      if (step % config.train.log_every == 0 || step == last_step) {
        const double rate = world * window_images / std::max(1e-9, seconds_since(window_start));
        if (metrics) {
          metrics->append({{"type", "step"}, {"step", step}, {"epoch", epoch},
                           {"loss", loss_value}, {"lr", lr}, {"beta1", beta1},
                           {"images_per_s", rate}});
        }
        progress.clear();  // the line scrolls above the bar
        spdlog::info("{}", progress.status_line(rate));
        window_start = Clock::now();
        window_images = 0;
      }
    }
    progress.clear();
    const double epoch_seconds = seconds_since(epoch_start);
    train_seconds += epoch_seconds;
    train_cpu_seconds += static_cast<double>(std::clock() - epoch_cpu_start) / CLOCKS_PER_SEC;
    const std::int64_t global_seen = global_sum(seen);
    const std::int64_t global_correct = global_sum(correct);
    images_trained += global_seen - seen_before_resume;
    const bool last = epoch + 1 == config.train.epochs || step >= last_step;
    json record{{"type", "epoch"},
                {"epoch", epoch},
                {"step", step},
                {"train_loss", loss_steps ? loss_sum / loss_steps : 0.0},
                {"train_accuracy", global_seen ? double(global_correct) / global_seen : 0.0},
                {"seconds", epoch_seconds}};
    if ((epoch + 1) % config.train.eval_every == 0 || last) {
      const EvalResult val = evaluate_all(val_loader);
      record["val"] = eval_json(val, manifest.classes);
      const double acc = val.confusion.accuracy();
      spdlog::info("epoch {} done: train loss {:.4f} acc {:.4f} | val loss {:.4f} acc {:.4f} "
                   "macro-F1 {:.4f} ({:.1f} s)",
                   epoch, record["train_loss"].get<double>(),
                   record["train_accuracy"].get<double>(), val.loss, acc,
                   val.confusion.macro_f1(), epoch_seconds);
      if (acc > meta.best_val_accuracy) {
        meta.best_val_accuracy = acc;
        meta.best_step = step;
        meta.step = step;
        meta.epoch = epoch + 1;
        meta.step_in_epoch = 0;
        set_partial_epoch(0.0, 0, 0, 0);
        best_state = snapshot(model);
        if (leader) {
          const trace::Span span("checkpoint");
          save_checkpoint(ckpt_dir / "best.pt", model, nullptr, meta);
        }
      }
    }
    if (metrics) metrics->append(record);
    const std::int64_t done_in_epoch = step - epoch * steps_per_epoch;
    if (done_in_epoch < steps_per_epoch) {
      // stopped by train.max_steps inside the epoch
      set_partial_epoch(loss_sum, loss_steps, global_correct, global_seen);
      save(epoch, done_in_epoch);
    } else if ((epoch + 1) % config.checkpoint.every_epochs == 0 || last) {
      set_partial_epoch(0.0, 0, 0, 0);
      save(epoch + 1, 0);
    }
  }

  TrainSummary summary;
  summary.steps = step;
  summary.best_val_accuracy = meta.best_val_accuracy;
  summary.images_per_second = train_seconds > 0 ? images_trained / train_seconds : 0.0;
  const double all_ranks_cpu_seconds = global_mean(train_cpu_seconds) * world;
  json summary_json{{"steps", step},
                    {"epochs", config.train.epochs},
                    {"world_size", world},
                    {"best_val_accuracy", meta.best_val_accuracy},
                    {"best_step", meta.best_step},
                    {"skipped_steps", skipped_steps},
                    {"train_images_per_s", summary.images_per_second},
                    {"train_cpu_s", all_ranks_cpu_seconds},
                    {"train_images_per_cpu_s",
                     all_ranks_cpu_seconds > 0 ? images_trained / all_ranks_cpu_seconds : 0.0},
                    {"exposed_comm_s_per_step",
                     step > 0 ? exposed_comm_seconds / std::max<std::int64_t>(1, step) : 0.0},
                    {"seconds", seconds_since(started)},
                    {"config_hash", hash},
                    {"classes", manifest.classes}};
  if (manifest.splits.count("test")) {
    // The best model: kept in memory by this run, else best.pt of the resumed run.
    const fs::path best = ckpt_dir / "best.pt";
    if (!best_state.empty()) {
      restore(model, best_state);
    } else if (fs::exists(best)) {
      load_checkpoint_into(best, model, nullptr, nullptr);
    }
    EvalLoader test_loader(opt.data_dir, manifest, "test", world, rank,
                           config.train.eval_batch_size);
    const EvalResult test = evaluate_all(test_loader);
    summary.test_accuracy = test.confusion.accuracy();
    summary_json["test"] = eval_json(test, manifest.classes);
    spdlog::info("test (best checkpoint, step {}): accuracy {:.4f} macro-F1 {:.4f}",
                 meta.best_step, summary.test_accuracy, test.confusion.macro_f1());
  }
  timeline.finish();
  if (leader) write_file_atomic(opt.run_dir / "summary.json", summary_json.dump(2) + "\n");
  return summary;
}

std::string evaluate_checkpoint(const fs::path& checkpoint, const fs::path& data_dir,
                                const std::string& device_name, int batch_size, int threads) {
  configure_threads(threads);
  check_blas();
  const torch::Device device(resolve_device_name(device_name));
  CheckpointMeta meta;
  ResNet9 model = load_checkpoint_model(checkpoint, &meta);
  model->to(device);
  const Manifest manifest = load_manifest(data_dir);
  if (manifest.classes != meta.classes || manifest.channels != meta.channels ||
      manifest.height != meta.height || manifest.width != meta.width) {
    throw DataError(data_dir.string() + " does not match the checkpoint (classes or image shape)",
                    "evaluate on the dataset the checkpoint was trained on");
  }
  json out{{"checkpoint", checkpoint.string()}, {"step", meta.step}};
  for (const char* split : {"val", "test"}) {
    if (!manifest.splits.count(split)) continue;
    EvalLoader loader(data_dir, manifest, split, 1, 0, batch_size);
    const EvalResult r = evaluate(model, loader, manifest, device);
    out[split] = eval_json(r, manifest.classes);
    std::printf("%-5s accuracy %.4f  macro-F1 %.4f  loss %.4f  (%lld images)\n", split,
                r.confusion.accuracy(), r.confusion.macro_f1(), r.loss,
                static_cast<long long>(r.confusion.total()));
  }
  return out.dump(2);
}

}  // namespace fer
