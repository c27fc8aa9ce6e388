#include "train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <spdlog/fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <thread>

#include "common/errors.h"
#include "common/fs_util.h"
#include "common/random.h"
#include "common/trace.h"
#include "dist/grad_sync.h"
#include "train/agreement.h"
#include "train/device.h"
#include "train/precision.h"
#include "train/train_batches.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace fer {
namespace {

constexpr std::uint64_t kDropoutTag = 0xd50a;  // derive_seed tag of the per-step global dropout mask
constexpr std::uint64_t kInitTag = 0x1417;     // derive_seed tag of the model initialization
constexpr int kMinSide = 8;                    // ResNet9 pools three times

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

Manifest load_trainable_manifest(const fs::path& data_dir) {
  Manifest m = load_manifest(data_dir);
  if (m.height < kMinSide || m.width < kMinSide) {
    throw DataError("images of " + data_dir.string() + " are " + std::to_string(m.height) + "x" +
                        std::to_string(m.width) + "; ResNet9 needs at least " +
                        std::to_string(kMinSide) + "x" + std::to_string(kMinSide),
                    "re-pack with a larger --size");
  }
  if (!m.splits.count("val")) {
    throw DataError(data_dir.string() + " has no val split", "re-pack it with fer-pack");
  }
  return m;
}

TrainConfig validated(TrainConfig c) {
  c.validate();
  return c;
}

LoaderOptions loader_options(const TrainConfig& c) {
  LoaderOptions o;
  o.mode = c.data.loader;
  o.batch_per_rank = c.train.batch_size * c.train.accumulate_steps;  // K micro-batches
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

// Where a run starts: a fresh run folder, or a checkpoint to resume from.
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
    if (!found) {
      spdlog::info("--resume auto: no checkpoint in {}, starting fresh", opt.run_dir.string());
    }
    return found;
  }
  return fs::path(opt.resume);
}

// A process that runs alone gets planes that never communicate.
std::unique_ptr<ProcessGroups> local_groups_unless(const TrainRunOptions& options) {
  if (options.groups) return nullptr;
  PlaneOptions local;
  local.device = resolve_device(options.device);
  return std::make_unique<ProcessGroups>(local);
}

std::string yaml_of(TrainConfig config) { return train_config_yaml(config); }

std::vector<torch::Tensor> snapshot(ResNet9& model) {
  std::vector<torch::Tensor> out;
  for (const auto& p : model->parameters()) out.push_back(p.detach().clone());
  for (const auto& b : model->buffers()) out.push_back(b.detach().clone());
  return out;
}

void restore(ResNet9& model, const std::vector<torch::Tensor>& saved) {
  torch::NoGradGuard no_grad;
  std::size_t i = 0;
  for (auto& p : model->parameters()) p.copy_(saved[i++]);
  for (auto& b : model->buffers()) b.copy_(saved[i++]);
}

[[noreturn]] void hang_forever() {
  while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
}

}  // namespace

Trainer::Trainer(const TrainConfig& config, const TrainRunOptions& options)
    : config_(validated(config)),
      options_(options),
      local_groups_(local_groups_unless(options)),
      control_(options.groups ? options.groups->control() : local_groups_->control()),
      data_(options.groups ? options.groups->data() : local_groups_->data()),
      rank_(control_.rank()),
      world_(control_.size()),
      leader_(rank_ == 0),
      device_(resolve_device(options.device)),
      manifest_(load_trainable_manifest(options.data_dir)),
      config_yaml_(yaml_of(config_)),
      config_hash_(config_hash(config_, world_)),
      precision_(parse_precision(config_.train.precision)),
      ckpt_dir_(options.run_dir / "checkpoints"),
      fault_(fault_plan_from_env()),
      started_(Clock::now()) {
  FER_CHECK(data_.device() == device_, ConfigError, "the data plane carries tensors on ",
            data_.device().str(), " but the model is on ", device_.str());
  const int threads = configure_threads(options.threads > 0 ? options.threads
                                                            : config_.train.threads);
  if (leader_) check_blas();
  check_precision(precision_, device_);
  const std::string cuda_math =
      apply_cuda_math_settings(config_.train.cudnn_benchmark, config_.train.tf32);
  sync_bn_ = config_.model.sync_bn == "on" || (config_.model.sync_bn == "auto" && world_ > 1);
  const bool sync_bn = sync_bn_;
  spdlog::info("fer-dist-train: data {} ({} classes, {}x{}x{}), run {}, rank {} on {}, {} rank(s) "
               "x {} threads, SyncBN {}, {}{}{}",
               options.data_dir.string(), manifest_.classes.size(), manifest_.height,
               manifest_.width, manifest_.channels, options.run_dir.string(), rank_,
               device_.str(), world_, threads, sync_bn ? "on" : "off", to_string(precision_),
               config_.model.channels_last ? ", channels_last" : "",
               device_.is_cuda() ? ", " + cuda_math : std::string());

  torch::manual_seed(derive_seed({static_cast<std::uint64_t>(config_.train.seed), kInitTag}));
  ResNet9Options model_options;
  model_options.in_channels = manifest_.channels;
  model_options.num_classes = static_cast<int>(manifest_.classes.size());
  model_options.width = config_.model.width;
  model_options.dropout = config_.model.dropout;
  model_options.sync_bn = sync_bn;
  model_options.channels_last = config_.model.channels_last;
  model_ = ResNet9(model_options);
  model_->to(device_);
  if (weight_dtype(precision_) != torch::kFloat32) {
    // Floating parameters and buffers only (Module::to(dtype) would also turn BatchNorm's int64
    // num_batches_tracked into a float).
    torch::NoGradGuard no_grad;
    for (auto& p : model_->parameters()) p.set_data(p.to(weight_dtype(precision_)));
    for (auto& b : model_->buffers()) {
      if (b.is_floating_point()) b.set_data(b.to(weight_dtype(precision_)));
    }
  }
  if (sync_bn && data_.active()) {
    DataPlane* data = &data_;
    model_->set_allreduce([data](torch::Tensor& t) {
      const trace::ScopedLabel label("syncbn allreduce");
      const trace::Span span("syncbn allreduce");
      data->allreduce(t, ReduceOp::kSum, "SyncBatchNorm all-reduce");
    });
  }
  optimizer_ = std::make_unique<TrainOptimizer>(config_.optim, config_.schedule.max_lr, model_);
  LoaderOptions loading = loader_options(config_);
  loading.mode = resolve_loader_mode(config_.data.loader, device_);
  batches_ = std::make_unique<TrainBatches>(options.data_dir, manifest_, world_, rank_, loading,
                                            device_);
  eval_on_device_ = loading.mode == "device";
  val_batches_ = eval_batches("val");
  steps_per_epoch_ = batches_->steps_per_epoch();
  const std::int64_t total_steps = steps_per_epoch_ * config_.train.epochs;
  schedule_.emplace(schedule_options(config_.schedule, config_.optim.betas[0], total_steps));
  last_step_ = config_.train.max_steps > 0
                   ? std::min<std::int64_t>(total_steps, config_.train.max_steps)
                   : total_steps;
  ce_options_.label_smoothing(config_.optim.label_smoothing);
  if (config_.optim.class_weights == "balanced") {
    const auto weights = balanced_class_weights(manifest_.split("train").class_counts);
    class_weights_ = torch::tensor(weights, weight_dtype(precision_)).to(device_);
    ce_options_.reduction(torch::kNone);  // weighted per sample, then the plain mean
    spdlog::info("class weights (balanced): {}", fmt::join(weights, ", "));
  }
  read_every_step_ = config_.train.host_sync == "step" ||
                     (config_.train.host_sync == "auto" && !device_.is_cuda());
  pending_ = torch::zeros({2}, torch::TensorOptions(torch::kFloat64).device(device_));
  eval_options_.tta = parse_tta(config_.eval.tta);
  eval_options_.pad = config_.data.pad;
}

Trainer::~Trainer() = default;

void Trainer::setup() {
  resume_path_ = resolve_resume(options_);
  control_.barrier("run folder check");  // every rank has looked before rank 0 writes it
  fs::create_directories(options_.run_dir / "logs");
  add_log_file((options_.run_dir / "logs" / ("rank-" + std::to_string(rank_) + ".log")).string());
  spdlog::info("rank {}/{} on host {}, local rank {}, device {}", rank_, world_, host_name(),
               (options_.groups ? options_.groups : local_groups_.get())->local_rank(),
               device_.str());
  if (leader_) {
    fs::create_directories(ckpt_dir_);
    write_file_atomic(options_.run_dir / "config.yaml", config_yaml_);
    spdlog::info("resolved config (hash {}):\n{}", config_hash_, config_yaml_);
  }
  if (data_.active()) {
    check_agreement(control_, config_yaml_, manifest_, model_);
    broadcast_model(data_, model_);
    GradSyncOptions gs;
    gs.bucket_mb = config_.dist.bucket_mb;
    gs.overlap = config_.dist.overlap;
    // With the fused optimizer the buckets are slices of its flat gradient buffers (built with
    // optimizer_ in the constructor; a resume only copies state into them): clip and step read
    // the averages where GradSync writes them.
    const FlatGradients flat = optimizer_->flat_gradients();
    grad_sync_ = std::make_unique<GradSync>(model_->parameters(), data_, gs, flat);
    spdlog::info("GradSync: {} buckets, overlap {}, {}", grad_sync_->num_buckets(),
                 config_.dist.overlap ? "on" : "off",
                 flat.empty() ? "own buffers" : "in the optimizer's flat gradient buffers");
  }
  if (resume_path_) resume_from(*resume_path_);
  if (leader_) {
    metrics_ = std::make_unique<MetricsLog>(options_.run_dir / "metrics.jsonl",
                                            resume_path_ ? state_.step : -1, state_.epoch);
  }
  timeline_ = std::make_unique<Timeline>(options_.timeline, options_.run_dir, control_);
  progress_ = std::make_unique<ProgressReporter>(leader_ && ::isatty(STDERR_FILENO), state_.step,
                                                 last_step_, steps_per_epoch_,
                                                 config_.train.epochs);
}

void Trainer::resume_from(const fs::path& checkpoint) {
  CheckpointMeta saved;
  load_checkpoint_into(checkpoint, model_, &optimizer_->checkpoint_state(), &saved);
  optimizer_->restore_checkpoint_state();
  if (saved.config_hash != config_hash_) {
    throw ConfigError("the config differs from the one that wrote " + checkpoint.string() +
                          " (only threads, workers, logging, max_steps and the split of the "
                          "global batch over ranks may change on resume)",
                      "resume with the same config, or start a new run with another --out");
  }
  state_.step = saved.step;
  state_.epoch = saved.epoch;
  state_.step_in_epoch = saved.step_in_epoch;
  state_.epoch_totals = {saved.epoch_loss_sum, saved.epoch_loss_steps, saved.epoch_correct,
                         saved.epoch_seen};
  state_.best_val_accuracy = saved.best_val_accuracy;
  state_.best_step = saved.best_step;
  spdlog::info("resuming from {} at step {} (epoch {}, step {} of it; written by {} rank(s))",
               checkpoint.string(), state_.step, state_.epoch, state_.step_in_epoch,
               saved.world_size);
}

TrainSummary Trainer::run() {
  while (state_.epoch < config_.train.epochs && state_.step < last_step_) {
    const auto epoch_start = Clock::now();
    const std::clock_t cpu_start = std::clock();
    train_epoch();
    const double seconds = seconds_since(epoch_start);
    state_.train_seconds += seconds;
    state_.train_cpu_seconds += static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC;
    end_epoch(seconds);
  }
  return finish();
}

void Trainer::train_epoch() {
  batches_->start_epoch(state_.epoch, state_.step_in_epoch);
  progress_->start_epoch(state_.epoch, state_.step_in_epoch);
  model_->train();
  window_start_ = Clock::now();
  window_images_ = 0;
  torch::Tensor images, labels;
  while (state_.step < last_step_) {
    timeline_->before_step(state_.step);
    {
      const trace::Span span("data wait");
      if (!batches_->next(&images, &labels)) break;
    }
    const StepResult result = train_step(images, labels);
    record_step(result, static_cast<int>(images.size(0)));
    if (result.stop != StopReason::kNone) stop_run(result.stop);
  }
}

// forward -> loss -> the step's one control all-reduce -> backward (gradients all-reduced in
// buckets, overlapped) -> clip -> optimizer step with the schedule's lr and beta1. With
// train.accumulate_steps K > 1 the batch holds K micro-batches: the first K-1 go forward and
// backward first, without an all-reduce (accumulate_micro_batches).
StepResult Trainer::train_step(const torch::Tensor& images, const torch::Tensor& labels) {
  inject_faults();
  const std::uint64_t step = static_cast<std::uint64_t>(state_.step);
  optimizer_->set_lr_and_beta1(schedule_->lr(state_.step), schedule_->momentum(state_.step));
  for (auto& p : model_->parameters()) p.mutable_grad().reset();  // set_to_none
  const MicroBatches in =
      micro_batches(images, labels, dropout_keep(step, static_cast<int>(images.size(0))));
  LocalTotals local = accumulate_micro_batches(in);
  trace::Span forward_span("forward");
  torch::Tensor logits, loss;
  {
    const AutocastScope autocast(precision_, device_);
    logits = model_->forward(in.x.back(), in.keep.back());
    loss = loss_of(logits, in.y.back());
  }
  if (fault_.fires(rank_, state_.step, "nan")) loss = loss * std::nan("");
  local.add(loss.detach(), logits.argmax(1).eq(in.y.back()).sum());
  forward_span.end();
  StepResult result = agree_on_step(local);
  if (result.read && !std::isfinite(result.loss)) {
    skip_nonfinite_step(result.loss);
    return result;
  }
  trace::Span backward_span("backward");
  loss.backward();
  backward_span.end();
  if (grad_sync_) {
    const trace::Span span("grad sync wait");
    grad_sync_->finish(state_.step);
    state_.exposed_comm_seconds += grad_sync_->last_wait_seconds();
  }
  const trace::Span optimizer_span("optimizer");
  optimizer_->clip(config_.optim.grad_clip_value, config_.optim.grad_clip_norm);
  optimizer_->step();
  result.trained = true;
  return result;
}

// A rank's batch on the device, split into train.accumulate_steps micro-batches (views).
Trainer::MicroBatches Trainer::micro_batches(const torch::Tensor& images,
                                             const torch::Tensor& labels,
                                             const torch::Tensor& keep) const {
  const int k = config_.train.accumulate_steps;
  MicroBatches in;
  in.x = images.to(weight_dtype(precision_)).chunk(k);  // fp64: the batch in float64 too
  in.y = labels.chunk(k);
  in.keep = keep.defined() ? keep.chunk(k) : std::vector<torch::Tensor>(k);
  return in;
}

// The loss to backpropagate: the micro-batch's mean cross-entropy, over K micro-batches.
torch::Tensor Trainer::loss_of(const torch::Tensor& logits, const torch::Tensor& labels) const {
  auto loss = torch::nn::functional::cross_entropy(logits, labels, ce_options_);
  // Weighted per sample and averaged over the samples (not over their weights, as torch's
  // weighted mean does): so N ranks' mean of means is still the global batch's.
  if (class_weights_.defined()) loss = (loss * class_weights_.index_select(0, labels)).mean();
  const int k = config_.train.accumulate_steps;
  return k > 1 ? loss / k : loss;
}

// Forward and backward of every micro-batch but the last, gradients accumulated in param.grad()
// without an all-reduce (GradSync::NoSync): the last one's backward all-reduces the sum.
Trainer::LocalTotals Trainer::accumulate_micro_batches(const MicroBatches& in) {
  LocalTotals local;
  const GradSync::NoSync no_sync(grad_sync_.get());
  for (std::size_t j = 0; j + 1 < in.x.size(); ++j) {
    const trace::Span span("micro-batch");
    torch::Tensor logits, loss;
    {
      const AutocastScope autocast(precision_, device_);
      logits = model_->forward(in.x[j], in.keep[j]);
      loss = loss_of(logits, in.y[j]);
    }
    local.add(loss.detach(), logits.argmax(1).eq(in.y[j]).sum());
    loss.backward();
  }
  return local;
}

void Trainer::LocalTotals::add(const torch::Tensor& micro_loss,
                               const torch::Tensor& micro_correct) {
  loss = loss.defined() ? loss + micro_loss : micro_loss;
  correct = correct.defined() ? correct + micro_correct : micro_correct;
}

// One all-reduce (sum) of {loss, correct, preempt flag, interrupt flag}: every rank leaves with
// the global batch's mean loss and accuracy count, and the same decision to stop (preemption
// wins over an interrupt). With train.host_sync log the loss and count stay on the device (added
// to pending_, read by read_pending_totals) and only the flags are exchanged: no host wait.
StepResult Trainer::agree_on_step(const LocalTotals& local) {
  const StopReason mine = stop_reason();
  const torch::Tensor totals = torch::stack({local.loss.to(torch::kFloat64),
                                             local.correct.to(torch::kFloat64)});
  double local_loss = 0.0, local_correct = 0.0;
  if (read_every_step_) {
    const torch::Tensor host = totals.cpu();  // the step's one host read
    local_loss = host[0].item<double>();
    local_correct = host[1].item<double>();
  } else {
    pending_.add_(totals);
  }
  std::vector<double> values{local_loss, local_correct,
                             mine == StopReason::kPreempt ? 1.0 : 0.0,
                             mine == StopReason::kInterrupt ? 1.0 : 0.0};
  {
    const trace::ScopedLabel label("step all-reduce");
    const trace::Span span("step all-reduce");
    control_.allreduce(values, ReduceOp::kSum,
                       "loss and stop-flag all-reduce at step " + std::to_string(state_.step));
  }
  StepResult r;
  r.read = read_every_step_;
  r.loss = values[0] / world_;
  r.correct = std::llround(values[1]);
  r.stop = values[2] > 0 ? StopReason::kPreempt
                         : (values[3] > 0 ? StopReason::kInterrupt : StopReason::kNone);
  return r;
}

// Dropout per global sample (DESIGN.md "Sampling and augmentation"): the keep-mask of the whole
// global batch is drawn from (seed, step) on every rank, on the CPU whatever the device, and this
// rank takes its rows, so N ranks x B drop exactly what one process x N*B drops. Undefined when
// the recipe has no dropout.
torch::Tensor Trainer::dropout_keep(std::uint64_t step, int batch_size) const {
  const double p = config_.model.dropout;
  if (!(p > 0)) return {};
  auto generator = at::make_generator<at::CPUGeneratorImpl>(
      derive_seed({static_cast<std::uint64_t>(config_.train.seed), kDropoutTag, step}));
  const std::int64_t global = static_cast<std::int64_t>(world_) * batch_size;
  torch::Tensor keep = torch::empty({global, model_->feature_size()});
  keep.bernoulli_(1.0 - p, generator);
  return keep.narrow(0, static_cast<std::int64_t>(rank_) * batch_size, batch_size)
      .to(device_, weight_dtype(precision_), /*non_blocking=*/true);
}

void Trainer::skip_nonfinite_step(double loss) {
  if (!config_.train.skip_nonfinite) {
    throw TrainingError(
        "loss is " + std::to_string(loss) + " at step " + std::to_string(state_.step) +
            " (epoch " + std::to_string(state_.epoch) + "); stopping, the last good checkpoint "
            "is in " + ckpt_dir_.string(),
        "lower schedule.max_lr or raise optim.grad_clip_*, or set train.skip_nonfinite=true to "
        "skip such steps");
  }
  long suppressed = 0;
  if (nonfinite_warnings_.allow(&suppressed)) {
    spdlog::warn("skipping step {}: loss is {} ({} more skipped quietly)", state_.step, loss,
                 suppressed);
  }
}

// The run state after a step: the only place where step and the epoch's totals advance.
void Trainer::record_step(const StepResult& result, int batch_size) {
  const double lr = schedule_->lr(state_.step), beta1 = schedule_->momentum(state_.step);
  ++state_.step;
  ++state_.step_in_epoch;
  if (!result.trained) {
    ++state_.skipped_steps;
    return;
  }
  const std::int64_t global_batch = static_cast<std::int64_t>(world_) * batch_size;
  EpochTotals& t = state_.epoch_totals;
  if (result.read) {
    t.loss_sum += result.loss;
    ++t.loss_steps;
    t.correct += result.correct;
    last_loss_ = result.loss;
  } else {
    ++pending_steps_;
  }
  t.seen += global_batch;
  state_.images_trained += global_batch;
  window_images_ += global_batch;
  const bool log_now = state_.step % config_.train.log_every == 0 || state_.step == last_step_;
  if (log_now) read_pending_totals();
  progress_->step(state_.step, last_loss_, lr, global_batch);
  if (log_now) {
    const double rate = window_images_ / std::max(1e-9, seconds_since(window_start_));
    if (metrics_) {
      // host_sync log: the mean loss of the steps since the previous record
      metrics_->append({{"type", "step"}, {"step", state_.step}, {"epoch", state_.epoch},
                        {"loss", last_loss_}, {"lr", lr}, {"beta1", beta1},
                        {"images_per_s", rate}});
    }
    progress_->clear();  // the line scrolls above the bar
    spdlog::info("{}", progress_->status_line(rate));
    window_start_ = Clock::now();
    window_images_ = 0;
  }
}

// train.host_sync log: the loss and accuracy totals of the steps since the last read, summed
// over ranks (one data-plane all-reduce) and read by the host, into the epoch's totals. Every
// rank calls it at the same steps (log steps, epoch ends, a stop). A non-finite loss among them
// stops the run: its update has been applied, so no checkpoint is written after it.
void Trainer::read_pending_totals() {
  if (pending_steps_ == 0) return;
  const std::int64_t first = state_.step - pending_steps_ + 1;
  if (data_.active()) {
    data_.allreduce(pending_, ReduceOp::kSum, "loss and accuracy all-reduce");
  }
  // A copy: on the CPU, .cpu() would alias pending_, which is zeroed next.
  const torch::Tensor host = pending_.to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true);
  pending_.zero_();
  const double loss_sum = host[0].item<double>() / world_;  // sum of the steps' global means
  const std::int64_t steps = pending_steps_;
  pending_steps_ = 0;
  if (!std::isfinite(loss_sum)) {
    throw TrainingError(
        "loss is " + std::to_string(loss_sum) + " in steps " + std::to_string(first) + "-" +
            std::to_string(state_.step) + " (epoch " + std::to_string(state_.epoch) +
            "); stopping, the last good checkpoint is in " + ckpt_dir_.string(),
        "lower schedule.max_lr or raise optim.grad_clip_*; train.host_sync=step finds the step "
        "before its update (and train.skip_nonfinite=true can skip it)");
  }
  EpochTotals& t = state_.epoch_totals;
  t.loss_sum += loss_sum;
  t.loss_steps += steps;
  t.correct += std::llround(host[1].item<double>());
  last_loss_ = loss_sum / static_cast<double>(steps);
}

// Every rank got the same stop decision in the same step: rank 0 writes the checkpoint of the
// step just done, no rank leaves before it is on disk (a launcher that sees one rank end kills
// the others), then every rank throws.
void Trainer::stop_run(StopReason reason) {
  progress_->clear();
  read_pending_totals();
  average_bn_statistics();
  save_step_checkpoint();
  control_.barrier("checkpoint barrier before stopping");
  if (reason == StopReason::kPreempt) {
    spdlog::warn("preempted (SIGUSR1/SIGTERM): checkpoint written at step {}; exiting with code {} "
                 "so the job is requeued, resume with --resume auto",
                 state_.step, static_cast<int>(ExitCode::kPreempted));
    throw Preempted();
  }
  spdlog::warn("interrupted: checkpoint written at step {}; resume with --resume auto",
               state_.step);
  throw Interrupted();
}

void Trainer::inject_faults() {
  if (fault_.fires(rank_, state_.step, "exit")) {
    spdlog::critical("fault injection: rank {} exits at step {}", rank_, state_.step);
    std::_Exit(99);
  }
  if (fault_.fires(rank_, state_.step, "hang")) {
    spdlog::critical("fault injection: rank {} hangs at step {}", rank_, state_.step);
    hang_forever();
  }
  if (fault_.fires(rank_, state_.step, "preempt")) {
    spdlog::critical("fault injection: rank {} raises SIGUSR1 at step {}", rank_, state_.step);
    std::raise(SIGUSR1);
  }
}

// With SyncBN off each rank's BatchNorm layers track the statistics of its own batches: before an
// evaluation or a checkpoint they are averaged over ranks (one packed all-reduce), so that every
// rank evaluates, and rank 0 saves, the same model. A no-op with SyncBN (already identical).
void Trainer::average_bn_statistics() {
  if (sync_bn_ || !data_.active()) return;
  std::vector<torch::Tensor> stats;
  for (const auto& b : model_->named_buffers()) {
    const std::string& name = b.key();
    if (name.find("running_mean") != std::string::npos ||
        name.find("running_var") != std::string::npos) {
      stats.push_back(b.value());
    }
  }
  if (stats.empty()) return;
  torch::NoGradGuard no_grad;
  torch::Tensor packed = torch::cat(stats);
  data_.allreduce(packed, ReduceOp::kAvg, "BatchNorm running statistics average");
  std::int64_t offset = 0;
  for (auto& t : stats) {
    t.copy_(packed.narrow(0, offset, t.numel()).view_as(t));
    offset += t.numel();
  }
}

std::unique_ptr<EvalBatches> Trainer::eval_batches(const std::string& split) const {
  return std::make_unique<EvalBatches>(options_.data_dir, manifest_, split, world_, rank_,
                                       config_.train.eval_batch_size, device_, eval_on_device_);
}

EvalResult Trainer::evaluate_split(EvalBatches& batches) {
  const trace::Span span("eval");
  EvalResult r =
      evaluate(model_, batches, static_cast<int>(manifest_.classes.size()), eval_options_);
  reduce_eval(&r, control_);
  return r;
}

// Evaluation, the epoch's metrics record, best.pt and the epoch checkpoint.
void Trainer::end_epoch(double epoch_seconds) {
  progress_->clear();
  read_pending_totals();
  average_bn_statistics();
  const EpochTotals& t = state_.epoch_totals;
  const bool epoch_done = state_.step_in_epoch >= steps_per_epoch_;
  const bool last = state_.epoch + 1 == config_.train.epochs || state_.step >= last_step_;
  json record{{"type", "epoch"},
              {"epoch", state_.epoch},
              {"step", state_.step},
              {"train_loss", t.loss_steps ? t.loss_sum / t.loss_steps : 0.0},
              {"train_accuracy", t.seen ? double(t.correct) / t.seen : 0.0},
              {"seconds", epoch_seconds}};
  if ((state_.epoch + 1) % config_.train.eval_every == 0 || last) {
    const EvalResult val = evaluate_split(*val_batches_);
    record["val"] = eval_json(val, manifest_.classes);
    const double acc = val.confusion.accuracy();
    spdlog::info("epoch {} done: train loss {:.4f} acc {:.4f} | val loss {:.4f} acc {:.4f} "
                 "macro-F1 {:.4f} ({:.1f} s)",
                 state_.epoch, record["train_loss"].get<double>(),
                 record["train_accuracy"].get<double>(), val.loss, acc, val.confusion.macro_f1(),
                 epoch_seconds);
    if (acc > state_.best_val_accuracy) {
      state_.best_val_accuracy = acc;
      state_.best_step = state_.step;
      best_state_ = snapshot(model_);
      if (leader_) {
        // best.pt resumes at the next epoch's start
        CheckpointMeta meta = checkpoint_meta();
        meta.epoch = state_.epoch + 1;
        meta.step_in_epoch = 0;
        meta.epoch_loss_sum = 0.0;
        meta.epoch_loss_steps = meta.epoch_correct = meta.epoch_seen = 0;
        const trace::Span span("checkpoint");
        save_checkpoint(ckpt_dir_ / "best.pt", model_, nullptr, meta);
      }
    }
  }
  if (metrics_) metrics_->append(record);
  if (epoch_done) {
    ++state_.epoch;
    state_.step_in_epoch = 0;
    state_.epoch_totals = {};
    if (state_.epoch % config_.checkpoint.every_epochs == 0 || last) save_step_checkpoint();
  } else {
    save_step_checkpoint();  // stopped by train.max_steps inside the epoch
  }
}

CheckpointMeta Trainer::checkpoint_meta() const {
  CheckpointMeta meta;
  meta.classes = manifest_.classes;
  meta.mean = manifest_.mean;
  meta.std = manifest_.std;
  meta.height = manifest_.height;
  meta.width = manifest_.width;
  meta.channels = manifest_.channels;
  meta.model = model_->options();
  meta.optimizer = config_.optim.name;
  meta.config_yaml = config_yaml_;
  meta.config_hash = config_hash_;
  meta.world_size = world_;
  meta.step = state_.step;
  meta.epoch = state_.epoch;
  meta.step_in_epoch = state_.step_in_epoch;
  meta.best_val_accuracy = state_.best_val_accuracy;
  meta.best_step = state_.best_step;
  meta.epoch_loss_sum = state_.epoch_totals.loss_sum;
  meta.epoch_loss_steps = state_.epoch_totals.loss_steps;
  meta.epoch_correct = state_.epoch_totals.correct;
  meta.epoch_seen = state_.epoch_totals.seen;
  return meta;
}

// Rank 0 writes <run>/checkpoints/step-N.pt of the run state as it stands; the others return.
void Trainer::save_step_checkpoint() {
  if (!leader_) return;
  const trace::Span span("checkpoint");
  save_checkpoint(ckpt_dir_ / checkpoint_file_name(state_.step), model_,
                  &optimizer_->checkpoint_state(),
                  checkpoint_meta());
  prune_checkpoints(ckpt_dir_, config_.checkpoint.keep_last);
}

// Test accuracy of the best model and summary.json.
TrainSummary Trainer::finish() {
  TrainSummary summary;
  summary.steps = state_.step;
  summary.best_val_accuracy = state_.best_val_accuracy;
  summary.images_per_second =
      state_.train_seconds > 0 ? state_.images_trained / state_.train_seconds : 0.0;
  std::vector<double> cpu_seconds{state_.train_cpu_seconds};
  control_.allreduce(cpu_seconds, ReduceOp::kSum, "CPU seconds all-reduce");
  const double all_ranks_cpu_seconds = cpu_seconds[0];
  json summary_json{
      {"steps", state_.step},
      {"epochs", config_.train.epochs},
      {"world_size", world_},
      {"device", device_.str()},
      {"best_val_accuracy", state_.best_val_accuracy},
      {"best_step", state_.best_step},
      {"skipped_steps", state_.skipped_steps},
      {"train_images_per_s", summary.images_per_second},
      {"train_cpu_s", all_ranks_cpu_seconds},
      {"train_images_per_cpu_s",
       all_ranks_cpu_seconds > 0 ? state_.images_trained / all_ranks_cpu_seconds : 0.0},
      {"exposed_comm_s_per_step",
       state_.step > 0 ? state_.exposed_comm_seconds / std::max<std::int64_t>(1, state_.step)
                       : 0.0},
      {"seconds", seconds_since(started_)},
      {"config_hash", config_hash_},
      {"classes", manifest_.classes}};
  if (manifest_.splits.count("test")) {
    // The best model: kept in memory by this run, else best.pt of the resumed run.
    const fs::path best = ckpt_dir_ / "best.pt";
    if (!best_state_.empty()) {
      restore(model_, best_state_);
    } else if (fs::exists(best)) {
      load_checkpoint_into(best, model_, nullptr, nullptr);
    }
    const EvalResult test = evaluate_split(*eval_batches("test"));
    summary.test_accuracy = test.confusion.accuracy();
    summary_json["test"] = eval_json(test, manifest_.classes);
    spdlog::info("test (best checkpoint, step {}): accuracy {:.4f} macro-F1 {:.4f}",
                 state_.best_step, summary.test_accuracy, test.confusion.macro_f1());
  }
  timeline_->finish();
  if (leader_) {
    write_file_atomic(options_.run_dir / "summary.json", summary_json.dump(2) + "\n");
  }
  return summary;
}

TrainSummary run_training(const TrainConfig& config, const TrainRunOptions& options) {
  Trainer trainer(config, options);
  trainer.setup();
  return trainer.run();
}

std::string evaluate_checkpoint(const fs::path& checkpoint, const fs::path& data_dir,
                                const std::string& device_name, int batch_size, int threads,
                                const std::string& tta) {
  configure_threads(threads);
  check_blas();
  const torch::Device device = resolve_device(device_name);
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
    EvalBatches batches(data_dir, manifest, split, 1, 0, batch_size, device,
                        /*on_device=*/false);
    EvalOptions options;
    options.tta = parse_tta(tta);
    const EvalResult r =
        evaluate(model, batches, static_cast<int>(manifest.classes.size()), options);
    out[split] = eval_json(r, manifest.classes);
    std::printf("%-5s accuracy %.4f  macro-F1 %.4f  loss %.4f  (%lld images, TTA %s)\n", split,
                r.confusion.accuracy(), r.confusion.macro_f1(), r.loss,
                static_cast<long long>(r.confusion.total()), to_string(r.tta));
  }
  return out.dump(2);
}

}  // namespace fer
