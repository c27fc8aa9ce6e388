#include "model/sync_batchnorm.h"

#include <torch/torch.h>

#include <tuple>
#include <utility>
#include <vector>

namespace fer {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr auto kStatsType = torch::kDouble;    // dtype of the statistics and of both all-reduces
constexpr char kAllReduceKey[] = "allreduce";  // saved_data: capsule holding the AllReduceSum

// Dtype of the elementwise work: the input's, except float32 for 16-bit floats.
torch::ScalarType compute_type(const torch::Tensor& t) {
  const auto s = t.scalar_type();
  return (s == torch::kHalf || s == torch::kBFloat16) ? torch::kFloat : s;
}

// A per-channel vector [C] as [1, C, 1, ...] in `like`'s dtype, for broadcasting against it.
torch::Tensor per_channel(const torch::Tensor& v, const torch::Tensor& like) {
  std::vector<int64_t> shape(like.dim(), 1);
  shape[1] = v.size(0);
  return v.to(like.scalar_type()).view(shape);
}

// Keeps the AllReduceSum alive for backward: the Function's backward is static and saved_data
// holds IValues only; a capsule is the IValue that owns an arbitrary C++ object.
struct AllReduceHolder : torch::CustomClassHolder {
  explicit AllReduceHolder(AllReduceSum f) : fn(std::move(f)) {}
  AllReduceSum fn;
};

// Optional tensors are passed as c10::optional: apply() rejects undefined Tensor arguments, and an
// absent optional gets no autograd edge. So the edges are input (0), then weight (1) and bias (2)
// when affine; needs_input_grad(1 / 2) is consulted only then.
using OptionalTensor = c10::optional<torch::Tensor>;

OptionalTensor optional(const torch::Tensor& t) {
  return t.defined() ? OptionalTensor(t) : c10::nullopt;
}

// Layout of the forward packet, [3C + 1] float64, summed over ranks:
//   [0]              n_r                      element count per channel
//   [1, C + 1)       n_r * mean_r             -> global sum
//   [C + 1, 2C + 1)  n_r * mean_r^2           -> between-rank part of M2 (Chan)
//   [2C + 1, 3C + 1) M2_r = n_r * var_r       -> within-rank part of M2
// Global: N = sum n_r, mean = sum(n_r mean_r) / N,
//         M2 = sum M2_r + (sum n_r mean_r^2 - N mean^2)   (Chan et al.'s pairwise update, all ranks
//         at once). The within-rank parts never meet a mean^2: no cancellation there; the
//         between-rank part is formed in float64 (its error is ~1e-16 * mean^2 / var relative).
// Every n_r * x product is exact in float64 for float32 x and n_r < 2^29, so for a world of 1
// mean and var come back bit for bit as the local ones.
struct GlobalStats {
  torch::Tensor count;   // [1] float64, N (on the input's device)
  torch::Tensor mean;    // [C] float64
  torch::Tensor var;     // [C] float64, biased (M2 / N)
  torch::Tensor invstd;  // [C] float64, 1 / sqrt(var + eps)
};

torch::Tensor pack_local_stats(const torch::Tensor& x, int64_t channels, int64_t local_count) {
  torch::Tensor stats = torch::zeros({3 * channels + 1}, x.options().dtype(kStatsType));
  if (local_count == 0) return stats;  // an empty local batch adds nothing
  // aten's batch norm statistics kernel: per channel, a float64 sum for the mean, then the
  // centred sum of squares around it (two passes, no cancellation); one call, any device.
  torch::Tensor mean, var;  // var is the biased variance
  std::tie(mean, var) = at::batch_norm_update_stats(x, {}, {}, 0.0);
  const double n = static_cast<double>(local_count);
  const auto mean64 = mean.to(kStatsType);
  stats.slice(0, 0, 1).fill_(n);
  stats.slice(0, 1, channels + 1).copy_(mean64 * n);
  stats.slice(0, channels + 1, 2 * channels + 1).copy_(mean64.square() * n);
  stats.slice(0, 2 * channels + 1, 3 * channels + 1).copy_(var.to(kStatsType) * n);
  return stats;
}

GlobalStats global_stats(const torch::Tensor& stats, int64_t channels, double eps) {
  GlobalStats g;
  g.count = stats.slice(0, 0, 1);
  g.mean = stats.slice(0, 1, channels + 1) / g.count;
  const auto between = stats.slice(0, channels + 1, 2 * channels + 1) - g.mean.square() * g.count;
  const auto m2 = (stats.slice(0, 2 * channels + 1, 3 * channels + 1) + between).clamp_min(0);
  g.var = m2 / g.count;
  g.invstd = (g.var + eps).rsqrt();
  return g;
}

// Batch norm over the global batch. Inputs: input [N, C, ...], weight/bias [C] or absent,
// running_mean/running_var [C] (updated in place) or absent, eps, the running-average factor,
// the all-reduce (empty: world of 1).
//
// The elementwise work is done by aten's own batch norm kernels, fed the global statistics, so a
// world of 1 reproduces torch::nn::BatchNorm2d bit for bit (see the header on why that matters):
//   forward  = aten's inference kernel with running_mean = mean, running_var = 1, eps = 0 and
//              weight = invstd * w: its per-channel alpha = invstd * w and beta = b - mean * alpha
//              are exactly the ones its training path forms (CPU: y = x * alpha + beta; CUDA:
//              y = (x - mean) * alpha + b);
//   backward = aten's training backward on the local batch (centred: (x - mean) * k, never
//              a * x - c), plus the exact per-channel difference between the global and the local
//              projection, which is zero in a world of 1.
class SyncBatchNormFunction : public torch::autograd::Function<SyncBatchNormFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input,
                               const OptionalTensor& weight_opt, const OptionalTensor& bias_opt,
                               const OptionalTensor& running_mean_opt,
                               const OptionalTensor& running_var_opt, double eps, double momentum,
                               const AllReduceSum& allreduce) {
    const torch::Tensor weight = weight_opt.value_or(torch::Tensor());
    const torch::Tensor bias = bias_opt.value_or(torch::Tensor());
    const torch::Tensor running_mean = running_mean_opt.value_or(torch::Tensor());
    const torch::Tensor running_var = running_var_opt.value_or(torch::Tensor());
    const int64_t channels = input.size(1);
    const int64_t local_count = channels > 0 ? input.numel() / channels : 0;
    const torch::Tensor x = input.to(compute_type(input));  // no copy unless 16-bit

    torch::Tensor stats = pack_local_stats(x, channels, local_count);
    if (allreduce) allreduce(stats);

    // N > local count whenever this rank holds 2 or more values per channel, so only a rank with
    // at most one reads N on the host; if N <= 1 every rank holds at most one, so every rank
    // reads and throws alike (no rank is left waiting in a collective).
    if (local_count <= 1) {
      const double count = stats[0].item<double>();
      TORCH_CHECK(count > 1,
                  "SyncBatchNorm2d: expected more than 1 value per channel when training, got ",
                  count, " over all ranks");
    }
    const GlobalStats g = global_stats(stats, channels, eps);
    // The statistics as the kernels take them (float32 for float32 input), rounded once.
    const auto mean = g.mean.to(x.scalar_type());
    const auto invstd = g.invstd.to(x.scalar_type());

    if (running_mean.defined()) {
      // Same arithmetic on every rank from the same numbers: identical running statistics.
      torch::NoGradGuard no_grad;
      const auto unbiased = g.var * (g.count / (g.count - 1));
      running_mean.copy_(running_mean.to(kStatsType) * (1 - momentum) + g.mean * momentum);
      running_var.copy_(running_var.to(kStatsType) * (1 - momentum) + unbiased * momentum);
    }

    torch::Tensor out;
    if (local_count == 0) {
      out = torch::empty_like(x);
    } else {
      const auto alpha = weight.defined() ? invstd * weight.to(x.scalar_type()) : invstd;
      out = std::get<0>(at::native_batch_norm(
          x, OptionalTensor(alpha),
          bias.defined() ? OptionalTensor(bias.to(x.scalar_type())) : c10::nullopt,
          OptionalTensor(mean), OptionalTensor(torch::ones_like(mean)), /*training=*/false,
          /*momentum=*/0.0, /*eps=*/0.0));
    }

    ctx->save_for_backward({input, weight, mean, invstd, g.count});
    ctx->saved_data[kAllReduceKey] =
        at::IValue::make_capsule(c10::make_intrusive<AllReduceHolder>(allreduce));
    return out.to(input.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& input = saved[0];
    const torch::Tensor& weight = saved[1];
    const torch::Tensor& mean = saved[2];    // [C] compute dtype, global
    const torch::Tensor& invstd = saved[3];  // [C] compute dtype, global
    const torch::Tensor& count = saved[4];   // [1] float64, global N
    const auto holder = c10::static_intrusive_pointer_cast<AllReduceHolder>(
        ctx->saved_data[kAllReduceKey].toCapsule());

    const int64_t channels = input.size(1);
    const int64_t local_count = channels > 0 ? input.numel() / channels : 0;
    const auto type = compute_type(input);
    const torch::Tensor x = input.to(type);
    const torch::Tensor dy = grads[0].to(type);
    const torch::Tensor w = weight.defined() ? weight.to(type) : torch::ones_like(invstd);

    // aten's training backward on this rank's batch with the global mean and invstd:
    //   local_dx = (dy - sum(dy) / n - (x - mean) * invstd^2 * sum(dy * (x - mean)) / n) * invstd *
    //   w, local_gw = sum(dy * (x - mean)) * invstd,  local_gb = sum(dy)   (sums over this rank, n
    //   its
    // count). An empty local batch has none of these (the kernel would divide by 0).
    torch::Tensor local_dx, local_gw, local_gb;
    if (local_count > 0) {
      std::tie(local_dx, local_gw, local_gb) = at::native_batch_norm_backward(
          dy, x, w, c10::nullopt, c10::nullopt, OptionalTensor(mean), OptionalTensor(invstd),
          /*train=*/true, /*eps=*/0.0, {ctx->needs_input_grad(0), true, true});
    } else {
      local_gw = torch::zeros_like(invstd);
      local_gb = torch::zeros_like(invstd);
    }
    // [sum(dy) | sum(dy * (x - mean)) * invstd], this rank's, then summed over all ranks.
    const torch::Tensor local_sums = torch::cat({local_gb, local_gw}).to(kStatsType);
    torch::Tensor sums = local_sums.clone();

    // This rank's share of the parameter gradients (as in PyTorch; GradSync sums them).
    torch::Tensor grad_weight, grad_bias;
    if (weight.defined() && ctx->needs_input_grad(1))
      grad_weight = local_gw.to(weight.scalar_type());
    if (weight.defined() && ctx->needs_input_grad(2)) grad_bias = local_gb.to(weight.scalar_type());

    // Issued whether or not the input needs a gradient, so the collective order never depends on
    // requires_grad flags.
    if (holder->fn) holder->fn(sums);

    torch::Tensor grad_input;
    if (ctx->needs_input_grad(0)) {
      if (local_count == 0) {
        grad_input = torch::empty_like(x);
      } else if (!holder->fn) {
        grad_input = local_dx;  // no other rank: the local sums are the global ones
      } else {
        // dx - local_dx = (x - mean) * c1 + c0 with, per channel, in float64 from the packed sums
        // (second half: sum(dy * (x - mean)) * invstd),
        //   c0 = (sum_l(dy) / n - sum(dy) / N) * invstd * w,
        //   c1 = (packed_l / n - packed / N) * invstd^2 * w.
        // In a world of 1 both are exactly 0 (same numbers, same operations), so dx = local_dx.
        const double n = static_cast<double>(local_count);
        const auto invstd64 = invstd.to(kStatsType);
        const auto scale = invstd64 * w.to(kStatsType);
        const auto c0 =
            (local_sums.slice(0, 0, channels) / n - sums.slice(0, 0, channels) / count) * scale;
        const auto c1 = (local_sums.slice(0, channels, 2 * channels) / n -
                         sums.slice(0, channels, 2 * channels) / count) *
                        invstd64 * scale;
        auto correction = torch::sub(x, per_channel(mean, x)).mul_(per_channel(c1, x));
        correction.add_(per_channel(c0, x));
        grad_input = local_dx.add_(correction);
      }
      grad_input = grad_input.to(input.scalar_type());
    }
    // One gradient per forward argument: input, weight, bias, running_mean, running_var, eps,
    // momentum, allreduce.
    return {grad_input,      grad_weight,     grad_bias,       torch::Tensor(),
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

SyncBatchNorm2dImpl::SyncBatchNorm2dImpl(const torch::nn::BatchNormOptions& options,
                                         AllReduceSum allreduce)
    : options(options), allreduce_(std::move(allreduce)) {
  SyncBatchNorm2dImpl::reset();  // registers parameters and buffers (no virtual dispatch here)
}

void SyncBatchNorm2dImpl::reset() {
  // Same names, shapes, dtypes and initial values as torch::nn::BatchNorm2d.
  const int64_t c = options.num_features();
  if (options.affine()) {
    weight = register_parameter("weight", torch::empty({c}));
    bias = register_parameter("bias", torch::empty({c}));
  } else {
    weight = register_parameter("weight", torch::Tensor(), /*requires_grad=*/false);
    bias = register_parameter("bias", torch::Tensor(), /*requires_grad=*/false);
  }
  if (options.track_running_stats()) {
    running_mean = register_buffer("running_mean", torch::zeros({c}));
    running_var = register_buffer("running_var", torch::ones({c}));
    num_batches_tracked = register_buffer("num_batches_tracked", torch::tensor(0, torch::kLong));
  } else {
    running_mean = register_buffer("running_mean", torch::Tensor());
    running_var = register_buffer("running_var", torch::Tensor());
    num_batches_tracked = register_buffer("num_batches_tracked", torch::Tensor());
  }
  reset_parameters();
}

void SyncBatchNorm2dImpl::reset_running_stats() {
  if (!options.track_running_stats()) return;
  torch::NoGradGuard no_grad;
  running_mean.zero_();
  running_var.fill_(1);
  num_batches_tracked.zero_();
}

void SyncBatchNorm2dImpl::reset_parameters() {
  reset_running_stats();
  if (!options.affine()) return;
  torch::nn::init::ones_(weight);
  torch::nn::init::zeros_(bias);
}

void SyncBatchNorm2dImpl::pretty_print(std::ostream& stream) const {
  stream << "fer::SyncBatchNorm2d(" << options.num_features() << ", eps=" << options.eps()
         << ", momentum=";
  if (options.momentum()) {
    stream << *options.momentum();
  } else {
    stream << "None";
  }
  stream << ", affine=" << std::boolalpha << options.affine()
         << ", track_running_stats=" << options.track_running_stats()
         << ", synced=" << has_allreduce() << ")";
}

torch::Tensor SyncBatchNorm2dImpl::forward(const torch::Tensor& input) {
  TORCH_CHECK(input.dim() == 4, "SyncBatchNorm2d: expected 4D input (got ", input.dim(),
              "D input)");
  if (!is_training()) {
    // Eval: running statistics, or (without them) this rank's batch alone, as PyTorch does.
    return torch::batch_norm(input, weight, bias, running_mean, running_var,
                             /*training=*/!options.track_running_stats(), /*momentum=*/0.0,
                             options.eps(), at::globalContext().userEnabledCuDNN());
  }
  // Running-average factor as in torch::nn::BatchNorm2d (no momentum: cumulative average).
  double factor = options.momentum().value_or(0.0);
  if (options.track_running_stats()) {
    num_batches_tracked += 1;
    if (!options.momentum()) factor = 1.0 / num_batches_tracked.item<double>();
  }
  return SyncBatchNormFunction::apply(input, optional(weight), optional(bias),
                                      optional(running_mean), optional(running_var), options.eps(),
                                      factor, allreduce_);
}

}  // namespace fer
