#include "train/agreement.h"

#include <torch/torch.h>

#include "common/errors.h"
#include "data/checksum.h"
#include "data/manifest.h"
#include "dist/planes.h"

namespace fer {
namespace {

// The config as far as it decides the numbers a run computes (see config_hash): the global batch,
// not how it is split over ranks and micro-batches.
TrainConfig numerics_only(TrainConfig c, int world) {
  c.train.threads = 0;
  c.data.workers = 1;
  c.data.prefetch_batches = 1;
  c.train.log_every = 1;
  c.train.max_steps = 0;
  c.train.batch_size *= world * c.train.accumulate_steps;
  c.train.accumulate_steps = 1;
  c.dist.force_collectives = false;
  c.optim.fused = true;  // the same bits either way
  c.train.cudnn_benchmark = true;  // algorithm choice, like threads: a performance setting
  c.train.host_sync = "auto";      // when the host reads the loss, not what it is
  return c;
}

// 60-bit prefix of a SHA-256, as a signed integer for an int64 all-gather.
std::int64_t hash64(const std::string& text) {
  Sha256 sha;
  sha.update(text.data(), text.size());
  return static_cast<std::int64_t>(std::stoull(sha.hex_digest().substr(0, 15), nullptr, 16));
}

}  // namespace

std::string config_hash(const TrainConfig& config, int world) {
  TrainConfig copy = numerics_only(config, world);
  const std::string yaml = train_config_yaml(copy);
  Sha256 sha;
  sha.update(yaml.data(), yaml.size());
  return sha.hex_digest().substr(0, 16);
}

void check_agreement(ControlPlane& control, const std::string& config_yaml,
                     const Manifest& manifest, ResNet9& model) {
  std::string shapes;
  for (const auto& p : model->named_parameters()) {
    shapes += p.key() + ":" + std::to_string(p.value().numel()) + ";";
  }
  const char* items[] = {"config", "dataset manifest", "model parameter shapes"};
  const std::vector<std::int64_t> mine{hash64(config_yaml), hash64(manifest_to_json(manifest)),
                                       hash64(shapes)};
  const auto all = control.allgather(mine, "start-up agreement");
  for (int r = 1; r < control.size(); ++r) {
    for (std::size_t i = 0; i < mine.size(); ++i) {
      if (all[r * mine.size() + i] != all[i]) {
        throw CommError(std::string("start-up agreement failed: rank ") + std::to_string(r) +
                            "'s " + items[i] + " differs from rank 0's",
                        "every rank must get the same --config, --set, --data and build");
      }
    }
  }
}

void broadcast_model(DataPlane& data, ResNet9& model) {
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) {
    at::Tensor t = p.data();
    if (t.is_contiguous()) {
      data.broadcast(t, 0, "initial weight broadcast");
    } else {  // channels_last weights: the collectives take contiguous tensors
      at::Tensor packed = t.contiguous();
      data.broadcast(packed, 0, "initial weight broadcast");
      t.copy_(packed);
    }
  }
  for (auto& b : model->buffers()) data.broadcast(b, 0, "initial buffer broadcast");
}

}  // namespace fer
