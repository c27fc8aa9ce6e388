// Classification metrics from a confusion matrix: accuracy, per-class precision/recall/F1,
// macro-F1. Counts are integers so ranks can sum them (all-reduce) before any division.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fer {

class ConfusionMatrix {
 public:
  explicit ConfusionMatrix(int num_classes);
  void add(int truth, int predicted);
  // Element-wise sum (another rank's counts).
  void merge(const ConfusionMatrix& other);
  // Row-major counts [truth][predicted], for all-reduce.
  std::vector<std::int64_t>& counts() { return counts_; }
  const std::vector<std::int64_t>& counts() const { return counts_; }
  std::int64_t at(int truth, int predicted) const { return counts_[truth * k_ + predicted]; }
  int num_classes() const { return k_; }
  std::int64_t total() const;

  double accuracy() const;
  // Per class; a class never predicted has precision 0, never present has recall 0 (sklearn's
  // zero_division=0), F1 is 0 when precision + recall is 0.
  std::vector<double> precision() const;
  std::vector<double> recall() const;
  std::vector<double> f1() const;
  // Mean F1 over classes that occur in the truth or the predictions.
  double macro_f1() const;

 private:
  int k_;
  std::vector<std::int64_t> counts_;
};

// optim.class_weights=balanced: per class the inverse of its train count, normalised so that the
// classes present weigh 1 on average; a class without train images weighs 0. Empty `counts` or
// no image at all: empty.
std::vector<double> balanced_class_weights(const std::vector<std::int64_t>& counts);

}  // namespace fer
