#include "train/evaluation.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <optional>

#include "data/device_batch.h"
#include "data/loader.h"
#include "data/manifest.h"
#include "dist/planes.h"

namespace fer {

namespace {

// A host tensor on its way to `device`: through pinned memory, non_blocking, to CUDA (the pinned
// block is the caching host allocator's and stays reserved until the copy is done).
torch::Tensor upload(const torch::Tensor& host, const torch::Device& device) {
  if (!device.is_cuda()) return host.to(device);
  return host.pin_memory().to(device, /*non_blocking=*/true);
}

}  // namespace

torch::Tensor batch_images(Batch& batch, const Manifest& m, const torch::Device& device) {
  return upload(torch::from_blob(batch.images.data(),
                                 {batch.size, m.channels, m.height, m.width}, torch::kFloat32),
                device);
}

torch::Tensor batch_labels(Batch& batch, const torch::Device& device) {
  return upload(torch::from_blob(batch.labels.data(), {batch.size}, torch::kInt64), device);
}

struct EvalBatches::Impl {
  Manifest manifest;
  torch::Device device;
  int batch_size;
  std::unique_ptr<EvalLoader> loader;  // host path
  Batch batch;
  std::optional<DeviceSplit> split;  // device path
  std::int64_t next_first = 0;
};

EvalBatches::EvalBatches(const std::filesystem::path& dataset_dir, const Manifest& manifest,
                         const std::string& split, int world_size, int rank, int batch_size,
                         const torch::Device& device, bool on_device)
    : impl_(new Impl{manifest, device, batch_size, nullptr, Batch{}, std::nullopt, 0}) {
  if (on_device) {
    impl_->split.emplace(
        DeviceSplit::eval(dataset_dir, manifest, split, world_size, rank, device));
  } else {
    impl_->loader =
        std::make_unique<EvalLoader>(dataset_dir, manifest, split, world_size, rank, batch_size);
  }
}

EvalBatches::~EvalBatches() = default;

void EvalBatches::reset() {
  if (impl_->loader) impl_->loader->reset();
  impl_->next_first = 0;
}

bool EvalBatches::next(torch::Tensor* images, torch::Tensor* labels) {
  Impl& s = *impl_;
  if (s.loader) {
    if (!s.loader->next(&s.batch)) return false;
    *images = batch_images(s.batch, s.manifest, s.device);
    *labels = batch_labels(s.batch, s.device);
    return true;
  }
  const std::int64_t left = s.split->size() - s.next_first;
  if (left <= 0) return false;
  const std::int64_t count = std::min<std::int64_t>(s.batch_size, left);
  DeviceBatch b = s.split->eval_batch(s.next_first, count);
  s.next_first += count;
  *images = std::move(b.images);
  *labels = std::move(b.labels);
  return true;
}

EvalResult evaluate(ResNet9& model, EvalBatches& batches, int num_classes,
                    const EvalOptions& options) {
  torch::NoGradGuard no_grad;
  model->eval();
  batches.reset();
  EvalResult result(num_classes);
  result.tta = options.tta;
  torch::Tensor images, labels, loss_sum, pairs;  // sums on the device
  namespace F = torch::nn::functional;
  const auto dtype = model->parameters().front().scalar_type();  // float64 for train.precision fp64
  while (batches.next(&images, &labels)) {
    images = images.to(dtype);
    torch::Tensor scores, loss;
    if (options.tta == Tta::kNone) {  // exactly the training objective's cross-entropy
      scores = model->forward(images);
      loss = F::cross_entropy(scores, labels, F::CrossEntropyFuncOptions().reduction(torch::kSum));
    } else {
      scores = tta_log_probs(model, images, options.tta, options.pad);
      loss = F::nll_loss(scores, labels, F::NLLLossFuncOptions().reduction(torch::kSum));
    }
    // The batch's float32 sum, added in float64 (as a host double sum would be).
    const auto batch_loss = loss.to(torch::kFloat64);
    loss_sum = loss_sum.defined() ? loss_sum + batch_loss : batch_loss;
    // Confusion-matrix cells as truth * K + prediction, counted once per batch.
    const auto cells = torch::bincount(labels * num_classes + scores.argmax(1), {},
                                       static_cast<std::int64_t>(num_classes) * num_classes);
    pairs = pairs.defined() ? pairs + cells : cells;
  }
  if (!pairs.defined()) return result;
  const auto counts = pairs.to(torch::kCPU);  // the evaluation's one host read (with the loss)
  const auto* c = counts.data_ptr<std::int64_t>();
  auto& cells = result.confusion.counts();  // row-major [truth][predicted], as bincount's
  for (std::size_t i = 0; i < cells.size(); ++i) cells[i] += c[i];
  const auto n = result.confusion.total();
  result.loss = n ? loss_sum.item<double>() / n : 0.0;
  return result;
}

void reduce_eval(EvalResult* r, ControlPlane& control) {
  std::vector<double> loss_sum{r->loss * static_cast<double>(r->confusion.total())};
  control.allreduce(loss_sum, ReduceOp::kSum, "evaluation loss all-reduce");
  control.allreduce(r->confusion.counts(), ReduceOp::kSum, "evaluation counts all-reduce");
  const auto n = r->confusion.total();
  r->loss = n ? loss_sum[0] / n : 0.0;
}

nlohmann::json eval_json(const EvalResult& r, const std::vector<std::string>& classes) {
  using json = nlohmann::json;
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
  return {{"loss", r.loss},         {"accuracy", cm.accuracy()}, {"macro_f1", cm.macro_f1()},
          {"count", cm.total()},    {"tta", to_string(r.tta)},   {"per_class", per_class},
          {"confusion", matrix}};
}

}  // namespace fer
