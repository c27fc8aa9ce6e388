#include "train/metrics.h"

#include "common/errors.h"

namespace fer {

ConfusionMatrix::ConfusionMatrix(int num_classes)
    : k_(num_classes), counts_(static_cast<std::size_t>(num_classes) * num_classes, 0) {
  FER_CHECK(num_classes > 0, ConfigError, "a confusion matrix needs classes");
}

void ConfusionMatrix::add(int truth, int predicted) {
  FER_CHECK(truth >= 0 && truth < k_ && predicted >= 0 && predicted < k_, DataError,
            "class index out of range: truth ", truth, ", predicted ", predicted);
  ++counts_[truth * k_ + predicted];
}

void ConfusionMatrix::merge(const ConfusionMatrix& other) {
  FER_CHECK(other.k_ == k_, ConfigError, "confusion matrices of different sizes");
  for (std::size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
}

std::int64_t ConfusionMatrix::total() const {
  std::int64_t n = 0;
  for (auto c : counts_) n += c;
  return n;
}

double ConfusionMatrix::accuracy() const {
  const std::int64_t n = total();
  if (n == 0) return 0.0;
  std::int64_t correct = 0;
  for (int c = 0; c < k_; ++c) correct += at(c, c);
  return static_cast<double>(correct) / n;
}

std::vector<double> ConfusionMatrix::precision() const {
  std::vector<double> out(k_, 0.0);
  for (int p = 0; p < k_; ++p) {
    std::int64_t predicted = 0;
    for (int t = 0; t < k_; ++t) predicted += at(t, p);
    out[p] = predicted ? static_cast<double>(at(p, p)) / predicted : 0.0;
  }
  return out;
}

std::vector<double> ConfusionMatrix::recall() const {
  std::vector<double> out(k_, 0.0);
  for (int t = 0; t < k_; ++t) {
    std::int64_t present = 0;
    for (int p = 0; p < k_; ++p) present += at(t, p);
    out[t] = present ? static_cast<double>(at(t, t)) / present : 0.0;
  }
  return out;
}

std::vector<double> ConfusionMatrix::f1() const {
  const auto p = precision();
  const auto r = recall();
  std::vector<double> out(k_, 0.0);
  for (int c = 0; c < k_; ++c) out[c] = p[c] + r[c] > 0 ? 2 * p[c] * r[c] / (p[c] + r[c]) : 0.0;
  return out;
}

double ConfusionMatrix::macro_f1() const {
  const auto scores = f1();
  double sum = 0.0;
  int used = 0;
  for (int c = 0; c < k_; ++c) {
    std::int64_t seen = 0;
    for (int o = 0; o < k_; ++o) seen += at(c, o) + at(o, c);
    if (seen == 0) continue;
    sum += scores[c];
    ++used;
  }
  return used ? sum / used : 0.0;
}

std::vector<double> balanced_class_weights(const std::vector<std::int64_t>& counts) {
  std::vector<double> w(counts.size(), 0.0);
  double sum = 0.0;
  int present = 0;
  for (std::size_t c = 0; c < counts.size(); ++c) {
    if (counts[c] <= 0) continue;
    w[c] = 1.0 / static_cast<double>(counts[c]);
    sum += w[c];
    ++present;
  }
  if (present == 0) return {};
  for (double& x : w) x *= present / sum;
  return w;
}

}  // namespace fer
