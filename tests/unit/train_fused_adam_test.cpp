// FusedAdam against LibTorch 1.13's torch::optim::Adam / AdamW: the same ResNet9 trained side by
// side on a fixed batch, lr and beta1 changed before every step as the one-cycle schedule does,
// gradients clipped by value or by global norm, must stay bit-identical (torch::equal) after every
// step. Checkpoints written through FusedAdam::to_libtorch() load into LibTorch's Adam and the
// other way round, and the two continue bit-identically. Plus the layout contract GradSync relies
// on (flat_gradients(), last_copied()).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/errors.h"
#include "dist/grad_sync.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/fused_adam.h"
#include "train/optimizer.h"

namespace fer {
namespace {

constexpr int kSteps = 50;          // steps compared per case
constexpr int kBatch = 4;           // images per step
constexpr int kSide = 48;           // FER2013 image side
constexpr double kClipValue = 0.1;  // the recipe's grad_clip_value
constexpr double kClipNorm = 0.25;  // clips the first steps of this toy run, not the later ones
constexpr double kBeta2 = 0.999;
constexpr double kEps = 1e-8;

ResNet9Options model_options() {
  ResNet9Options o;
  o.width = 0.125;
  return o;
}

// A fixed batch and dropout mask (forward(x, keep) draws nothing, so both models see the same).
struct Batch {
  torch::Tensor x, y, keep;
};

Batch fixed_batch(const ResNet9& model) {
  torch::manual_seed(123);
  Batch b;
  b.x = torch::randn({kBatch, 1, kSide, kSide});
  b.y = torch::randint(0, model->options().num_classes, {kBatch}, torch::kInt64);
  b.keep = torch::bernoulli(torch::full({kBatch, model->feature_size()}, 0.8));
  return b;
}

// Two models with the same weights and buffers (the second built from another seed, then copied).
ResNet9 make_model(std::uint64_t seed) {
  torch::manual_seed(seed);
  return ResNet9(model_options());
}

void copy_weights(ResNet9& from, ResNet9& to) {
  torch::NoGradGuard no_grad;
  const auto fp = from->parameters(), tp = to->parameters();
  for (std::size_t i = 0; i < tp.size(); ++i) tp[i].copy_(fp[i]);
  const auto fb = from->buffers(), tb = to->buffers();
  for (std::size_t i = 0; i < tb.size(); ++i) tb[i].copy_(fb[i]);
}

// lr and beta1 differ at every step (as under the one-cycle schedule), never repeating.
double lr_at(int step) { return 2e-3 * (1.0 + 0.9 * std::sin(0.37 * step)); }
double beta1_at(int step) { return 0.9 + 0.05 * std::cos(0.23 * step); }

void forward_backward(ResNet9& model, const Batch& b) {
  model->train();
  torch::nn::functional::cross_entropy(model->forward(b.x, b.keep), b.y).backward();
}

std::unique_ptr<torch::optim::Optimizer> make_libtorch(OptimizerKind kind, ResNet9& model,
                                                       double weight_decay) {
  const auto betas = std::make_tuple(0.9, kBeta2);
  if (kind == OptimizerKind::kAdamW) {
    return std::make_unique<torch::optim::AdamW>(
        model->parameters(),
        torch::optim::AdamWOptions(1e-3).betas(betas).eps(kEps).weight_decay(weight_decay));
  }
  return std::make_unique<torch::optim::Adam>(
      model->parameters(),
      torch::optim::AdamOptions(1e-3).betas(betas).eps(kEps).weight_decay(weight_decay));
}

FusedAdamOptions fused_options(OptimizerKind kind, double weight_decay) {
  FusedAdamOptions o;
  o.kind = kind;
  o.beta2 = kBeta2;
  o.eps = kEps;
  o.weight_decay = weight_decay;
  return o;
}

// "" when every parameter and buffer of the two models is bit-identical, else what differs.
std::string difference(ResNet9& a, ResNet9& b) {
  const auto pa = a->named_parameters(), pb = b->named_parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) {
    if (!torch::equal(pa[i].value(), pb[i].value())) {
      const auto diff = (pa[i].value() - pb[i].value()).abs();
      std::ostringstream out;
      out << "parameter " << pa[i].key() << ": " << diff.ne(0).sum().item<std::int64_t>() << " of "
          << diff.numel() << " elements differ, max |diff| " << diff.max().item<double>();
      return out.str();
    }
  }
  const auto ba = a->named_buffers(), bb = b->named_buffers();
  for (std::size_t i = 0; i < ba.size(); ++i) {
    if (!torch::equal(ba[i].value(), bb[i].value())) return "buffer " + ba[i].key();
  }
  return "";
}

enum class Clip { kValue, kNorm };

// One training step of each side at global step `step`: LibTorch on `lib_model`, FusedAdam on
// `fused_model`. Returns the total gradient norms both sides computed (kNorm; else zeros).
struct Norms {
  double lib = 0.0, fused = 0.0;
};

Norms step_both(int step, OptimizerKind kind, Clip clip, const Batch& batch, ResNet9& lib_model,
                torch::optim::Optimizer& lib, ResNet9& fused_model, FusedAdam& fused) {
  set_lr_and_beta1(lib, kind, lr_at(step), beta1_at(step));
  fused.set_lr_and_beta1(lr_at(step), beta1_at(step));
  lib.zero_grad();
  fused.zero_grad();
  forward_backward(lib_model, batch);
  forward_backward(fused_model, batch);
  Norms norms;
  if (clip == Clip::kValue) {
    torch::nn::utils::clip_grad_value_(lib_model->parameters(), kClipValue);
    fused.clip_grad_value(kClipValue);
  } else {
    norms.lib = torch::nn::utils::clip_grad_norm_(lib_model->parameters(), kClipNorm);
    norms.fused = fused.clip_grad_norm(kClipNorm).item<double>();
  }
  lib.step();
  fused.step();
  return norms;
}

struct Case {
  OptimizerKind kind;
  double weight_decay;
  Clip clip;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  std::string name = c.kind == OptimizerKind::kAdamW ? "AdamW" : "Adam";
  name += c.weight_decay < 1e-3 ? "_wd1e4" : "_wd005";
  name += c.clip == Clip::kValue ? "_ClipValue" : "_ClipNorm";
  return name;
}

class FusedAdamMatchesLibTorch : public ::testing::TestWithParam<Case> {
 protected:
  // Two threads: the flat buffers' elementwise kernels then split at other elements than the
  // per-parameter ones (vectorised body vs scalar tail), which must not change a single bit.
  void SetUp() override { torch::set_num_threads(2); }
};

TEST_P(FusedAdamMatchesLibTorch, BitIdenticalForFiftyStepsWithLrAndBeta1ChangingEveryStep) {
  const Case c = GetParam();
  ResNet9 lib_model = make_model(1), fused_model = make_model(2);
  copy_weights(lib_model, fused_model);
  ASSERT_EQ(difference(lib_model, fused_model), "");
  const Batch batch = fixed_batch(lib_model);
  auto lib = make_libtorch(c.kind, lib_model, c.weight_decay);
  FusedAdam fused(fused_model->parameters(), fused_options(c.kind, c.weight_decay));
  int clipped_steps = 0;
  for (int s = 0; s < kSteps; ++s) {
    const Norms norms = step_both(s, c.kind, c.clip, batch, lib_model, *lib, fused_model, fused);
    ASSERT_EQ(norms.lib, norms.fused) << "total gradient norm at step " << s;
    clipped_steps += norms.lib > kClipNorm;
    ASSERT_EQ(difference(lib_model, fused_model), "") << "after step " << s;
  }
  EXPECT_EQ(fused.step_count(), kSteps);
  if (c.clip == Clip::kNorm) {
    // Both sides of the coefficient's clamp to 1.
    EXPECT_GT(clipped_steps, 0) << "the norm clip never engaged";
    EXPECT_LT(clipped_steps, kSteps) << "the norm clip engaged at every step";
  }
}

INSTANTIATE_TEST_SUITE_P(AdamAndAdamW, FusedAdamMatchesLibTorch,
                         ::testing::Values(Case{OptimizerKind::kAdam, 1e-4, Clip::kValue},
                                           Case{OptimizerKind::kAdam, 0.05, Clip::kValue},
                                           Case{OptimizerKind::kAdam, 1e-4, Clip::kNorm},
                                           Case{OptimizerKind::kAdam, 0.05, Clip::kNorm},
                                           Case{OptimizerKind::kAdamW, 1e-4, Clip::kValue},
                                           Case{OptimizerKind::kAdamW, 0.05, Clip::kValue},
                                           Case{OptimizerKind::kAdamW, 1e-4, Clip::kNorm},
                                           Case{OptimizerKind::kAdamW, 0.05, Clip::kNorm}),
                         case_name);

TEST(FusedAdam, SingleThreadAlsoBitIdentical) {
  torch::set_num_threads(1);
  ResNet9 lib_model = make_model(1), fused_model = make_model(2);
  copy_weights(lib_model, fused_model);
  const Batch batch = fixed_batch(lib_model);
  auto lib = make_libtorch(OptimizerKind::kAdam, lib_model, 1e-4);
  FusedAdam fused(fused_model->parameters(), fused_options(OptimizerKind::kAdam, 1e-4));
  for (int s = 0; s < 10; ++s) {
    step_both(s, OptimizerKind::kAdam, Clip::kValue, batch, lib_model, *lib, fused_model, fused);
    ASSERT_EQ(difference(lib_model, fused_model), "") << "after step " << s;
  }
}

// Parameters larger than a CPU slice of step() (FusedAdam::kCpuSliceBytes), odd sizes, one in
// channels_last memory format, random gradients: still bit-identical, Adam and AdamW.
TEST(FusedAdam, SlicedStepOverLargeAndChannelsLastParametersBitIdentical) {
  torch::set_num_threads(2);
  const std::vector<std::vector<std::int64_t>> shapes = {{300007},  {17},     {64, 33, 3, 3},
                                                         {1000003}, {262149}, {3}};
  for (const OptimizerKind kind : {OptimizerKind::kAdam, OptimizerKind::kAdamW}) {
    torch::manual_seed(5);
    std::vector<torch::Tensor> lib_params, fused_params;
    std::int64_t bytes = 0;
    for (const auto& shape : shapes) {
      torch::Tensor t = torch::randn(shape);
      if (shape.size() == 4) t = t.contiguous(torch::MemoryFormat::ChannelsLast);
      lib_params.push_back(t.clone(torch::MemoryFormat::Preserve).requires_grad_());
      fused_params.push_back(t.clone(torch::MemoryFormat::Preserve).requires_grad_());
      bytes += t.numel() * 4;
    }
    ASSERT_GT(bytes, 3 * FusedAdam::kCpuSliceBytes);
    std::unique_ptr<torch::optim::Optimizer> lib;
    if (kind == OptimizerKind::kAdamW) {
      lib = std::make_unique<torch::optim::AdamW>(
          lib_params, torch::optim::AdamWOptions(1e-3).eps(kEps).weight_decay(0.05));
    } else {
      lib = std::make_unique<torch::optim::Adam>(
          lib_params, torch::optim::AdamOptions(1e-3).eps(kEps).weight_decay(0.05));
    }
    FusedAdam fused(fused_params, fused_options(kind, 0.05));
    EXPECT_TRUE(fused_params[2].is_contiguous(torch::MemoryFormat::ChannelsLast));
    EXPECT_TRUE(fused_params[2].grad().is_contiguous(torch::MemoryFormat::ChannelsLast));
    for (int s = 0; s < 5; ++s) {
      set_lr_and_beta1(*lib, kind, lr_at(s), beta1_at(s));
      fused.set_lr_and_beta1(lr_at(s), beta1_at(s));
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        const torch::Tensor g = torch::randn_like(lib_params[i]) * 0.2;
        lib_params[i].mutable_grad() = g.clone(torch::MemoryFormat::Preserve);
        fused_params[i].grad().copy_(g);
      }
      torch::nn::utils::clip_grad_value_(lib_params, kClipValue);
      fused.clip_grad_value(kClipValue);
      lib->step();
      fused.step();
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        ASSERT_TRUE(torch::equal(lib_params[i], fused_params[i]))
            << "parameter " << i << " after step " << s;
      }
    }
  }
}

TEST(FusedAdam, ParametersAndGradientsAreAlignedViewsInReverseRegistrationOrder) {
  ResNet9 model = make_model(1);
  std::vector<torch::Tensor> before;
  for (const auto& p : model->parameters()) before.push_back(p.detach().clone());
  FusedAdam fused(model->parameters(), fused_options(OptimizerKind::kAdam, 0.0));
  const auto params = model->parameters();  // the module's own tensors
  ASSERT_EQ(fused.num_buffers(), 1);        // all float32 on the CPU
  ASSERT_EQ(fused.layout().size(), params.size());
  const auto* base = static_cast<const char*>(fused.flat_params(0).data_ptr());
  const auto* grad_base = static_cast<const char*>(fused.flat_grads(0).data_ptr());
  std::vector<int> expected_members;
  for (int i = static_cast<int>(params.size()) - 1; i >= 0; --i) expected_members.push_back(i);
  EXPECT_EQ(fused.buffer_members(0), expected_members);
  std::int64_t previous_end = 0;
  for (const int i : fused.buffer_members(0)) {
    const FlatSlot& slot = fused.layout()[i];
    EXPECT_EQ(slot.numel, params[i].numel());
    EXPECT_GE(slot.offset, previous_end) << "parameter " << i << " overlaps the previous one";
    EXPECT_EQ(slot.offset * 4 % FusedAdam::kAlignBytes, 0) << "parameter " << i;
    previous_end = slot.offset + slot.numel;
    EXPECT_EQ(params[i].data_ptr(), base + slot.offset * 4) << "parameter " << i;
    ASSERT_TRUE(params[i].grad().defined());
    EXPECT_EQ(params[i].grad().data_ptr(), grad_base + slot.offset * 4) << "parameter " << i;
    EXPECT_TRUE(torch::equal(params[i], before[i])) << "parameter " << i << " changed value";
    EXPECT_TRUE(params[i].requires_grad() && params[i].is_leaf());
  }
  EXPECT_LE(previous_end, fused.flat_params(0).numel());
}

TEST(FusedAdam, GapsBetweenSlotsStayZero) {
  ResNet9 model = make_model(1);
  const Batch batch = fixed_batch(model);
  FusedAdam fused(model->parameters(), fused_options(OptimizerKind::kAdam, 0.05));
  for (int s = 0; s < 3; ++s) {
    fused.zero_grad();
    forward_backward(model, batch);
    fused.clip_grad_norm(kClipNorm);
    fused.step();
  }
  torch::Tensor covered = torch::zeros({fused.flat_params(0).numel()}, torch::kBool);
  for (const FlatSlot& slot : fused.layout()) covered.narrow(0, slot.offset, slot.numel).fill_(1);
  const torch::Tensor gaps = covered.logical_not();
  ASSERT_GT(gaps.sum().item<std::int64_t>(), 0) << "this model has no gaps to check";
  EXPECT_EQ(fused.flat_params(0).masked_select(gaps).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(fused.flat_grads(0).masked_select(gaps).abs().sum().item<double>(), 0.0);
}

TEST(FusedAdam, GradientsReplacedBehindItsBackAreCopiedIn) {
  torch::set_num_threads(2);
  ResNet9 lib_model = make_model(1), fused_model = make_model(2);
  copy_weights(lib_model, fused_model);
  const Batch batch = fixed_batch(lib_model);
  auto lib = make_libtorch(OptimizerKind::kAdam, lib_model, 1e-4);
  FusedAdam fused(fused_model->parameters(), fused_options(OptimizerKind::kAdam, 1e-4));
  for (int s = 0; s < 3; ++s) {
    set_lr_and_beta1(*lib, OptimizerKind::kAdam, lr_at(s), beta1_at(s));
    fused.set_lr_and_beta1(lr_at(s), beta1_at(s));
    lib->zero_grad();
    for (auto& p : fused_model->parameters()) p.mutable_grad() = torch::Tensor();  // set_to_none
    forward_backward(lib_model, batch);
    forward_backward(fused_model, batch);  // fresh gradient tensors, outside the flat buffer
    lib->step();
    fused.step();
    ASSERT_EQ(difference(lib_model, fused_model), "") << "after step " << s;
    const auto p0 = fused_model->parameters()[0];
    EXPECT_EQ(p0.grad().data_ptr(),
              fused.flat_grads(0).data_ptr<float>() + fused.layout()[0].offset);
  }
}

// last_copied(): 0 when backward accumulated into the flat views, one per gradient found elsewhere.
TEST(FusedAdam, LastCopiedCountsTheGradientsFoundOutsideTheFlatBuffers) {
  ResNet9 model = make_model(1);
  const Batch batch = fixed_batch(model);
  FusedAdam fused(model->parameters(), fused_options(OptimizerKind::kAdam, 1e-4));
  const auto params = model->parameters();
  fused.zero_grad();
  forward_backward(model, batch);  // in place into the views
  fused.step();
  EXPECT_EQ(fused.last_copied(), 0);
  for (auto& p : model->parameters()) p.mutable_grad().reset();
  forward_backward(model, batch);  // fresh tensors
  fused.clip_grad_value(kClipValue);
  EXPECT_EQ(fused.last_copied(), static_cast<int>(params.size()));
  fused.step();  // clip pointed them back at the views
  EXPECT_EQ(fused.last_copied(), 0);
  params[3].mutable_grad() = params[3].grad().clone();
  fused.step();
  EXPECT_EQ(fused.last_copied(), 1);
}

// flat_gradients(): what GradSync needs to average into the gradient buffers in place.
TEST(FusedAdam, FlatGradientsAreTheGradientBuffersAndViews) {
  ResNet9 model = make_model(1);
  auto params = model->parameters();
  params[0].set_data(params[0].contiguous(at::MemoryFormat::ChannelsLast));  // a conv weight
  ASSERT_EQ(params[0].dim(), 4);
  FusedAdam fused(model->parameters(), fused_options(OptimizerKind::kAdam, 0.0));
  const FlatGradients flat = fused.flat_gradients();
  ASSERT_EQ(flat.buffers.size(), static_cast<std::size_t>(fused.num_buffers()));
  EXPECT_EQ(flat.buffers[0].data_ptr(), fused.flat_grads(0).data_ptr());
  ASSERT_EQ(flat.views.size(), params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    const int k = static_cast<int>(i);
    EXPECT_EQ(flat.buffer[i], fused.layout()[i].buffer);
    EXPECT_EQ(flat.offset[i], fused.layout()[i].offset);
    EXPECT_EQ(flat.views[i].data_ptr(), fused.grad_view(k).data_ptr()) << "parameter " << i;
    EXPECT_EQ(flat.views[i].strides(), params[i].strides()) << "parameter " << i;
    EXPECT_EQ(flat.views[i].data_ptr(),
              fused.flat_grads(0).data_ptr<float>() + fused.layout()[i].offset);
  }
  EXPECT_TRUE(flat.views[0].is_contiguous(at::MemoryFormat::ChannelsLast));
}

TEST(FusedAdam, MissingGradientIsAnError) {
  ResNet9 model = make_model(1);
  FusedAdam fused(model->parameters(), fused_options(OptimizerKind::kAdam, 0.0));
  model->parameters()[3].mutable_grad() = torch::Tensor();
  EXPECT_THROW(fused.step(), std::logic_error);
}

TEST(FusedAdam, ReallocatedParameterIsAnError) {
  ResNet9 model = make_model(1);
  FusedAdam fused(model->parameters(), fused_options(OptimizerKind::kAdam, 0.0));
  model->parameters()[0].set_data(model->parameters()[0].detach().clone());
  EXPECT_THROW(fused.step(), std::logic_error);
}

CheckpointMeta meta_for(const ResNet9Options& options, OptimizerKind kind, std::int64_t step) {
  CheckpointMeta meta;
  for (int k = 0; k < options.num_classes; ++k) meta.classes.push_back("c" + std::to_string(k));
  meta.mean.assign(options.in_channels, 0.5);
  meta.std.assign(options.in_channels, 0.2);
  meta.height = meta.width = kSide;
  meta.channels = options.in_channels;
  meta.model = options;
  meta.optimizer = kind == OptimizerKind::kAdamW ? "adamw" : "adam";
  meta.step = step;
  return meta;
}

class FusedAdamCheckpoint : public ::testing::TestWithParam<OptimizerKind> {
 protected:
  void SetUp() override { torch::set_num_threads(2); }
};

// The state a checkpoint gets through to_libtorch() has LibTorch's names and shapes.
TEST_P(FusedAdamCheckpoint, ExportedStateHasLibTorchNamesAndShapes) {
  const OptimizerKind kind = GetParam();
  ResNet9 model = make_model(1);
  const Batch batch = fixed_batch(model);
  FusedAdam fused(model->parameters(), fused_options(kind, 1e-4));
  EXPECT_TRUE(fused.to_libtorch()->state().empty()) << "no state before the first step";
  for (int s = 0; s < 2; ++s) {
    fused.zero_grad();
    forward_backward(model, batch);
    fused.step();
  }
  auto twin = fused.to_libtorch();
  ASSERT_EQ(twin->param_groups().size(), 1u);
  const auto& params = twin->param_groups()[0].params();
  ASSERT_EQ(twin->state().size(), params.size());
  torch::serialize::OutputArchive archive;
  twin->save(archive);  // LibTorch's own serialization accepts it
  for (const auto& p : params) {
    const auto& s = *twin->state().at(c10::guts::to_string(p.unsafeGetTensorImpl()));
    const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(&s);
    const auto* adamw = dynamic_cast<const torch::optim::AdamWParamState*>(&s);
    ASSERT_TRUE(kind == OptimizerKind::kAdamW ? adamw != nullptr : adam != nullptr);
    const std::int64_t step = adam ? adam->step() : adamw->step();
    const torch::Tensor m = adam ? adam->exp_avg() : adamw->exp_avg();
    const torch::Tensor v = adam ? adam->exp_avg_sq() : adamw->exp_avg_sq();
    EXPECT_EQ(step, 2);
    EXPECT_EQ(m.sizes(), p.sizes());
    EXPECT_EQ(v.sizes(), p.sizes());
    EXPECT_NE(m.data_ptr(), nullptr);
    // A copy: the twin must not write into FusedAdam's buffers.
    EXPECT_NE(m.data_ptr(), fused.flat_params(0).data_ptr());
  }
}

// save after 10 fused steps (through to_libtorch and save_checkpoint), load into LibTorch's
// optimizer, continue both 10 steps: equal after each.
TEST_P(FusedAdamCheckpoint, FusedCheckpointResumesInLibTorchBitIdentically) {
  const OptimizerKind kind = GetParam();
  fer::testing::TempFolder dir("fused_adam_ckpt_" + std::to_string(static_cast<int>(kind)));
  ResNet9 fused_model = make_model(1);
  const Batch batch = fixed_batch(fused_model);
  FusedAdam fused(fused_model->parameters(), fused_options(kind, 0.05));
  ResNet9 scratch = make_model(3);  // the other side before the resume: not compared
  auto scratch_opt = make_libtorch(kind, scratch, 0.05);
  for (int s = 0; s < 10; ++s) {
    step_both(s, kind, Clip::kNorm, batch, scratch, *scratch_opt, fused_model, fused);
  }
  auto twin = fused.to_libtorch();
  save_checkpoint(dir / "ckpt.pt", fused_model, twin.get(), meta_for(model_options(), kind, 10));

  ResNet9 lib_model = make_model(4);  // other weights until the checkpoint is loaded
  auto lib = make_libtorch(kind, lib_model, 0.05);
  load_checkpoint_into(dir / "ckpt.pt", lib_model, lib.get(), nullptr);
  ASSERT_EQ(difference(lib_model, fused_model), "");
  for (int s = 10; s < 20; ++s) {
    const Norms norms = step_both(s, kind, Clip::kNorm, batch, lib_model, *lib, fused_model, fused);
    ASSERT_EQ(norms.lib, norms.fused) << "total gradient norm at step " << s;
    ASSERT_EQ(difference(lib_model, fused_model), "") << "after step " << s;
  }
}

// The other way: a checkpoint of LibTorch's optimizer resumes in FusedAdam.
TEST_P(FusedAdamCheckpoint, LibTorchCheckpointResumesInFusedAdamBitIdentically) {
  const OptimizerKind kind = GetParam();
  fer::testing::TempFolder dir("fused_adam_ckpt_back_" + std::to_string(static_cast<int>(kind)));
  ResNet9 lib_model = make_model(1);
  const Batch batch = fixed_batch(lib_model);
  auto lib = make_libtorch(kind, lib_model, 0.05);
  ResNet9 scratch = make_model(3);
  FusedAdam scratch_fused(scratch->parameters(), fused_options(kind, 0.05));
  for (int s = 0; s < 10; ++s) {
    step_both(s, kind, Clip::kValue, batch, lib_model, *lib, scratch, scratch_fused);
  }
  save_checkpoint(dir / "ckpt.pt", lib_model, lib.get(), meta_for(model_options(), kind, 10));

  ResNet9 fused_model = make_model(4);
  FusedAdam fused(fused_model->parameters(), fused_options(kind, 0.05));
  auto twin = fused.to_libtorch();
  load_checkpoint_into(dir / "ckpt.pt", fused_model, twin.get(), nullptr);
  fused.import_state(*twin);
  EXPECT_EQ(fused.step_count(), 10);
  ASSERT_EQ(difference(lib_model, fused_model), "");
  for (int s = 10; s < 20; ++s) {
    step_both(s, kind, Clip::kValue, batch, lib_model, *lib, fused_model, fused);
    ASSERT_EQ(difference(lib_model, fused_model), "") << "after step " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(AdamAndAdamW, FusedAdamCheckpoint,
                         ::testing::Values(OptimizerKind::kAdam, OptimizerKind::kAdamW),
                         [](const ::testing::TestParamInfo<OptimizerKind>& info) {
                           return info.param == OptimizerKind::kAdamW ? "AdamW" : "Adam";
                         });

TEST(FusedAdam, ImportRefusesStatesAtDifferentSteps) {
  ResNet9 model = make_model(1);
  const Batch batch = fixed_batch(model);
  FusedAdam fused(model->parameters(), fused_options(OptimizerKind::kAdam, 0.0));
  fused.zero_grad();
  forward_backward(model, batch);
  fused.step();
  auto twin = fused.to_libtorch();
  auto& first = static_cast<torch::optim::AdamParamState&>(
      *twin->state().at(c10::guts::to_string(model->parameters()[0].unsafeGetTensorImpl())));
  first.step(7);
  EXPECT_THROW(fused.import_state(*twin), CheckpointError);
  twin->state().erase(c10::guts::to_string(model->parameters()[0].unsafeGetTensorImpl()));
  EXPECT_THROW(fused.import_state(*twin), CheckpointError);
  twin->state().clear();  // a fresh optimizer: state back to zero
  fused.import_state(*twin);
  EXPECT_EQ(fused.step_count(), 0);
}

}  // namespace
}  // namespace fer
