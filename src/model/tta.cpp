#include "model/tta.h"

#include <torch/torch.h>

#include <utility>

#include "common/errors.h"

namespace fer {

Tta parse_tta(const std::string& name) {
  if (name == "none") return Tta::kNone;
  if (name == "flip") return Tta::kFlip;
  if (name == "ten_crop") return Tta::kTenCrop;
  throw ConfigError("unknown test-time augmentation '" + name + "'", "use none, flip or ten_crop");
}

const char* to_string(Tta tta) {
  switch (tta) {
    case Tta::kFlip:
      return "flip";
    case Tta::kTenCrop:
      return "ten_crop";
    case Tta::kNone:
      break;
  }
  return "none";
}

std::vector<torch::Tensor> tta_views(const torch::Tensor& x, Tta tta, int pad) {
  std::vector<torch::Tensor> views{x};
  if (tta == Tta::kTenCrop && pad > 0) {
    namespace F = torch::nn::functional;
    const auto padded = F::pad(x, F::PadFuncOptions({pad, pad, pad, pad}).mode(torch::kReflect));
    const std::int64_t h = x.size(2), w = x.size(3);
    for (const auto& [top, left] : {std::pair<int, int>{0, 0}, {0, 2 * pad}, {2 * pad, 0},
                                    {2 * pad, 2 * pad}}) {
      views.push_back(padded.narrow(2, top, h).narrow(3, left, w));
    }
  }
  if (tta != Tta::kNone) {
    const std::size_t n = views.size();
    for (std::size_t i = 0; i < n; ++i) views.push_back(views[i].flip({3}));
  }
  return views;
}

torch::Tensor tta_probs(const TtaForward& forward, const torch::Tensor& x, Tta tta, int pad) {
  if (tta == Tta::kNone) return torch::softmax(forward(x), 1);
  torch::Tensor sum;
  const auto views = tta_views(x, tta, pad);
  for (const auto& v : views) {
    const auto p = torch::softmax(forward(v.contiguous()), 1);
    sum = sum.defined() ? sum + p : p;
  }
  return sum / static_cast<double>(views.size());
}

torch::Tensor tta_log_probs(const TtaForward& forward, const torch::Tensor& x, Tta tta, int pad) {
  if (tta == Tta::kNone) return torch::log_softmax(forward(x), 1);
  return torch::log(tta_probs(forward, x, tta, pad));
}

torch::Tensor tta_log_probs(ResNet9& model, const torch::Tensor& x, Tta tta, int pad) {
  return tta_log_probs([&model](const torch::Tensor& v) { return model->forward(v); }, x, tta, pad);
}

}  // namespace fer
