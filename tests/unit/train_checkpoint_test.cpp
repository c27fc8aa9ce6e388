// Checkpoints as untrusted input: the metadata is range-checked before a model is built from it,
// and every parameter/buffer name, shape and dtype is compared before weights are loaded, so a
// checkpoint of another architecture or a truncated file is a clear CheckpointError.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "common/errors.h"
#include "common/fs_util.h"
#include "test_util.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

using fer::testing::TempFolder;

CheckpointMeta meta_for(const ResNet9Options& options) {
  CheckpointMeta meta;
  meta.classes.clear();
  for (int k = 0; k < options.num_classes; ++k) meta.classes.push_back("c" + std::to_string(k));
  meta.mean.assign(options.in_channels, 0.5);
  meta.std.assign(options.in_channels, 0.2);
  meta.height = meta.width = 16;
  meta.channels = options.in_channels;
  meta.model = options;
  meta.optimizer = "adam";
  meta.step = 3;
  return meta;
}

ResNet9Options small_options(double width = 0.0625) {
  ResNet9Options options;
  options.width = width;
  return options;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "no error";
}

// Copies of every parameter and buffer, to check that a refused load changed nothing.
std::vector<torch::Tensor> snapshot(ResNet9& model) {
  std::vector<torch::Tensor> out;
  for (const auto& p : model->named_parameters()) out.push_back(p.value().clone());
  for (const auto& b : model->named_buffers()) out.push_back(b.value().clone());
  return out;
}

bool same(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].sizes() != b[i].sizes() || !torch::equal(a[i], b[i])) return false;
  }
  return true;
}

TEST(CheckpointValidation, RoundTripLoadsIntoTheSameArchitecture) {
  TempFolder tmp("ckpt_roundtrip");
  torch::manual_seed(1);
  ResNet9 model(small_options());
  save_checkpoint(tmp / "a.pt", model, nullptr, meta_for(small_options()));
  CheckpointMeta meta;
  ResNet9 back = load_checkpoint_model(tmp / "a.pt", &meta);
  EXPECT_EQ(meta.step, 3);
  EXPECT_TRUE(same(snapshot(model), snapshot(back)));
}

TEST(CheckpointValidation, AnotherArchitectureIsRefusedNamingBoth) {
  TempFolder tmp("ckpt_arch");
  ResNet9 model(small_options(0.0625));
  save_checkpoint(tmp / "a.pt", model, nullptr, meta_for(small_options(0.0625)));
  ResNet9 wider(small_options(0.125));
  const auto before = snapshot(wider);
  const auto msg = error_of([&] { load_checkpoint_into(tmp / "a.pt", wider, nullptr, nullptr); });
  EXPECT_NE(msg.find("holds a ResNet9 with 1 channel(s), 7 classes, width 0.0625"),
            std::string::npos)
      << msg;
  EXPECT_TRUE(same(before, snapshot(wider)));
}

TEST(CheckpointValidation, WeightsThatDoNotMatchTheMetadataAreRefusedBeforeLoading) {
  TempFolder tmp("ckpt_shapes");
  // Weights of a width-0.125 model under metadata that claims width 0.0625: LibTorch would
  // silently resize the parameters to the archive's shapes.
  ResNet9 wide(small_options(0.125));
  save_checkpoint(tmp / "lie.pt", wide, nullptr, meta_for(small_options(0.0625)));
  ResNet9 narrow(small_options(0.0625));
  const auto before = snapshot(narrow);
  const auto msg = error_of([&] { load_checkpoint_into(tmp / "lie.pt", narrow, nullptr, nullptr); });
  EXPECT_NE(msg.find("does not fit the model"), std::string::npos) << msg;
  EXPECT_NE(msg.find("conv1.0.weight is Float[8,1,3,3], the model has Float[4,1,3,3]"),
            std::string::npos)
      << msg;
  EXPECT_TRUE(same(before, snapshot(narrow)));
  EXPECT_NE(error_of([&] { load_checkpoint_model(tmp / "lie.pt", nullptr); }).find("does not fit"),
            std::string::npos);

  // Another number of classes in the weights than in the metadata.
  ResNet9Options five = small_options();
  five.num_classes = 5;
  ResNet9 five_model(five);
  save_checkpoint(tmp / "classes.pt", five_model, nullptr, meta_for(small_options()));
  EXPECT_NE(error_of([&] { load_checkpoint_model(tmp / "classes.pt", nullptr); })
                .find("classifier.weight is Float[5,"),
            std::string::npos);
}

TEST(CheckpointValidation, MetadataAskingForAHugeModelIsRefusedBeforeBuildingIt) {
  TempFolder tmp("ckpt_huge");
  ResNet9 model(small_options());
  for (double width : {1000.0, 0.0, -1.0}) {
    CheckpointMeta meta = meta_for(small_options());
    meta.model.width = width;
    save_checkpoint(tmp / "w.pt", model, nullptr, meta);
    EXPECT_NE(error_of([&] { load_checkpoint_model(tmp / "w.pt", nullptr); }).find("out of range"),
              std::string::npos)
        << width;
  }
  CheckpointMeta meta = meta_for(small_options());
  meta.height = 1000000;
  save_checkpoint(tmp / "side.pt", model, nullptr, meta);
  EXPECT_NE(error_of([&] { read_checkpoint_meta(tmp / "side.pt"); }).find("out of range"),
            std::string::npos);
}

TEST(CheckpointValidation, TruncatedFilesAreCheckpointErrorsAtEveryCut) {
  TempFolder tmp("ckpt_cut");
  ResNet9 model(small_options());
  save_checkpoint(tmp / "a.pt", model, nullptr, meta_for(small_options()));
  const std::string bytes = read_file(tmp / "a.pt");
  int cuts = 0;
  for (std::size_t cut : {std::size_t{0}, std::size_t{1}, std::size_t{100}, bytes.size() / 4,
                          bytes.size() / 2, bytes.size() - 100, bytes.size() - 1}) {
    write_file_atomic(tmp / "cut.pt", bytes.substr(0, cut));
    const auto msg = error_of([&] { load_checkpoint_model(tmp / "cut.pt", nullptr); });
    EXPECT_NE(msg.find("cut.pt"), std::string::npos) << "cut at " << cut << ": " << msg;
    ++cuts;
  }
  EXPECT_EQ(cuts, 7);
  // And a file that is not a checkpoint at all.
  write_file_atomic(tmp / "junk.pt", "definitely not a zip archive");
  EXPECT_NE(error_of([&] { read_checkpoint_meta(tmp / "junk.pt"); }).find("cannot be read"),
            std::string::npos);
}


// ---- device-neutral checkpoints (DESIGN.md "Checkpoints and outputs") ----------------------------

namespace devices {

// Every tensor of an archive and its child archives, by dotted name.
void collect_tensors(torch::serialize::InputArchive& archive, const std::string& prefix,
                     std::vector<std::pair<std::string, torch::Tensor>>* out) {
  for (const auto& key : archive.keys()) {
    torch::Tensor t;
    torch::serialize::InputArchive child;
    if (archive.try_read(key, child)) {
      collect_tensors(child, prefix + key + ".", out);
    } else if (archive.try_read(key, t) && t.defined()) {
      out->emplace_back(prefix + key, t);
    }
  }
}

// A model and Adam that took two steps, so that every kind of optimizer state exists.
std::unique_ptr<torch::optim::Adam> trained_adam(ResNet9& model) {
  auto adam = std::make_unique<torch::optim::Adam>(model->parameters(),
                                                   torch::optim::AdamOptions(0.01));
  model->train();
  for (int step = 0; step < 2; ++step) {
    adam->zero_grad();
    model->forward(torch::randn({4, 1, 16, 16})).square().mean().backward();
    adam->step();
  }
  return adam;
}

TEST(CheckpointDevices, TheArchiveHoldsCpuTensorsOnlyAndAdamStateRoundTripsExactly) {
  TempFolder tmp("ckpt_cpu");
  torch::manual_seed(2);
  ResNet9 model(small_options());
  auto adam = trained_adam(model);
  save_checkpoint(tmp / "a.pt", model, adam.get(), meta_for(small_options()));

  torch::serialize::InputArchive archive;
  archive.load_from((tmp / "a.pt").string());  // no map_location: the devices as written
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  collect_tensors(archive, "", &tensors);
  ASSERT_GT(tensors.size(), 2 * model->parameters().size());  // weights and Adam moments
  for (const auto& [name, t] : tensors) EXPECT_TRUE(t.device().is_cpu()) << name;

  // Restored into fresh objects, one more step equals one more step of the originals.
  torch::manual_seed(3);
  ResNet9 other(small_options());
  auto other_adam = std::make_unique<torch::optim::Adam>(other->parameters(),
                                                         torch::optim::AdamOptions(0.01));
  load_checkpoint_into(tmp / "a.pt", other, other_adam.get(), nullptr);
  const auto input = torch::randn({4, 1, 16, 16});
  for (auto* pair : {&model, &other}) {
    ResNet9& m = *pair;
    torch::optim::Adam& opt = pair == &model ? *adam : *other_adam;
    torch::manual_seed(5);  // the same dropout mask for both
    opt.zero_grad();
    m->forward(input).square().mean().backward();
    opt.step();
  }
  EXPECT_TRUE(same(snapshot(model), snapshot(other)));
}

// Loading goes through the model's device: the archive (read onto the CPU) is copied INTO the
// model's own tensors and the optimizer state is moved to each parameter's device. LibTorch's
// Module::load replaces a parameter's storage instead (set_ on the same device, set_data across
// devices), which put every rank's weights on cuda:0; on this CPU-only machine that shows as new
// storage, so the test pins that every tensor keeps its storage and gets the saved values.
TEST(CheckpointDevices, LoadingCopiesIntoTheModelsOwnTensorsOnTheirDevice) {
  TempFolder tmp("ckpt_device");
  torch::manual_seed(4);
  ResNet9 model(small_options());
  auto adam = trained_adam(model);
  save_checkpoint(tmp / "a.pt", model, adam.get(), meta_for(small_options()));

  torch::manual_seed(6);
  ResNet9 target(small_options());
  torch::optim::Adam target_adam(target->parameters(), torch::optim::AdamOptions(0.01));
  std::vector<const void*> storage;
  for (const auto& p : target->parameters()) storage.push_back(p.data_ptr());
  for (const auto& b : target->buffers()) storage.push_back(b.data_ptr());
  load_checkpoint_into(tmp / "a.pt", target, &target_adam, nullptr);

  std::size_t i = 0;
  for (const auto& p : target->named_parameters()) {
    EXPECT_EQ(p.value().data_ptr(), storage[i++]) << p.key() << " got new storage";
  }
  for (const auto& b : target->named_buffers()) {
    EXPECT_EQ(b.value().data_ptr(), storage[i++]) << b.key() << " got new storage";
  }
  EXPECT_TRUE(same(snapshot(model), snapshot(target)));
  const auto params = target->parameters();
  ASSERT_EQ(target_adam.state().size(), params.size());
  for (const auto& p : params) {
    const auto& s = static_cast<const torch::optim::AdamParamState&>(
        *target_adam.state().at(c10::guts::to_string(p.unsafeGetTensorImpl())));
    EXPECT_EQ(s.exp_avg().device(), p.device());
    EXPECT_EQ(s.exp_avg_sq().device(), p.device());
    EXPECT_EQ(s.step(), 2);
  }
}

}  // namespace devices

}  // namespace
}  // namespace fer
