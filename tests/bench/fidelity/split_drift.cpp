// split_drift: where do N ranks x B and 1 process x N*B part ways? (issue 15, item 1)
//
// Runs, in ONE process and in lockstep, the trainer's step (forward, mean cross-entropy,
// backward, GradSync's average, clip_grad_value, Adam with the one-cycle lr and beta1, the
// recipe's per-global-sample dropout) twice on the same global batches of a packed data set:
//   ref:  one model, the whole global batch (BatchNorm2d, as fer-dist-train at world 1);
//   dist: N replicas on N threads, one slice each, SyncBatchNorm2d joined by an in-process
//         all-reduce (sum in rank order), gradients pre-scaled by 1/N and summed as GradSync.
// After every step it prints the loss of both, and where they differ: max-pool argmax flips and
// ReLU sign flips per layer, the global max-pool's argmax flips, and per parameter tensor the
// relative difference of the averaged gradients, of the Adam updates and of the weights.
//
// Usage: split_drift <packed data dir> [--n N] [--steps S] [--dropout P] [--const-lr]
//                    [--perturb E] [--batch B] [--width W] [--no-augment] [--top K | --all]
//   defaults: N 2, 10 steps, global batch 24, dropout 0.2, width 0.125 (train_real_images_test's
//   equivalence run); the rest of the recipe is configs/fer2013_resnet9.yaml's, one thread.
//   --channels-last: model.channels_last (NHWC weights and activations), as the trainer does.
//   --fp64: both runs in float64 (LibTorch's Adam): the same steps with rounding at 1e-16.
//   --top K / --all: how many parameter tensors to list per step (by update difference).
//   --perturb E: no split (N = 1 on both sides); instead the dist copy starts with every weight
//                multiplied by (1 + E * u), u uniform in [-1, 1] - the growth of a generic
//                perturbation of that size, for comparison with the split's.
// Build: tests/bench/fidelity/CMakeLists.txt (target split_drift); split_drift.sh runs the
// diagnosis of issue 15 item 1 with it.
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/random.h"
#include "data/manifest.h"
#include "model/resnet9.h"
#include "model/sync_batchnorm.h"
#include "train/one_cycle.h"
#include "train/optimizer.h"
#include "train/train_batches.h"
#include "train/train_config.h"

namespace {

using torch::Tensor;

// Sum over N threads (rank order), blocking: SyncBatchNorm2d's all-reduce in one process.
class Rendezvous {
 public:
  explicit Rendezvous(int n) : n_(n), slots_(n) {}
  void sum(int rank, Tensor& t) {
    std::unique_lock<std::mutex> lock(mu_);
    slots_[rank] = t;
    const long gen = generation_;
    if (++arrived_ == n_) {
      Tensor s = slots_[0].clone();
      for (int r = 1; r < n_; ++r) s.add_(slots_[r]);
      result_ = s;
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != gen; });
    }
    t.copy_(result_);  // under the lock: result_ is replaced only once all N are past this
  }

 private:
  int n_;
  std::vector<Tensor> slots_;
  Tensor result_;
  int arrived_ = 0;
  long generation_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
};

// What one forward saw, for comparing the two runs.
struct Trace {
  std::vector<std::string> names;
  std::vector<Tensor> positive;  // per block: pre-ReLU > 0 (after BN)
  std::vector<Tensor> pre_relu;  // per block: BN output
  std::vector<Tensor> pool_idx;  // per pooled block: argmax indices of the 2x2 max-pool
  std::vector<Tensor> pool_in;   // per pooled block: the max-pool's input (after ReLU)
  Tensor gmax_idx;               // global max-pool argmax [N, C]
  Tensor gmax_ties;              // [N, C] number of positions equal to the max
};

Tensor block(torch::nn::Module& model, const std::string& name, Tensor x, bool pool, Trace* tr) {
  auto mods = model.named_modules();
  x = mods[name + ".0"]->as<torch::nn::Conv2dImpl>()->forward(x);
  auto bn = mods[name + ".1"];
  if (auto* b = bn->as<torch::nn::BatchNorm2dImpl>()) {
    x = b->forward(x);
  } else {
    x = bn->as<fer::SyncBatchNorm2dImpl>()->forward(x);
  }
  tr->names.push_back(name);
  tr->pre_relu.push_back(x.detach().clone());
  tr->positive.push_back(x.detach() > 0);
  x.relu_();
  if (!pool) return x;
  auto [out, idx] = torch::max_pool2d_with_indices(x, {2, 2});
  tr->pool_idx.push_back(idx);
  tr->pool_in.push_back(x.detach().clone());
  return out;
}

// ResNet9Impl::forward, op for op, recording the discrete choices.
Tensor traced_forward(fer::ResNet9& model, Tensor x, const Tensor& keep, double dropout,
                      Trace* tr) {
  auto& m = *model;
  if (model->options().channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  x = block(m, "conv2", block(m, "conv1", x, false, tr), true, tr);
  x = block(m, "res1.1", block(m, "res1.0", x, false, tr), false, tr) + x;
  x = block(m, "conv4", block(m, "conv3", x, true, tr), true, tr);
  x = block(m, "res2.1", block(m, "res2.0", x, false, tr), false, tr) + x;
  const auto flat = x.detach().flatten(2);
  tr->gmax_idx = flat.argmax(2);
  x = torch::amax(x, {2, 3});
  tr->gmax_ties = flat.eq(x.detach().unsqueeze(2)).sum(2);
  if (keep.defined() && dropout > 0) x = x * keep * (1.0 / (1.0 - dropout));
  return m.named_modules()["classifier"]->as<torch::nn::LinearImpl>()->forward(x);
}

void copy_state(fer::ResNet9& from, fer::ResNet9& to) {
  torch::NoGradGuard g;
  auto a = from->parameters(), b = to->parameters();
  for (size_t i = 0; i < a.size(); ++i) b[i].copy_(a[i]);
  auto c = from->buffers(), d = to->buffers();
  for (size_t i = 0; i < c.size(); ++i) d[i].copy_(c[i]);
}

double rel(const Tensor& a, const Tensor& b) {
  const double den = b.norm().item<double>();
  const double num = (a - b).norm().item<double>();
  return den > 0 ? num / den : (num > 0 ? INFINITY : 0.0);
}

struct Args {
  std::string data;
  int n = 2, steps = 10, batch = 24, top = 4;
  double dropout = 0.2, width = 0.125, perturb = 0;
  bool const_lr = false, augment = true, per_tensor_all = false, fp64 = false,
       channels_last = false;
};

}  // namespace

// The command line into `a`; 0, or 2 after a usage message.
int parse_args(int argc, char** argv, Args* out) {
  Args& a = *out;
  if (argc < 2) {
    std::fprintf(stderr, "usage: split_drift <packed data> [--n N] [--steps S] ...\n");
    return 2;
  }
  a.data = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&] { return std::string(argv[++i]); };
    if (k == "--n") a.n = std::stoi(next());
    else if (k == "--steps") a.steps = std::stoi(next());
    else if (k == "--batch") a.batch = std::stoi(next());
    else if (k == "--dropout") a.dropout = std::stod(next());
    else if (k == "--width") a.width = std::stod(next());
    else if (k == "--perturb") a.perturb = std::stod(next());
    else if (k == "--top") a.top = std::stoi(next());
    else if (k == "--const-lr") a.const_lr = true;
    else if (k == "--no-augment") a.augment = false;
    else if (k == "--all") a.per_tensor_all = true;
    else if (k == "--fp64") a.fp64 = true;
    else if (k == "--channels-last") a.channels_last = true;
    else { std::fprintf(stderr, "unknown option %s\n", k.c_str()); return 2; }
  }
  if (a.perturb > 0) a.n = 1;
  return 0;
}

// The recipe (configs/fer2013_resnet9.yaml) with the tool's width, dropout, batch, augmentation.
fer::TrainConfig recipe_config(const Args& a) {
  const std::string recipe = std::string(FER_SOURCE_DIR) + "/configs/fer2013_resnet9.yaml";
  return fer::load_train_config(
      recipe, {"model.width=" + std::to_string(a.width), "model.dropout=" + std::to_string(a.dropout),
               "train.batch_size=" + std::to_string(a.batch), "train.epochs=1",
               std::string("data.augment=") + (a.augment ? "true" : "false"),
               // LibTorch's Adam for float64 (FusedAdam's flat buffers are float32)
               std::string("optim.fused=") + (a.fp64 ? "false" : "true")});
}

// The trainer's memory loader with the recipe's augmentation (batch size set by the caller).
fer::LoaderOptions loader_options(const fer::TrainConfig& cfg) {
  fer::LoaderOptions lo;
  lo.mode = "memory";
  lo.workers = 1;
  lo.augment = cfg.data.augment;
  lo.augment_options.pad = cfg.data.pad;
  lo.augment_options.crop = cfg.data.pad > 0;
  lo.augment_options.flip = cfg.data.flip;
  lo.seed = static_cast<std::uint64_t>(cfg.train.seed);
  return lo;
}

// The next global batch and the N ranks' parts of it (copies; float64 with --fp64). False at the
// end of the epoch. *same: the ranks' parts concatenated are the global batch.
bool next_batches(fer::TrainBatches& global,
                  std::vector<std::unique_ptr<fer::TrainBatches>>& local, const Args& a,
                  Tensor* gx, Tensor* gy, std::vector<Tensor>* lx, std::vector<Tensor>* ly,
                  bool* same) {
  if (!global.next(gx, gy)) return false;
  *gx = gx->clone();
  *gy = gy->clone();
  lx->assign(a.n, Tensor());
  ly->assign(a.n, Tensor());
  for (int r = 0; r < a.n; ++r) {
    Tensor x, y;
    local[r]->next(&x, &y);
    (*lx)[r] = x.clone();
    (*ly)[r] = y.clone();
  }
  *same = torch::equal(torch::cat(*lx), *gx) && torch::equal(torch::cat(*ly), *gy);
  if (a.fp64) {
    *gx = gx->to(torch::kDouble);
    for (auto& x : *lx) x = x.to(torch::kDouble);
  }
  return true;
}

// No split at all: every weight of `model` times (1 + size * u), u uniform in [-1, 1) (seeded).
void perturb(fer::ResNet9& model, double size) {
  torch::NoGradGuard g;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(12345);
  for (auto& p : model->parameters()) p.mul_(1 + size * (torch::rand(p.sizes(), gen) * 2 - 1));
}

// The trainer's per-global-sample dropout mask of `step` (undefined without dropout).
Tensor dropout_keep(const fer::TrainConfig& cfg, const Args& a, int step, int features) {
  if (!(a.dropout > 0)) return {};
  auto gen = at::make_generator<at::CPUGeneratorImpl>(fer::derive_seed(
      {static_cast<std::uint64_t>(cfg.train.seed), 0xd50a, static_cast<std::uint64_t>(step)}));
  Tensor keep = torch::empty({a.batch, features});
  keep.bernoulli_(1.0 - a.dropout, gen);
  return a.fp64 ? keep.to(torch::kDouble) : keep;
}

// The N ranks' forward and backward (one thread each, SyncBN joined in-process), then
// GradSync's average (pre-scaled by 1/N, summed in rank order) as rank 0's gradients. Returns the
// ranks' mean loss; their traces in *tr.
double distributed_step(std::vector<fer::ResNet9>& reps, const std::vector<Tensor>& lx,
                        const std::vector<Tensor>& ly, const Tensor& keep, const Args& a,
                        std::vector<Trace>* tr) {
  tr->assign(a.n, Trace());
  std::vector<double> lossr(a.n);
  for (auto& m : reps)
    for (auto& p : m->parameters()) p.mutable_grad().reset();
  auto run_rank = [&](int r) {
    at::set_num_threads(1);
    const auto k = keep.defined() ? keep.narrow(0, r * (a.batch / a.n), a.batch / a.n) : Tensor();
    auto l = torch::nn::functional::cross_entropy(
        traced_forward(reps[r], lx[r], k, a.dropout, &(*tr)[r]), ly[r]);
    lossr[r] = l.item<double>();
    l.backward();
  };
  {
    std::vector<std::thread> th;
    for (int r = 1; r < a.n; ++r) th.emplace_back(run_rank, r);
    run_rank(0);
    for (auto& t : th) t.join();
  }
  double ldist = 0;
  for (double v : lossr) ldist += v;
  auto p0 = reps[0]->parameters();
  torch::NoGradGuard g;
  for (size_t i = 0; i < p0.size(); ++i) {
    Tensor s = reps[0]->parameters()[i].grad() * (1.0 / a.n);
    for (int r = 1; r < a.n; ++r) s = s + reps[r]->parameters()[i].grad() * (1.0 / a.n);
    p0[i].mutable_grad() = s;
  }
  return ldist / a.n;
}

// The step's discrete choices (ReLU signs, max-pool winners) and BatchNorm outputs of the N
// ranks against the reference: the ranks' traces concatenated along the batch.
void report_kinks(const Trace& tref, const std::vector<Trace>& tr) {
  // discrete choices: concatenate the ranks' traces along the batch
  std::string flips = "  relu flips:";
  for (size_t b = 0; b < tref.positive.size(); ++b) {
    std::vector<Tensor> parts;
    for (auto& t : tr) parts.push_back(t.positive[b]);
    const auto d = torch::cat(parts).ne(tref.positive[b]).sum().item<long>();
    flips += " " + tref.names[b] + "=" + std::to_string(d);
  }
  std::printf("%s\n", flips.c_str());
  flips = "  2x2 max-pool argmax flips:";
  for (size_t b = 0; b < tref.pool_idx.size(); ++b) {
    std::vector<Tensor> parts;
    for (auto& t : tr) parts.push_back(t.pool_idx[b]);
    const auto dist_idx = torch::cat(parts);
    const auto flipped = dist_idx.ne(tref.pool_idx[b]);
    const auto d = flipped.sum().item<long>();
    flips += " " + std::to_string(d) + "/" + std::to_string(tref.pool_idx[b].numel());
    if (d > 0 && d <= 20) {
      // in the ref's own values: the gap between its winner and the dist run's winner
      const auto v = tref.pool_in[b].flatten(2);
      const auto win = v.gather(2, tref.pool_idx[b].flatten(2));
      const auto other = v.gather(2, dist_idx.flatten(2));
      const auto gap = ((win - other).abs() / win.abs()).masked_select(flipped.flatten(2));
      char buf[96];
      std::snprintf(buf, sizeof buf, " (ref gap rel max %.1e, ref value %.2e)",
                    gap.max().item<double>(), win.masked_select(flipped.flatten(2)).abs().max().item<double>());
      flips += buf;
    }
  }
  {
    std::vector<Tensor> parts;
    for (auto& t : tr) parts.push_back(t.gmax_idx);
    const auto d = torch::cat(parts).ne(tref.gmax_idx).sum().item<long>();
    flips += "  global max-pool argmax flips: " + std::to_string(d) + "/" +
             std::to_string(tref.gmax_idx.numel()) +
             " (ties in ref: " + std::to_string(tref.gmax_ties.gt(1).sum().item<long>()) + ")";
  }
  std::printf("%s\n", flips.c_str());
  // BN output difference per block
  std::string bnd = "  BN output rel diff:";
  for (size_t b = 0; b < tref.pre_relu.size(); ++b) {
    std::vector<Tensor> parts;
    for (auto& t : tr) parts.push_back(t.pre_relu[b]);
    char buf[64];
    std::snprintf(buf, sizeof buf, " %.1e", rel(torch::cat(parts), tref.pre_relu[b]));
    bnd += buf;
  }
  std::printf("%s\n", bnd.c_str());
}

// Per parameter tensor: the gradient, update and weight gaps between the two runs after the step.
void report_tensors(const std::vector<std::string>& names, const std::vector<Tensor>& pr,
                    const std::vector<Tensor>& p0, const std::vector<Tensor>& before_ref,
                    const std::vector<Tensor>& before_dist, const std::vector<Tensor>& gref,
                    const std::vector<Tensor>& gdist, const Args& a) {
  // per tensor
  struct Row {
    std::string name;
    double g, u, w;
    long sign_flips, n, tiny;
  };
  std::vector<Row> rows;
  for (size_t i = 0; i < pr.size(); ++i) {
    const auto ur = pr[i].detach() - before_ref[i];
    const auto ud = p0[i].detach() - before_dist[i];
    Row row{names[i], rel(gdist[i], gref[i]), rel(ud, ur), rel(p0[i].detach(), pr[i].detach()),
            gdist[i].sign().ne(gref[i].sign()).sum().item<long>(), gref[i].numel(),
            gref[i].abs().lt(1e-8).sum().item<long>()};
    rows.push_back(row);
  }
  std::vector<Row> sorted = rows;
  std::sort(sorted.begin(), sorted.end(), [](const Row& x, const Row& y) { return x.u > y.u; });
  const size_t show = a.per_tensor_all ? sorted.size() : std::min<size_t>(a.top, sorted.size());
  double wmax = 0;
  for (auto& r : rows) wmax = std::max(wmax, r.w);
  std::printf("  max weight rel diff %.2e; tensors by update rel diff:\n", wmax);
  for (size_t i = 0; i < show; ++i) {
    const Row& r = sorted[i];
    std::printf("    %-22s grad %.1e  update %.1e  weight %.1e  grad sign flips %ld/%ld "
                "(|g|<1e-8: %ld)\n",
                r.name.c_str(), r.g, r.u, r.w, r.sign_flips, r.n, r.tiny);
  }
}

int main(int argc, char** argv) {
  Args a;
  if (const int rc = parse_args(argc, argv, &a); rc != 0) return rc;
  at::set_num_threads(1);

  const fer::TrainConfig cfg = recipe_config(a);
  const fer::Manifest manifest = fer::load_manifest(a.data);
  fer::LoaderOptions lo = loader_options(cfg);
  const torch::Device cpu(torch::kCPU);
  lo.batch_per_rank = a.batch;
  fer::TrainBatches global(a.data, manifest, 1, 0, lo, cpu);
  std::vector<std::unique_ptr<fer::TrainBatches>> local;
  lo.batch_per_rank = a.batch / a.n;
  for (int r = 0; r < a.n; ++r)
    local.push_back(std::make_unique<fer::TrainBatches>(a.data, manifest, a.n, r, lo, cpu));
  const std::int64_t total_steps = global.steps_per_epoch();
  fer::OneCycleSchedule schedule(
      fer::schedule_options(cfg.schedule, cfg.optim.betas[0], total_steps));

  torch::manual_seed(fer::derive_seed({static_cast<std::uint64_t>(cfg.train.seed), 0x1417}));
  fer::ResNet9Options mo;
  mo.in_channels = manifest.channels;
  mo.num_classes = static_cast<int>(manifest.classes.size());
  mo.width = cfg.model.width;
  mo.dropout = cfg.model.dropout;
  mo.channels_last = a.channels_last;
  fer::ResNet9 ref(mo);
  mo.sync_bn = a.n > 1;
  std::vector<fer::ResNet9> reps;
  Rendezvous rv(a.n);
  for (int r = 0; r < a.n; ++r) {
    reps.emplace_back(mo);
    copy_state(ref, reps.back());
    if (a.n > 1) reps.back()->set_allreduce([&rv, r](Tensor& t) { rv.sum(r, t); });
  }
  if (a.fp64) {
    ref->to(torch::kDouble);
    for (auto& m : reps) m->to(torch::kDouble);
  }
  if (a.perturb > 0) perturb(reps[0], a.perturb);
  fer::TrainOptimizer opt_ref(cfg.optim, cfg.schedule.max_lr, ref);
  fer::TrainOptimizer opt_dist(cfg.optim, cfg.schedule.max_lr, reps[0]);
  std::vector<std::string> names;
  for (const auto& kv : ref->named_parameters()) names.push_back(kv.key());
  ref->train();
  for (auto& m : reps) m->train();
  global.start_epoch(0, 0);
  for (auto& l : local) l->start_epoch(0, 0);
  std::printf("split_drift: N=%d global batch %d, dropout %.2f, width %.3f, augment %d, lr %s, "
              "perturb %.1e, %s%s, %lld steps per epoch\n",
              a.n, a.batch, a.dropout, a.width, a.augment, a.const_lr ? "constant" : "one-cycle",
              a.perturb, a.fp64 ? "float64" : "float32", a.channels_last ? ", NHWC" : "",
              static_cast<long long>(total_steps));

  for (int step = 0; step < a.steps; ++step) {
    Tensor gx, gy;
    std::vector<Tensor> lx, ly;
    bool same_batch = false;
    if (!next_batches(global, local, a, &gx, &gy, &lx, &ly, &same_batch)) break;
    const Tensor keep = dropout_keep(cfg, a, step, ref->feature_size());
    const double lr = a.const_lr ? schedule.lr(0) : schedule.lr(step);
    const double beta1 = schedule.momentum(step);
    opt_ref.set_lr_and_beta1(lr, beta1);
    opt_dist.set_lr_and_beta1(lr, beta1);

    // ref
    for (auto& p : ref->parameters()) p.mutable_grad().reset();
    Trace tref;
    auto lref = torch::nn::functional::cross_entropy(
        traced_forward(ref, gx, keep, a.dropout, &tref), gy);
    lref.backward();
    // dist
    std::vector<Trace> tr;
    const double ldist = distributed_step(reps, lx, ly, keep, a, &tr);
    auto p0 = reps[0]->parameters();
    opt_ref.clip(cfg.optim.grad_clip_value, cfg.optim.grad_clip_norm);
    opt_dist.clip(cfg.optim.grad_clip_value, cfg.optim.grad_clip_norm);
    auto pr = ref->parameters();
    std::vector<Tensor> before_ref, before_dist, gref, gdist;
    for (size_t i = 0; i < pr.size(); ++i) {
      before_ref.push_back(pr[i].detach().clone());
      before_dist.push_back(p0[i].detach().clone());
      gref.push_back(pr[i].grad().clone());
      gdist.push_back(p0[i].grad().clone());
    }
    opt_ref.step();
    opt_dist.step();
    for (int r = 1; r < a.n; ++r) copy_state(reps[0], reps[r]);

    // ---- report
    const double lr_rel = std::abs(ldist - lref.item<double>()) / lref.item<double>();
    std::printf("\nstep %d  lr %.3e beta1 %.4f  loss ref %.9f dist %.9f  rel %.2e  %s\n", step + 1,
                lr, beta1, lref.item<double>(), ldist, lr_rel,
                same_batch ? "" : "(BATCHES DIFFER)");
    report_kinks(tref, tr);
    report_tensors(names, pr, p0, before_ref, before_dist, gref, gdist, a);
  }
  return 0;
}
