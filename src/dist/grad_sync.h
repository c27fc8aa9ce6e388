// GradSync: averages gradients over ranks in fixed-order buckets, overlapped with backward
// (DESIGN.md "GradSync").
//
// Parameters are grouped into buckets in reverse registration order (backward produces the last
// layers' gradients first), each bucket capped at bucket_mb MiB (the first one at first_bucket_mb,
// so communication starts early). An autograd hook per parameter copies its gradient into the
// bucket's flat buffer; when a bucket is complete and every earlier bucket has been issued, its
// all-reduce (average) is issued asynchronously while backward goes on. Buckets are therefore
// issued in bucket order on every rank, on the data plane. finish() waits for all of them (the data
// plane's bounded wait: the job aborts naming step, bucket and op) and points each param.grad() at its average in
// the bucket buffer (a view: nothing is copied back). Gradients are scaled by 1/world as they are
// copied in and then summed, so the average needs no extra pass.
// With overlap off every bucket is filled and issued after backward, from the same buffers in the
// same order: the results are bit-identical.
//
// Contract per step: optimizer.zero_grad(set_to_none) -> forward -> backward -> finish(step).
// (set_to_none matters: after finish() the gradients alias the buckets, which the next backward
// overwrites.)
// Every parameter must receive exactly one gradient per backward (true for ResNet9). Threading:
// hooks run on the thread that runs backward; call finish() from that thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/planes.h"

namespace fer {

struct GradSyncOptions {
  double bucket_mb = 25.0;       // cap per bucket, MiB
  double first_bucket_mb = 1.0;  // cap of the first bucket (the last layers), MiB
  bool overlap = true;           // issue buckets from autograd hooks during backward
};

class GradSync {
 public:
  // `params` in registration order (model->parameters()), on the data plane's device. Registers
  // the hooks when overlapping. The plane must be active (a world of one needs no GradSync).
  GradSync(std::vector<at::Tensor> params, DataPlane& plane, const GradSyncOptions& options);
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // Gradient accumulation (as DDP's no_sync): while a NoSync lives, backward passes all-reduce
  // nothing and gradients accumulate in param.grad(); the next synced backward all-reduces each
  // parameter's accumulated gradient plus its new one, and finish() as usual. Every rank must run
  // the same number of no-sync backward passes.
  class NoSync {
   public:
    explicit NoSync(GradSync* sync) : sync_(sync) {
      if (sync_) sync_->syncing_ = false;
    }
    ~NoSync() {
      if (sync_) sync_->syncing_ = true;
    }
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;

   private:
    GradSync* sync_;
  };

  // After backward: issues what is left, waits for every bucket, writes averaged gradients back.
  // `step` names the step in timeout messages. Throws CommError (a failed collective, or a
  // parameter that received two gradients in one backward).
  void finish(std::int64_t step);

  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  // Elements per bucket, in bucket order (for logs and tests).
  std::vector<std::int64_t> bucket_numels() const;
  // Seconds finish() spent waiting for communication in the last step (the exposed part).
  double last_wait_seconds() const { return last_wait_seconds_; }
  // Seconds finish() spent copying gradients into the buckets in the last step (all of them with
  // overlap off; only those backward did not reach with overlap on: hooks copy the rest).
  double last_fill_seconds() const { return last_fill_seconds_; }

 private:
  struct Slot {
    std::size_t param;       // index into params_
    std::int64_t offset;     // element offset in the bucket buffer
    std::int64_t numel;
  };
  struct Bucket {
    std::vector<Slot> slots;
    at::Tensor buffer;       // flat, contiguous, the parameters' dtype and device
    std::size_t ready = 0;   // slots filled this step
    std::unique_ptr<Work> work;
  };

  void on_gradient(std::size_t param, const at::Tensor& grad);
  void issue_ready_buckets();
  void reset_step();

  std::vector<at::Tensor> params_;
  DataPlane& plane_;
  GradSyncOptions options_;
  std::vector<Bucket> buckets_;
  std::vector<std::size_t> bucket_of_;  // param index -> bucket index
  std::vector<std::size_t> slot_of_;    // param index -> slot index within its bucket
  std::vector<bool> filled_;            // param got its gradient this step
  std::size_t next_to_issue_ = 0;
  bool syncing_ = true;  // false while a NoSync lives
  std::vector<unsigned> hook_ids_;
  double last_wait_seconds_ = 0.0;
  double last_fill_seconds_ = 0.0;
  double scale_;            // 1 / world size: gradients are pre-scaled, then summed
};

}  // namespace fer
