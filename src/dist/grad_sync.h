// GradSync: averages gradients over ranks in fixed-order buckets, overlapped with backward
// (DESIGN.md "GradSync").
//
// Parameters are grouped into buckets in reverse registration order (backward produces the last
// layers' gradients first), each bucket capped at bucket_mb MiB (the first one at first_bucket_mb,
// so communication starts early). An autograd hook per parameter copies its gradient into the
// bucket's flat buffer; when a bucket is complete and every earlier bucket has been issued, its
// all-reduce (average) is issued asynchronously while backward goes on. Buckets are therefore
// issued in bucket order on every rank, on the data plane. finish() waits for all of them (the data
// plane's bounded wait: on the CPU the host waits, and the job aborts naming step, bucket and op;
// on a GPU the compute stream waits for NCCL's completion event and the NCCL watchdog bounds it)
// and points each param.grad() at its average in the bucket buffer (a view: nothing is copied
// back). Gradients are scaled by 1/world as they are
// copied in and then summed, so the average needs no extra pass.
// With overlap off every bucket is filled and issued after backward, from the same buffers in the
// same order: the results are bit-identical.
//
// External gradient storage (FlatGradients, e.g. FusedAdam's flat gradient buffers): the buckets
// are then not buffers of their own but slices of those buffers, so the optimizer finds the
// averaged gradients where it reads them and copies nothing (one full gradient copy per step less).
// Buckets are formed as above but never cross a buffer; a bucket's tensor spans its parameters'
// consecutive slots including the gaps between them (all-reduced with them: they must be zero on
// every rank, and stay zero). Hooks write gradient * (1/world) into the parameter's view (the same
// arithmetic per element as into an own bucket: the results are bit-identical), and finish()
// points param.grad() at that view itself (same data and strides, e.g. channels_last).
//
// Contract per step: param.grad() set to none (zero_grad(set_to_none)) -> forward -> backward ->
// finish(step). set_to_none matters: after finish() the gradients alias the buckets, which the
// next backward overwrites; and a .grad() that is still defined at backward would have autograd's
// AccumulateGrad (which runs after the hook) add the new gradient on top of what the hook wrote
// into the bucket. With .grad() none, AccumulateGrad instead stores the new gradient tensor as
// .grad() and leaves the bucket alone. (With FlatGradients a .grad() still pointing into the flat
// buffers at backward is refused with CommError; FusedAdam::zero_grad(), which zeroes the buffers
// and re-points .grad() at them, is therefore not the way to clear gradients before a GradSync
// step.) Every parameter must receive exactly one gradient per backward (true for ResNet9).
// Threading: hooks run on the thread that runs backward; call finish() from that thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/planes.h"

namespace fer {

// Gradient storage GradSync writes the averaged gradients into instead of buffers of its own
// (FusedAdam::flat_gradients() fills one; GradSync does not know FusedAdam). Per parameter, in
// registration order: which buffer, the element offset of its slot, and the slot as a tensor with
// the parameter's sizes (and the strides the optimizer expects .grad() to have). Within a buffer
// the slots must lie in reverse registration order without overlapping, and the elements between
// them must be zero. Empty (no buffers): GradSync allocates its own buckets.
struct FlatGradients {
  std::vector<at::Tensor> buffers;   // 1-D, contiguous, the parameters' dtype and device
  std::vector<int> buffer;           // per parameter: index into buffers
  std::vector<std::int64_t> offset;  // per parameter: first element of its slot in the buffer
  std::vector<at::Tensor> views;     // per parameter: its slot, the parameter's sizes

  bool empty() const { return buffers.empty(); }
};

struct GradSyncOptions {
  double bucket_mb = 25.0;       // cap per bucket, MiB
  double first_bucket_mb = 1.0;  // cap of the first bucket (the last layers), MiB
  bool overlap = true;           // issue buckets from autograd hooks during backward
};

class GradSync {
 public:
  // `params` in registration order (model->parameters()), on the data plane's device. Registers
  // the hooks when overlapping. The plane must be active (a world of one needs no GradSync).
  // With `flat` (not empty) the buckets are slices of its buffers (see above); throws
  // std::invalid_argument naming the parameter when a slot does not fit that.
  GradSync(std::vector<at::Tensor> params, DataPlane& plane, const GradSyncOptions& options,
           FlatGradients flat = {});
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // Gradient accumulation (as DDP's no_sync): while a NoSync lives, backward passes all-reduce
  // nothing and gradients accumulate in param.grad(); the next synced backward all-reduces each
  // parameter's accumulated gradient plus its new one, and finish() as usual. Every rank must run
  // the same number of no-sync backward passes. (The accumulated gradients are autograd's own
  // tensors, since .grad() was none at the first backward: with FlatGradients too they live
  // outside the flat buffers until the synced backward writes their average there.)
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
  // Elements per bucket, in bucket order (for logs and tests; with FlatGradients including the
  // gaps between slots).
  std::vector<std::int64_t> bucket_numels() const;
  // Seconds finish() spent waiting for communication in the last step (the exposed part; on a
  // GPU only the time to queue the stream waits: the device's wait is not seen from the host).
  double last_wait_seconds() const { return last_wait_seconds_; }
  // Seconds finish() spent copying gradients into the buckets in the last step (all of them with
  // overlap off; only those backward did not reach with overlap on: hooks copy the rest).
  double last_fill_seconds() const { return last_fill_seconds_; }

 private:
  struct Slot {
    std::size_t param;       // index into params_
    std::int64_t offset;     // element offset in the bucket buffer (own buckets only)
    std::int64_t numel;
  };
  struct Bucket {
    std::vector<Slot> slots;
    at::Tensor buffer;       // flat, contiguous, the parameters' dtype and device (own, or a
                             // slice of a FlatGradients buffer)
    std::size_t ready = 0;   // slots filled this step
    std::unique_ptr<Work> work;
  };

  void plan_own_buckets();
  void plan_flat_buckets();
  // Where parameter k's scaled gradient goes: its slot in the bucket, or flat_.views[k].
  at::Tensor destination(std::size_t k) const;
  void on_gradient(std::size_t param, const at::Tensor& grad);
  void issue_ready_buckets();
  void reset_step();

  std::vector<at::Tensor> params_;
  DataPlane& plane_;
  GradSyncOptions options_;
  FlatGradients flat_;  // empty: own buckets
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
