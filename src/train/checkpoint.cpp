#include "train/checkpoint.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "common/errors.h"
#include "common/fs_util.h"
#include "common/json_util.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

constexpr const char* kMetaKey = "meta";
constexpr const char* kModelKey = "model";
constexpr const char* kOptimizerKey = "optimizer";
constexpr const char* kStepPrefix = "step-";

torch::serialize::InputArchive open_archive(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw CheckpointError("checkpoint " + path.string() + " does not exist");
  }
  torch::serialize::InputArchive archive;
  try {
    // Onto the CPU whatever device wrote it: a GPU run's checkpoint opens in a CPU-only build.
    archive.load_from(path.string(), torch::Device(torch::kCPU));
  } catch (const c10::Error& e) {
    throw CheckpointError("checkpoint " + path.string() + " cannot be read (truncated or not a "
                          "fer-dist checkpoint): " + e.what_without_backtrace());
  }
  return archive;
}

// Limits on what a checkpoint may ask for: a hostile or corrupt one must not build a huge model.
constexpr int kMaxSide = 4096;
constexpr int kMaxClasses = 256;
constexpr double kMaxWidth = 16.0;
constexpr std::size_t kMaxReportedMismatches = 5;

// A JSON integer that fits T, or CheckpointError naming the key.
template <typename T>
T integer_at(const nlohmann::json& j, const char* key, const std::string& source) {
  const auto& v = j.at(key);
  if (!is_integer_in_range<T>(v))
    throw CheckpointError(source + ": checkpoint metadata \"" + key + "\" is not a valid integer");
  return static_cast<T>(v.get<std::int64_t>());
}

std::string shape_text(const at::IntArrayRef& sizes) {
  std::string text = "[";
  for (std::size_t i = 0; i < sizes.size(); ++i) text += (i ? "," : "") + std::to_string(sizes[i]);
  return text + "]";
}

// Compares every parameter and buffer of `module` (recursively) with the archive, without
// loading anything: a missing entry, another shape or another dtype is reported by its dotted
// name. LibTorch's own Module::load would silently resize a parameter to the archive's shape.
void check_module_entries(const torch::nn::Module& module, torch::serialize::InputArchive& archive,
                          const std::string& prefix, std::vector<std::string>* problems) {
  const auto check = [&](const std::string& key, const torch::Tensor& want, bool is_buffer) {
    torch::Tensor got;
    bool found = false;
    try {
      found = archive.try_read(key, got, is_buffer);
    } catch (const c10::Error&) {
      found = false;
    }
    if (!found || !got.defined()) {
      problems->push_back(prefix + key + " is missing");
    } else if (got.sizes() != want.sizes() || got.scalar_type() != want.scalar_type()) {
      problems->push_back(prefix + key + " is " + std::string(c10::toString(got.scalar_type())) +
                          shape_text(got.sizes()) + ", the model has " +
                          std::string(c10::toString(want.scalar_type())) +
                          shape_text(want.sizes()));
    }
  };
  for (const auto& p : module.named_parameters(/*recurse=*/false)) check(p.key(), p.value(), false);
  for (const auto& b : module.named_buffers(/*recurse=*/false)) check(b.key(), b.value(), true);
  for (const auto& child : module.named_children()) {
    torch::serialize::InputArchive child_archive;
    bool found = false;
    try {
      found = archive.try_read(child.key(), child_archive);
    } catch (const c10::Error&) {
      found = false;
    }
    if (!found) {
      problems->push_back(prefix + child.key() + " (module) is missing");
      continue;
    }
    check_module_entries(*child.value(), child_archive, prefix + child.key() + ".", problems);
  }
}

// Module::save, with a CPU copy of every tensor (the same names and nesting).
void save_module_on_cpu(const torch::nn::Module& module, torch::serialize::OutputArchive& archive) {
  for (const auto& p : module.named_parameters(/*recurse=*/false)) {
    archive.write(p.key(), p.value().detach().to(torch::kCPU), /*is_buffer=*/false);
  }
  for (const auto& b : module.named_buffers(/*recurse=*/false)) {
    archive.write(b.key(), b.value().to(torch::kCPU), /*is_buffer=*/true);
  }
  for (const auto& child : module.named_children()) {
    torch::serialize::OutputArchive child_archive(archive.compilation_unit());
    save_module_on_cpu(*child.value(), child_archive);
    archive.write(child.key(), child_archive);
  }
}

std::string state_key(const torch::Tensor& param) {
  return c10::guts::to_string(param.unsafeGetTensorImpl());
}

// Copies Adam/AdamW per-parameter state from `from` (over from_params) to `to` (over to_params,
// index by index), each tensor moved to its destination parameter's device.
template <typename State>
void copy_param_states(torch::optim::Optimizer& from, const std::vector<torch::Tensor>& from_params,
                       torch::optim::Optimizer& to, const std::vector<torch::Tensor>& to_params) {
  to.state().clear();
  for (std::size_t i = 0; i < from_params.size(); ++i) {
    const auto it = from.state().find(state_key(from_params[i]));
    if (it == from.state().end()) continue;  // no step taken yet
    const auto& s = static_cast<const State&>(*it->second);
    const torch::Device device = to_params[i].device();
    auto copy = std::make_unique<State>();
    copy->step(s.step());
    copy->exp_avg(s.exp_avg().to(device));
    copy->exp_avg_sq(s.exp_avg_sq().to(device));
    if (s.max_exp_avg_sq().defined()) copy->max_exp_avg_sq(s.max_exp_avg_sq().to(device));
    to.state()[state_key(to_params[i])] = std::move(copy);
  }
}

// An optimizer of the same kind and options as `live` over `params` (one group, as the trainer
// builds), holding `live`'s state moved to the devices of `params` (copy_to_twin), or the other
// way round (copy_from_twin).
struct OptimizerTwin {
  std::unique_ptr<torch::optim::Optimizer> twin;
  bool adamw = false;

  OptimizerTwin(torch::optim::Optimizer& live, const std::vector<torch::Tensor>& params) {
    if (live.param_groups().size() != 1) {
      throw CheckpointError("checkpoints hold optimizers with one parameter group");
    }
    auto options = live.param_groups()[0].options().clone();
    std::vector<torch::optim::OptimizerParamGroup> groups{
        torch::optim::OptimizerParamGroup(params, std::move(options))};
    if (dynamic_cast<torch::optim::AdamW*>(&live)) {
      adamw = true;
      twin = std::make_unique<torch::optim::AdamW>(groups);
    } else if (dynamic_cast<torch::optim::Adam*>(&live)) {
      twin = std::make_unique<torch::optim::Adam>(groups);
    } else {
      throw CheckpointError("checkpoints hold Adam or AdamW optimizers only");
    }
  }
  void copy(torch::optim::Optimizer& from, const std::vector<torch::Tensor>& from_params,
            torch::optim::Optimizer& to, const std::vector<torch::Tensor>& to_params) const {
    if (adamw) {
      copy_param_states<torch::optim::AdamWParamState>(from, from_params, to, to_params);
    } else {
      copy_param_states<torch::optim::AdamParamState>(from, from_params, to, to_params);
    }
  }
};

CheckpointMeta read_meta(torch::serialize::InputArchive& archive, const fs::path& path) {
  c10::IValue value;
  if (!archive.try_read(kMetaKey, value) || !value.isString()) {
    throw CheckpointError("checkpoint " + path.string() + " has no fer-dist metadata");
  }
  return CheckpointMeta::from_json(value.toStringRef(), path.string());
}

}  // namespace

std::string CheckpointMeta::to_json() const {
  nlohmann::json j{
      {"format", "fer-checkpoint"},
      {"version", kCheckpointVersion},
      {"step", step},
      {"epoch", epoch},
      {"step_in_epoch", step_in_epoch},
      {"classes", classes},
      {"normalization", {{"mean", mean}, {"std", std}}},
      {"image", {{"height", height}, {"width", width}, {"channels", channels}}},
      {"model",
       {{"in_channels", model.in_channels},
        {"num_classes", model.num_classes},
        {"width", model.width},
        {"dropout", model.dropout}}},
      {"optimizer", optimizer},
      {"config_yaml", config_yaml},
      {"config_hash", config_hash},
      {"best_val_accuracy", best_val_accuracy},
      {"best_step", best_step},
      {"world_size", world_size},
      {"partial_epoch",
       {{"loss_sum", epoch_loss_sum},
        {"loss_steps", epoch_loss_steps},
        {"correct", epoch_correct},
        {"seen", epoch_seen}}}};
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

CheckpointMeta CheckpointMeta::from_json(const std::string& text, const std::string& source) {
  try {
    const auto j = nlohmann::json::parse(text);
    if (j.value("format", "") != "fer-checkpoint") {
      throw CheckpointError(source + " is not a fer-dist checkpoint");
    }
    const auto version = integer_at<int>(j, "version", source);
    if (version != kCheckpointVersion) {
      throw CheckpointError(source + ": checkpoint version " + std::to_string(version) +
                            " is not supported (this build reads " +
                            std::to_string(kCheckpointVersion) + ")");
    }
    CheckpointMeta m;
    m.step = integer_at<std::int64_t>(j, "step", source);
    m.epoch = integer_at<std::int64_t>(j, "epoch", source);
    m.step_in_epoch = integer_at<std::int64_t>(j, "step_in_epoch", source);
    m.classes = j.at("classes").get<std::vector<std::string>>();
    m.mean = j.at("normalization").at("mean").get<std::vector<double>>();
    m.std = j.at("normalization").at("std").get<std::vector<double>>();
    m.height = integer_at<int>(j.at("image"), "height", source);
    m.width = integer_at<int>(j.at("image"), "width", source);
    m.channels = integer_at<int>(j.at("image"), "channels", source);
    m.model.in_channels = integer_at<int>(j.at("model"), "in_channels", source);
    m.model.num_classes = integer_at<int>(j.at("model"), "num_classes", source);
    m.model.width = j.at("model").at("width");
    m.model.dropout = j.at("model").at("dropout");
    m.optimizer = j.at("optimizer");
    m.config_yaml = j.at("config_yaml");
    m.config_hash = j.at("config_hash");
    m.best_val_accuracy = j.at("best_val_accuracy");
    m.best_step = integer_at<std::int64_t>(j, "best_step", source);
    m.world_size = integer_at<int>(j, "world_size", source);
    if (j.contains("partial_epoch")) {  // absent in checkpoints of earlier builds
      const auto& p = j.at("partial_epoch");
      m.epoch_loss_sum = p.at("loss_sum");
      m.epoch_loss_steps = integer_at<std::int64_t>(p, "loss_steps", source);
      m.epoch_correct = integer_at<std::int64_t>(p, "correct", source);
      m.epoch_seen = integer_at<std::int64_t>(p, "seen", source);
    }
    if (m.model.num_classes < 1 || m.model.num_classes > kMaxClasses ||
        (m.channels != 1 && m.channels != 3) || m.height < 1 || m.height > kMaxSide ||
        m.width < 1 || m.width > kMaxSide || !std::isfinite(m.model.width) ||
        !(m.model.width > 0.0) || m.model.width > kMaxWidth || !std::isfinite(m.model.dropout) ||
        m.model.dropout < 0.0 || m.model.dropout >= 1.0 || m.step < 0 || m.epoch < 0 ||
        m.step_in_epoch < 0 || m.world_size < 1) {
      throw CheckpointError(source + ": checkpoint metadata out of range (model " +
                            std::to_string(m.model.in_channels) + " channel(s), " +
                            std::to_string(m.model.num_classes) + " classes, width " +
                            std::to_string(m.model.width) + "; image " + std::to_string(m.height) +
                            "x" + std::to_string(m.width) + "x" + std::to_string(m.channels) + ")");
    }
    if (m.classes.size() != static_cast<std::size_t>(m.model.num_classes) ||
        m.mean.size() != static_cast<std::size_t>(m.channels) || m.std.size() != m.mean.size() ||
        m.model.in_channels != m.channels) {
      throw CheckpointError(source +
                            ": inconsistent checkpoint metadata (classes, channels and "
                            "normalization do not agree)");
    }
    return m;
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(source + ": bad checkpoint metadata (" + e.what() + ")");
  }
}

void save_checkpoint(const fs::path& path, ResNet9& model, torch::optim::Optimizer* optimizer,
                     const CheckpointMeta& meta) {
  // Serialized to memory first: LibTorch's file writer throws from its destructor when a write
  // fails (disk full), which terminates the process. Our own atomic write reports it instead.
  std::ostringstream bytes;
  try {
    torch::serialize::OutputArchive archive;
    torch::serialize::OutputArchive model_archive;
    save_module_on_cpu(*model, model_archive);
    archive.write(kModelKey, model_archive);
    if (optimizer) {
      const std::vector<torch::Tensor> live_params = optimizer->param_groups()[0].params();
      std::vector<torch::Tensor> cpu_params;
      for (const auto& p : live_params) cpu_params.push_back(p.detach().to(torch::kCPU));
      OptimizerTwin cpu(*optimizer, cpu_params);
      cpu.copy(*optimizer, live_params, *cpu.twin, cpu_params);
      torch::serialize::OutputArchive optimizer_archive;
      cpu.twin->save(optimizer_archive);
      archive.write(kOptimizerKey, optimizer_archive);
    }
    archive.write(kMetaKey, c10::IValue(meta.to_json()));
    archive.save_to(bytes);
  } catch (const c10::Error& e) {
    throw CheckpointError("cannot serialize checkpoint " + path.string() + ": " +
                          e.what_without_backtrace());
  }
  try {
    write_file_atomic(path, bytes.str());
  } catch (const IoError& e) {
    throw CheckpointError(std::string("cannot write checkpoint: ") + e.what(),
                          "is the disk full? the previous checkpoint is unchanged");
  }
  fsync_path(path.parent_path());
}

CheckpointMeta read_checkpoint_meta(const fs::path& path) {
  auto archive = open_archive(path);
  return read_meta(archive, path);
}

void load_checkpoint_into(const fs::path& path, ResNet9& model, torch::optim::Optimizer* optimizer,
                          CheckpointMeta* meta_out) {
  auto archive = open_archive(path);
  CheckpointMeta meta = read_meta(archive, path);
  const auto& want = model->options();
  if (meta.model.in_channels != want.in_channels || meta.model.num_classes != want.num_classes ||
      meta.model.width != want.width) {
    throw CheckpointError(path.string() + " holds a ResNet9 with " +
                              std::to_string(meta.model.in_channels) + " channel(s), " +
                              std::to_string(meta.model.num_classes) + " classes, width " +
                              std::to_string(meta.model.width) + "; this run builds " +
                              std::to_string(want.in_channels) + ", " +
                              std::to_string(want.num_classes) + ", " +
                              std::to_string(want.width),
                          "resume with the config and dataset the checkpoint was trained with");
  }
  try {
    torch::serialize::InputArchive model_archive;
    if (!archive.try_read(kModelKey, model_archive)) {
      throw CheckpointError(path.string() + " holds no model weights");
    }
    // Validate every name, shape and dtype before touching the model.
    std::vector<std::string> problems;
    check_module_entries(*model, model_archive, "", &problems);
    if (!problems.empty()) {
      std::string list;
      for (std::size_t i = 0; i < std::min(problems.size(), kMaxReportedMismatches); ++i) {
        list += (i ? "; " : "") + problems[i];
      }
      if (problems.size() > kMaxReportedMismatches) {
        list += "; and " + std::to_string(problems.size() - kMaxReportedMismatches) + " more";
      }
      throw CheckpointError(path.string() + " does not fit the model its metadata describes (" +
                                std::to_string(problems.size()) + " mismatch(es): " + list + ")",
                            "the file is corrupt or was not written by this fer-dist version");
    }
    // Loaded into a CPU twin, then copied into the model on its own device: LibTorch's
    // Module::load would move a parameter to the archive's device (set_data) instead.
    torch::NoGradGuard no_grad;
    ResNet9 staging(model->options());
    staging->load(model_archive);
    const auto from_params = staging->parameters(), to_params = model->parameters();
    for (std::size_t i = 0; i < to_params.size(); ++i) to_params[i].copy_(from_params[i]);
    const auto from_buffers = staging->buffers(), to_buffers = model->buffers();
    for (std::size_t i = 0; i < to_buffers.size(); ++i) to_buffers[i].copy_(from_buffers[i]);
    if (optimizer) {
      torch::serialize::InputArchive optimizer_archive;
      archive.read(kOptimizerKey, optimizer_archive);
      const std::vector<torch::Tensor> live_params = optimizer->param_groups()[0].params();
      OptimizerTwin cpu(*optimizer, from_params);
      cpu.twin->load(optimizer_archive);
      cpu.copy(*cpu.twin, from_params, *optimizer, live_params);
    }
  } catch (const c10::Error& e) {
    throw CheckpointError("cannot load " + path.string() + ": " + e.what_without_backtrace());
  }
  if (meta_out) *meta_out = std::move(meta);
}

ResNet9 load_checkpoint_model(const fs::path& path, CheckpointMeta* meta_out) {
  CheckpointMeta meta = read_checkpoint_meta(path);
  ResNet9 model(meta.model);
  load_checkpoint_into(path, model, nullptr, nullptr);
  model->eval();
  if (meta_out) *meta_out = std::move(meta);
  return model;
}

std::string checkpoint_file_name(std::int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%08lld.pt", kStepPrefix, static_cast<long long>(step));
  return buf;
}

std::vector<fs::path> list_checkpoints(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const auto name = e.path().filename().string();
    if (name.rfind(kStepPrefix, 0) == 0 && e.path().extension() == ".pt") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() > b.filename().string();  // zero-padded: newest first
  });
  return out;
}

void prune_checkpoints(const fs::path& dir, int keep) {
  const auto all = list_checkpoints(dir);
  for (std::size_t i = static_cast<std::size_t>(std::max(keep, 0)); i < all.size(); ++i) {
    std::error_code ec;
    fs::remove(all[i], ec);
    if (ec) spdlog::warn("cannot remove old checkpoint {}: {}", all[i].string(), ec.message());
  }
}

std::optional<fs::path> newest_valid_checkpoint(const fs::path& dir) {
  for (const auto& path : list_checkpoints(dir)) {
    try {
      read_checkpoint_meta(path);
      return path;
    } catch (const CheckpointError& e) {
      spdlog::warn("skipping unreadable checkpoint {}: {}", path.string(), e.what());
    }
  }
  return std::nullopt;
}

}  // namespace fer
