#include "train/train_config.h"

#include "common/config.h"
#include "common/errors.h"

namespace fer {

void DataConfig::describe(ConfigSchema& s) {
  s.field("loader", &loader);
  s.field("workers", &workers);
  s.field("prefetch_batches", &prefetch_batches);
  s.field("shuffle_buffer", &shuffle_buffer);
  s.field("augment", &augment);
  s.field("pad", &pad);
  s.field("flip", &flip);
}

void ModelConfig::describe(ConfigSchema& s) {
  s.field("width", &width);
  s.field("dropout", &dropout);
  s.field("sync_bn", &sync_bn);
  s.field("channels_last", &channels_last);
}

void OptimConfig::describe(ConfigSchema& s) {
  s.field("name", &name);
  s.field("fused", &fused);
  s.field("weight_decay", &weight_decay);
  s.field("betas", &betas);
  s.field("eps", &eps);
  s.field("grad_clip_value", &grad_clip_value);
  s.field("grad_clip_norm", &grad_clip_norm);
  s.field("label_smoothing", &label_smoothing);
  s.field("class_weights", &class_weights);
}

void ScheduleConfig::describe(ConfigSchema& s) {
  s.field("max_lr", &max_lr);
  s.field("pct_start", &pct_start);
  s.field("anneal", &anneal);
  s.field("div_factor", &div_factor);
  s.field("final_div_factor", &final_div_factor);
  s.field("three_phase", &three_phase);
  s.field("cycle_momentum", &cycle_momentum);
  s.field("base_momentum", &base_momentum);
  s.field("max_momentum", &max_momentum);
}

void TrainSection::describe(ConfigSchema& s) {
  s.field("epochs", &epochs);
  s.field("batch_size", &batch_size);
  s.field("seed", &seed);
  s.field("eval_every", &eval_every);
  s.field("eval_batch_size", &eval_batch_size);
  s.field("log_every", &log_every);
  s.field("threads", &threads);
  s.field("skip_nonfinite", &skip_nonfinite);
  s.field("host_sync", &host_sync);
  s.field("max_steps", &max_steps);
  s.field("accumulate_steps", &accumulate_steps);
  s.field("precision", &precision);
  s.field("cudnn_benchmark", &cudnn_benchmark);
  s.field("tf32", &tf32);
}

void EvalConfig::describe(ConfigSchema& s) { s.field("tta", &tta); }

void CheckpointConfig::describe(ConfigSchema& s) {
  s.field("every_epochs", &every_epochs);
  s.field("keep_last", &keep_last);
}

void DistConfig::describe(ConfigSchema& s) {
  s.field("backend", &backend);
  s.field("bucket_mb", &bucket_mb);
  s.field("overlap", &overlap);
  s.field("comm_timeout_s", &comm_timeout_s);
  s.field("force_collectives", &force_collectives);
}

void TrainConfig::describe(ConfigSchema& s) {
  s.section("data", &data);
  s.section("model", &model);
  s.section("optim", &optim);
  s.section("schedule", &schedule);
  s.section("train", &train);
  s.section("eval", &eval);
  s.section("checkpoint", &checkpoint);
  s.section("dist", &dist);
}

namespace {
void require(bool ok, const std::string& key, const std::string& rule) {
  if (!ok) throw ConfigError("config " + key + ": " + rule);
}
bool one_of(const std::string& v, std::initializer_list<const char*> options) {
  for (const char* o : options) {
    if (v == o) return true;
  }
  return false;
}
}  // namespace

void TrainConfig::validate() const {
  require(one_of(data.loader, {"auto", "memory", "stream", "device"}), "data.loader",
          "must be auto, memory, stream or device");
  require(data.workers >= 1 && data.workers <= 64, "data.workers", "must be 1..64");
  require(data.prefetch_batches >= 1, "data.prefetch_batches", "must be >= 1");
  require(data.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1");
  require(data.pad >= 0 && data.pad <= 64, "data.pad", "must be 0..64");
  require(model.width > 0 && model.width <= 8, "model.width", "must be in (0, 8]");
  require(model.dropout >= 0 && model.dropout < 1, "model.dropout", "must be in [0, 1)");
  require(one_of(model.sync_bn, {"auto", "on", "off"}), "model.sync_bn", "must be auto, on or off");
  require(one_of(optim.name, {"adam", "adamw"}), "optim.name", "must be adam or adamw");
  require(one_of(optim.class_weights, {"none", "balanced"}), "optim.class_weights",
          "must be none or balanced");
  require(one_of(eval.tta, {"none", "flip", "ten_crop"}), "eval.tta",
          "must be none, flip or ten_crop");
  require(optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0");
  require(optim.betas.size() == 2 && optim.betas[0] >= 0 && optim.betas[0] < 1 &&
              optim.betas[1] >= 0 && optim.betas[1] < 1,
          "optim.betas", "must be two numbers in [0, 1)");
  require(optim.eps > 0, "optim.eps", "must be > 0");
  require(optim.grad_clip_value >= 0, "optim.grad_clip_value", "must be >= 0 (0 = off)");
  require(optim.grad_clip_norm >= 0, "optim.grad_clip_norm", "must be >= 0 (0 = off)");
  require(optim.label_smoothing >= 0 && optim.label_smoothing < 1, "optim.label_smoothing",
          "must be in [0, 1)");
  require(schedule.max_lr > 0, "schedule.max_lr", "must be > 0");
  require(train.epochs >= 1, "train.epochs", "must be >= 1");
  require(train.batch_size >= 1, "train.batch_size", "must be >= 1");
  require(train.eval_every >= 1, "train.eval_every", "must be >= 1");
  require(train.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1");
  require(train.log_every >= 1, "train.log_every", "must be >= 1");
  require(train.threads >= 0, "train.threads", "must be >= 0 (0 = automatic)");
  require(train.max_steps >= 0, "train.max_steps", "must be >= 0 (0 = no limit)");
  require(train.accumulate_steps >= 1 && train.accumulate_steps <= 1024, "train.accumulate_steps",
          "must be 1..1024 (1 = no accumulation)");
  require(one_of(train.precision, {"fp32", "bf16", "fp64"}), "train.precision",
          "must be fp32, bf16 or fp64");
  require(one_of(train.host_sync, {"auto", "step", "log"}), "train.host_sync",
          "must be auto, step or log");
  require(!(train.skip_nonfinite && train.host_sync == "log"), "train.skip_nonfinite",
          "needs train.host_sync=step (with log a bad step is found after its update)");
  require(checkpoint.every_epochs >= 1, "checkpoint.every_epochs", "must be >= 1");
  require(checkpoint.keep_last >= 1, "checkpoint.keep_last", "must be >= 1");
  require(one_of(dist.backend, {"auto", "mpi", "nccl"}), "dist.backend",
          "must be auto, mpi or nccl");
  require(dist.bucket_mb > 0, "dist.bucket_mb", "must be > 0");
  require(dist.comm_timeout_s > 0, "dist.comm_timeout_s", "must be > 0");
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  TrainConfig config;
  ConfigSchema schema;
  config.describe(schema);
  if (!path.empty()) schema.apply_yaml_file(path);
  for (const auto& o : overrides) schema.apply_override(o);
  config.validate();
  return config;
}

std::string train_config_yaml(TrainConfig& config) {
  ConfigSchema schema;
  config.describe(schema);
  return schema.to_yaml();
}

}  // namespace fer
