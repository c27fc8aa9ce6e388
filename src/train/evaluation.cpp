#include "train/evaluation.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "data/loader.h"
#include "data/manifest.h"
#include "dist/planes.h"

namespace fer {

torch::Tensor batch_images(Batch& batch, const Manifest& m, const torch::Device& device) {
  return torch::from_blob(batch.images.data(), {batch.size, m.channels, m.height, m.width},
                          torch::kFloat32)
      .to(device);
}

torch::Tensor batch_labels(Batch& batch, const torch::Device& device) {
  return torch::from_blob(batch.labels.data(), {batch.size}, torch::kInt64).to(device);
}

EvalResult evaluate(ResNet9& model, EvalLoader& loader, const Manifest& m,
                    const torch::Device& device, const EvalOptions& options) {
  torch::NoGradGuard no_grad;
  model->eval();
  loader.reset();
  EvalResult result(static_cast<int>(m.classes.size()));
  result.tta = options.tta;
  double loss_sum = 0.0;
  Batch batch;
  namespace F = torch::nn::functional;
  while (loader.next(&batch)) {
    const auto labels = batch_labels(batch, device);
    torch::Tensor scores, loss;
    if (options.tta == Tta::kNone) {  // exactly the training objective's cross-entropy
      scores = model->forward(batch_images(batch, m, device));
      loss = F::cross_entropy(scores, labels, F::CrossEntropyFuncOptions().reduction(torch::kSum));
    } else {
      scores = tta_log_probs(model, batch_images(batch, m, device), options.tta, options.pad);
      loss = F::nll_loss(scores, labels, F::NLLLossFuncOptions().reduction(torch::kSum));
    }
    loss_sum += loss.item<double>();
    const auto predicted = scores.argmax(1).to(torch::kCPU);
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
