// All-reduce benchmark (not a timed test): GradSync's cost for the gradients of ResNet9 against
// one raw MPI_Allreduce of the same bytes in a single buffer, under mpiexec.
//
// GradSync side: every parameter of ResNet9 (width W, 1 channel, 7 classes) holds a gradient;
// GradSync::finish() with overlap off copies them into its buckets (scaled by 1/world: the fill),
// then all-reduces each bucket through the MPI communicator's thread, waits, and points every
// param.grad() at its average (the communication part). In training the fill happens in autograd
// hooks during backward (as in PyTorch DDP), so the communication part is what GradSync costs
// beyond the gradient copy; it is the number compared with the raw side. The fill and the total
// are printed too (total_ratio), and the communicator thread alone on one buffer (thread_...).
// Raw side: MPI_Allreduce(MPI_IN_PLACE, SUM) of one float buffer with the same element count on
// MPI_COMM_WORLD from the main thread: the floor for moving these bytes.
// The two sides alternate iteration by iteration (after a barrier) so that other jobs' load hits
// both alike; medians are compared.
//
// Usage: mpiexec -n N bench_allreduce [ITERS=30] [WIDTH=1] [BUCKET_MB=25]
// Prints (rank 0): bytes, both medians, ratio = gradsync/raw (target <= 1.10), and algbw / busbw
// (busbw = algbw * 2(n-1)/n, the NCCL-tests convention) of both sides.
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "dist/communicator.h"
#include "dist/grad_sync.h"
#include "dist/mpi_context.h"
#include "dist/planes.h"
#include "model/resnet9.h"

namespace {

constexpr int kWarmup = 3;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  fer::MpiContext mpi(&argc, &argv);
  const int iters = argc > 1 ? std::atoi(argv[1]) : 30;
  const double width = argc > 2 ? std::atof(argv[2]) : 1.0;
  const double bucket_mb = argc > 3 ? std::atof(argv[3]) : 25.0;
  if (iters < 1 || width <= 0 || bucket_mb <= 0) {
    std::fprintf(stderr, "usage: bench_allreduce [ITERS=30] [WIDTH=1] [BUCKET_MB=25]\n");
    return 2;
  }
  torch::set_num_threads(1);
  torch::manual_seed(1);

  fer::ResNet9Options model_options;
  model_options.in_channels = 1;
  model_options.num_classes = 7;
  model_options.width = width;
  fer::ResNet9 model(model_options);
  std::vector<at::Tensor> params = model->parameters();
  std::int64_t numel = 0;
  for (auto& p : params) {
    p.mutable_grad() = torch::randn_like(p);
    numel += p.numel();
  }

  fer::PlaneOptions planes;
  planes.force_collectives = true;  // a world of 1 measures the communicator too
  fer::ProcessGroups groups(mpi, planes);
  fer::GradSyncOptions options;
  options.bucket_mb = bucket_mb;
  options.overlap = false;
  fer::GradSync sync(params, groups.data(), options);

  // Both raw sides sum in place; each starts from the same values (untimed refill), so the
  // numbers stay finite however many iterations run (summing a sum doubles it every time).
  const auto initial = torch::randn({numel});
  auto raw = initial.clone();
  float* raw_data = raw.data_ptr<float>();
  const int count = static_cast<int>(numel);

  std::vector<double> t_sync, t_raw, t_thread, t_fill;
  for (int i = 0; i < kWarmup + iters; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    auto start = std::chrono::steady_clock::now();
    sync.finish(i);
    const double a = seconds_since(start);
    raw.copy_(initial);
    MPI_Barrier(MPI_COMM_WORLD);
    start = std::chrono::steady_clock::now();
    MPI_Allreduce(MPI_IN_PLACE, raw_data, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    const double b = seconds_since(start);
    raw.copy_(initial);
    MPI_Barrier(MPI_COMM_WORLD);
    start = std::chrono::steady_clock::now();
    groups.data().allreduce(raw, fer::ReduceOp::kSum, "bench raw all-reduce");
    const double c = seconds_since(start);
    if (i >= kWarmup) {
      t_sync.push_back(a);
      t_raw.push_back(b);
      t_thread.push_back(c);
      t_fill.push_back(sync.last_fill_seconds());
    }
  }
  // The last raw sum must be right (every rank drew the same values: torch's default seed).
  if (!torch::allclose(raw, initial * mpi.size(), 1e-5, 1e-5)) {
    std::fprintf(stderr, "bench_allreduce: rank %d: the communicator's sum is wrong\n", mpi.rank());
    return 1;
  }
  // A rank's time is the slowest rank's: take the maximum of each iteration over ranks.
  MPI_Allreduce(MPI_IN_PLACE, t_sync.data(), iters, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, t_raw.data(), iters, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);

  MPI_Allreduce(MPI_IN_PLACE, t_thread.data(), iters, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, t_fill.data(), iters, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  // The communication part of finish(): what is left once the gradients are in the buckets (in
  // training, autograd hooks copy them in during backward, as PyTorch DDP's do).
  std::vector<double> t_comm(t_sync.size());
  for (std::size_t i = 0; i < t_sync.size(); ++i) t_comm[i] = t_sync[i] - t_fill[i];
  if (mpi.rank() == 0) {
    const int n = mpi.size();
    const double bytes = static_cast<double>(numel) * sizeof(float);
    const double ms_sync = median(t_comm), ms_raw = median(t_raw);
    const double bus = n > 1 ? 2.0 * (n - 1) / n : 1.0;
    std::printf(
        "ranks=%d width=%g params=%lld bytes=%.0f buckets=%d iters=%d\n"
        "gradsync_ms=%.3f raw_ms=%.3f ratio=%.3f\n"
        "gradsync_fill_ms=%.3f gradsync_total_ms=%.3f total_ratio=%.3f thread_one_buffer_ms=%.3f\n"
        "gradsync_algbw_GBps=%.3f gradsync_busbw_GBps=%.3f raw_algbw_GBps=%.3f "
        "raw_busbw_GBps=%.3f\n",
        n, width, static_cast<long long>(numel), bytes, sync.num_buckets(), iters, ms_sync * 1e3,
        ms_raw * 1e3, ms_sync / ms_raw, median(t_fill) * 1e3, median(t_sync) * 1e3,
        median(t_sync) / ms_raw, median(t_thread) * 1e3, bytes / ms_sync / 1e9, bytes / ms_sync / 1e9 * bus,
        bytes / ms_raw / 1e9, bytes / ms_raw / 1e9 * bus);
  }
  return 0;
}
