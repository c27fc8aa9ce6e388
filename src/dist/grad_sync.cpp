#include "dist/grad_sync.h"

#include <torch/torch.h>

#include <chrono>

#include "common/errors.h"
#include "common/trace.h"

namespace fer {

GradSync::GradSync(std::vector<at::Tensor> params, DataPlane& plane,
                   const GradSyncOptions& options)
    : params_(std::move(params)),
      plane_(plane),
      options_(options),
      scale_(1.0 / static_cast<double>(plane.size())) {
  FER_CHECK(options.bucket_mb > 0 && options.first_bucket_mb > 0, ConfigError,
            "dist.bucket_mb must be > 0");
  FER_CHECK(plane.active(), CommError, "GradSync needs an active data plane (world > 1)");
  bucket_of_.resize(params_.size());
  slot_of_.resize(params_.size());
  filled_.assign(params_.size(), false);
  // Reverse registration order: the order backward produces gradients in.
  std::int64_t bucket_bytes = 0;
  for (std::size_t k = params_.size(); k-- > 0;) {
    const at::Tensor& p = params_[k];
    FER_CHECK(p.requires_grad(), ConfigError, "GradSync: parameter ", k, " needs no gradient");
    const std::int64_t bytes = p.numel() * static_cast<std::int64_t>(p.element_size());
    const double cap_mb = buckets_.size() <= 1 ? options.first_bucket_mb : options.bucket_mb;
    const bool full = !buckets_.empty() && (bucket_bytes + bytes > cap_mb * 1024 * 1024 ||
                                            params_[buckets_.back().slots.front().param]
                                                    .scalar_type() != p.scalar_type());
    if (buckets_.empty() || full) {
      bucket_bytes = 0;
      buckets_.emplace_back();
    }
    Bucket& b = buckets_.back();
    const std::int64_t offset = b.slots.empty() ? 0 : b.slots.back().offset + b.slots.back().numel;
    b.slots.push_back({k, offset, p.numel()});
    bucket_of_[k] = buckets_.size() - 1;
    slot_of_[k] = b.slots.size() - 1;
    bucket_bytes += bytes;
  }
  for (auto& b : buckets_) {
    const auto& first = params_[b.slots.front().param];
    const std::int64_t numel = b.slots.back().offset + b.slots.back().numel;
    b.buffer = torch::zeros({numel}, first.options().requires_grad(false));
  }
  if (options_.overlap) {
    for (std::size_t k = 0; k < params_.size(); ++k) {
      hook_ids_.push_back(params_[k].register_hook([this, k](at::Tensor grad) {
        on_gradient(k, grad);
      }));
    }
  }
}

GradSync::~GradSync() {
  for (std::size_t k = 0; k < hook_ids_.size(); ++k) {
    try {
      params_[k].remove_hook(hook_ids_[k]);
    } catch (...) {
      // the parameter may already be gone with its module
    }
  }
  // Collectives still in flight own their buffers through the communicator; nothing to do.
}

std::vector<std::int64_t> GradSync::bucket_numels() const {
  std::vector<std::int64_t> out;
  for (const auto& b : buckets_) out.push_back(b.buffer.numel());
  return out;
}

void GradSync::on_gradient(std::size_t k, const at::Tensor& grad) {
  if (!syncing_) return;  // a NoSync backward: the gradient accumulates in param.grad()
  FER_CHECK(!filled_[k], CommError, "GradSync: parameter ", k,
            " received two gradients in one backward (a parameter used twice, or two backward "
            "passes before finish() without GradSync::NoSync)");
  filled_[k] = true;
  Bucket& b = buckets_[bucket_of_[k]];
  const Slot& slot = b.slots[slot_of_[k]];
  at::Tensor dest = b.buffer.narrow(0, slot.offset, slot.numel);
  // The hook runs before autograd adds `grad` to param.grad(): what NoSync passes accumulated
  // there is added here (with overlap off, finish() passes param.grad() itself, already summed).
  const at::Tensor& accumulated = params_[k].grad();
  if (options_.overlap && accumulated.defined()) {
    at::add_out(dest, grad.reshape({-1}), accumulated.reshape({-1}));
    dest.mul_(scale_);
    ++b.ready;
    issue_ready_buckets();
    return;
  }
  // Pre-scaled by 1/world on the way in, then summed: the average without a pass after the
  // all-reduce (exact for power-of-two worlds; the same on every rank and for overlap on/off).
  at::mul_out(dest, grad.reshape({-1}), scale_);
  ++b.ready;
  // With overlap off, finish() fills every bucket first and issues them all afterwards.
  if (options_.overlap) issue_ready_buckets();
}

void GradSync::issue_ready_buckets() {
  while (next_to_issue_ < buckets_.size() &&
         buckets_[next_to_issue_].ready == buckets_[next_to_issue_].slots.size()) {
    Bucket& b = buckets_[next_to_issue_];
    const trace::ScopedLabel label("grad allreduce bucket",
                                   static_cast<std::int64_t>(next_to_issue_));
    b.work = plane_.allreduce_async(b.buffer, ReduceOp::kSum, "gradient bucket all-reduce");
    ++next_to_issue_;
  }
}

void GradSync::finish(std::int64_t step) {
  const auto fill_start = std::chrono::steady_clock::now();
  if (!options_.overlap) {
    // Fill every bucket first, then issue them all: the copies do not compete with the
    // communication thread for the cores.
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const at::Tensor& g = params_[k].grad();
      on_gradient(k, g.defined() ? g : torch::zeros_like(params_[k]));
    }
  } else {
    // A parameter backward did not reach: contributes zeros, the same on every rank.
    for (std::size_t k = 0; k < params_.size(); ++k) {
      if (!filled_[k]) on_gradient(k, torch::zeros_like(params_[k]));
    }
  }
  const auto start = std::chrono::steady_clock::now();
  last_fill_seconds_ = std::chrono::duration<double>(start - fill_start).count();
  issue_ready_buckets();
  FER_CHECK(next_to_issue_ == buckets_.size(), CommError, "GradSync: bucket ", next_to_issue_,
            " was never completed");
  // The communicator completes work in issue order (one thread, or one stream for NCCL): waiting
  // for the last bucket waits for all of them with one wake-up instead of one per bucket (on
  // fully subscribed cores each wake-up can preempt a peer's communication thread).
  plane_.wait(*buckets_.back().work, [this, step] {
    std::size_t i = 0;  // the first bucket still in flight
    while (i + 1 < buckets_.size() && buckets_[i].work->wait_for(0.0)) ++i;
    return "gradient all-reduce at step " + std::to_string(step) + ", bucket " +
           std::to_string(i) + "/" + std::to_string(buckets_.size()) + " (" +
           buckets_[i].work->describe() + ")";
  });
  for (auto& b : buckets_) {
    b.work->wait();  // returns at once; rethrows a failure
    b.work.reset();
  }
  last_wait_seconds_ =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The averaged gradients become views of the bucket buffers (no copy back). The next step's
  // zero_grad(set_to_none) drops them before backward refills the buffers.
  for (auto& b : buckets_) {
    for (const Slot& slot : b.slots) {
      at::Tensor& p = params_[slot.param];
      p.mutable_grad() = b.buffer.narrow(0, slot.offset, slot.numel).view_as(p);
    }
  }
  reset_step();
}

void GradSync::reset_step() {
  std::fill(filled_.begin(), filled_.end(), false);
  for (auto& b : buckets_) b.ready = 0;
  next_to_issue_ = 0;
}

}  // namespace fer
