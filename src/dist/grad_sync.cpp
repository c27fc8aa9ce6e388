#include "dist/grad_sync.h"

#include <torch/torch.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <utility>

#include "common/errors.h"
#include "common/trace.h"

namespace fer {

GradSync::GradSync(std::vector<at::Tensor> params, DataPlane& plane, const GradSyncOptions& options,
                   FlatGradients flat)
    : params_(std::move(params)),
      plane_(plane),
      options_(options),
      flat_(std::move(flat)),
      scale_(1.0 / static_cast<double>(plane.size())) {
  FER_CHECK(options.bucket_mb > 0 && options.first_bucket_mb > 0, ConfigError,
            "dist.bucket_mb must be > 0");
  FER_CHECK(plane.active(), CommError, "GradSync needs an active data plane (world > 1)");
  bucket_of_.resize(params_.size());
  slot_of_.resize(params_.size());
  filled_.assign(params_.size(), false);
  for (std::size_t k = 0; k < params_.size(); ++k) {
    FER_CHECK(params_[k].requires_grad(), ConfigError, "GradSync: parameter ", k,
              " needs no gradient");
  }
  if (flat_.empty()) {
    plan_own_buckets();
  } else {
    plan_flat_buckets();
  }
  if (options_.overlap) {
    for (std::size_t k = 0; k < params_.size(); ++k) {
      hook_ids_.push_back(params_[k].register_hook([this, k](at::Tensor grad) {
        on_gradient(k, grad);
      }));
    }
  }
}

namespace {

// Whether a parameter of `bytes` starts a new bucket (in reverse registration order): the first
// one, or one that would take the current bucket (`bucket_bytes` so far) past its cap. (The
// callers also cut where the dtype or the flat buffer changes.)
bool starts_bucket(bool first, std::int64_t bucket_bytes, std::int64_t bytes, double cap_mb) {
  return first || bucket_bytes + bytes > cap_mb * 1024 * 1024;
}

}  // namespace

void GradSync::plan_own_buckets() {
  // Reverse registration order: the order backward produces gradients in.
  std::int64_t bucket_bytes = 0;
  for (std::size_t k = params_.size(); k-- > 0;) {
    const at::Tensor& p = params_[k];
    const std::int64_t bytes = p.numel() * static_cast<std::int64_t>(p.element_size());
    const double cap_mb = buckets_.size() <= 1 ? options_.first_bucket_mb : options_.bucket_mb;
    if (starts_bucket(buckets_.empty(), bucket_bytes, bytes, cap_mb) ||
        params_[buckets_.back().slots.front().param].scalar_type() != p.scalar_type()) {
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
}

void GradSync::plan_flat_buckets() {
  const std::size_t n = params_.size();
  const auto misfit = [](std::size_t k, const std::string& what) {
    return std::invalid_argument("GradSync: parameter " + std::to_string(k) + " " + what);
  };
  if (flat_.buffer.size() != n || flat_.offset.size() != n || flat_.views.size() != n) {
    throw std::invalid_argument("GradSync: FlatGradients describes " +
                                std::to_string(flat_.views.size()) + " parameters, GradSync has " +
                                std::to_string(n));
  }
  for (std::size_t b = 0; b < flat_.buffers.size(); ++b) {
    const at::Tensor& t = flat_.buffers[b];
    if (!t.defined() || t.dim() != 1 || !t.is_contiguous()) {
      throw std::invalid_argument("GradSync: flat gradient buffer " + std::to_string(b) +
                                  " is not a 1-D contiguous tensor");
    }
  }
  // Every slot is where FlatGradients says, and a buffer's slots follow each other in reverse
  // registration order (so a bucket's slice holds its parameters and zero gaps, nothing else).
  std::vector<std::int64_t> end_of(flat_.buffers.size(), 0);  // end of the buffer's last slot
  for (std::size_t k = n; k-- > 0;) {
    const at::Tensor& p = params_[k];
    const int b = flat_.buffer[k];
    if (b < 0 || static_cast<std::size_t>(b) >= flat_.buffers.size()) {
      throw misfit(k, "names flat gradient buffer " + std::to_string(b) + " of " +
                          std::to_string(flat_.buffers.size()));
    }
    const at::Tensor& buffer = flat_.buffers[b];
    const at::Tensor& view = flat_.views[k];
    const std::int64_t offset = flat_.offset[k];
    if (buffer.scalar_type() != p.scalar_type() || buffer.device() != p.device()) {
      throw misfit(k, "has another dtype or device than its flat gradient buffer");
    }
    if (!view.defined() || !view.sizes().equals(p.sizes()) ||
        !view.is_non_overlapping_and_dense() || view.scalar_type() != p.scalar_type()) {
      throw misfit(k, "has no dense gradient view of its own sizes and dtype");
    }
    if (offset < end_of[b] || offset + p.numel() > buffer.numel()) {
      const std::string at =
          "[" + std::to_string(offset) + ", " + std::to_string(offset + p.numel()) + ")";
      throw misfit(k, "lies at elements " + at + " of its flat buffer (" +
                          std::to_string(buffer.numel()) + " elements), not after element " +
                          std::to_string(end_of[b]) + " where parameter " + std::to_string(k + 1) +
                          "'s slot ends: the slots must follow each other in reverse "
                          "registration order");
    }
    const char* slot = static_cast<const char*>(buffer.data_ptr()) + offset * buffer.element_size();
    if (view.data_ptr() != slot || !view.is_alias_of(buffer)) {
      throw misfit(k, "'s gradient view is not its slot of its flat buffer");
    }
    end_of[b] = offset + p.numel();
  }
  // Buckets as plan_own_buckets() forms them, cut also where the buffer changes; each bucket's
  // buffer the slice from its first slot's start to its last slot's end.
  std::int64_t bucket_bytes = 0;
  std::vector<std::pair<std::int64_t, std::int64_t>> spans;  // per bucket: [start, end)
  for (std::size_t k = n; k-- > 0;) {
    const at::Tensor& p = params_[k];
    const std::int64_t bytes = p.numel() * static_cast<std::int64_t>(p.element_size());
    const double cap_mb = buckets_.size() <= 1 ? options_.first_bucket_mb : options_.bucket_mb;
    if (starts_bucket(buckets_.empty(), bucket_bytes, bytes, cap_mb) ||
        flat_.buffer[buckets_.back().slots.front().param] != flat_.buffer[k]) {
      bucket_bytes = 0;
      buckets_.emplace_back();
      spans.emplace_back(flat_.offset[k], flat_.offset[k]);
    }
    Bucket& b = buckets_.back();
    b.slots.push_back({k, flat_.offset[k] - spans.back().first, p.numel()});
    spans.back().second = flat_.offset[k] + p.numel();
    bucket_of_[k] = buckets_.size() - 1;
    slot_of_[k] = b.slots.size() - 1;
    bucket_bytes += bytes;
  }
  for (std::size_t i = 0; i < buckets_.size(); ++i) {
    const at::Tensor& buffer = flat_.buffers[flat_.buffer[buckets_[i].slots.front().param]];
    buckets_[i].buffer = buffer.narrow(0, spans[i].first, spans[i].second - spans[i].first);
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

at::Tensor GradSync::destination(std::size_t k) const {
  if (!flat_.empty()) return flat_.views[k];
  const Bucket& b = buckets_[bucket_of_[k]];
  const Slot& slot = b.slots[slot_of_[k]];
  return b.buffer.narrow(0, slot.offset, slot.numel);
}

void GradSync::on_gradient(std::size_t k, const at::Tensor& grad) {
  if (!syncing_) return;  // a NoSync backward: the gradient accumulates in param.grad()
  FER_CHECK(!filled_[k], CommError, "GradSync: parameter ", k,
            " received two gradients in one backward (a parameter used twice, or two backward "
            "passes before finish() without GradSync::NoSync)");
  filled_[k] = true;
  Bucket& b = buckets_[bucket_of_[k]];
  at::Tensor dest = destination(k);
  // The hook runs before autograd adds `grad` to param.grad(): what NoSync passes accumulated
  // there is added here (with overlap off, finish() passes param.grad() itself, already summed).
  const at::Tensor& accumulated = params_[k].grad();
  // Own buckets: flat slots, filled in the gradient's logical element order. FlatGradients: the
  // view has the parameter's sizes (and the optimizer's strides); elementwise, the same values.
  const bool own = flat_.empty();
  FER_CHECK(own || !accumulated.defined() || !accumulated.is_alias_of(dest), CommError,
            "GradSync: parameter ", k,
            "'s .grad() points into the flat gradient buffers at backward (set it to none before "
            "backward: autograd would add the new gradient on top of the average GradSync writes "
            "there)");
  if (options_.overlap && accumulated.defined()) {
    if (own) {
      at::add_out(dest, grad.reshape({-1}), accumulated.reshape({-1}));
    } else {
      at::add_out(dest, grad, accumulated);
    }
    dest.mul_(scale_);
    ++b.ready;
    issue_ready_buckets();
    return;
  }
  // Pre-scaled by 1/world on the way in, then summed: the average without a pass after the
  // all-reduce (exact for power-of-two worlds; the same on every rank and for overlap on/off).
  at::mul_out(dest, own ? grad.reshape({-1}) : grad, scale_);
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
  // fully subscribed cores each wake-up can preempt a peer's communication thread). On a GPU the
  // wait is the compute stream's (DataPlane::wait): the host goes on to queue clip and step.
  plane_.wait(*buckets_.back().work, [this, step] {
    std::size_t i = 0;  // the first bucket still in flight
    while (i + 1 < buckets_.size() && buckets_[i].work->wait_for(0.0)) ++i;
    return "gradient all-reduce at step " + std::to_string(step) + ", bucket " +
           std::to_string(i) + "/" + std::to_string(buckets_.size()) + " (" +
           buckets_[i].work->describe() + ")";
  });
  for (auto& b : buckets_) {
    // Host backends: finished (in order), so this returns at once and rethrows a failure. NCCL:
    // one more stream wait on an earlier event (free), never a host wait.
    plane_.wait(*b.work, [] { return std::string("gradient all-reduce"); });
    b.work.reset();
  }
  last_wait_seconds_ =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The averaged gradients become views of the bucket buffers (no copy back): with
  // FlatGradients the given views themselves, so the optimizer finds .grad() where it reads it.
  // The next step's zero_grad(set_to_none) drops them before backward refills the buffers.
  for (std::size_t k = 0; k < params_.size(); ++k) {
    at::Tensor& p = params_[k];
    p.mutable_grad() = flat_.empty() ? destination(k).view_as(p) : flat_.views[k];
  }
  reset_step();
}

void GradSync::reset_step() {
  std::fill(filled_.begin(), filled_.end(), false);
  for (auto& b : buckets_) b.ready = 0;
  next_to_issue_ = 0;
}

}  // namespace fer
