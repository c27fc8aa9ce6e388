// fer-tiny-dataset: writes a small packed dataset (format v1) of generated images, for the GPU
// tests and tests/gpu/device_check.sh in a trainer-only build (FER_TRAINER_ONLY), which has no
// fer-synth or fer-pack. It writes through src/data's ShardWriter and manifest code, the one
// definition of the format, so what it writes is what fer-pack writes; it needs no OpenCV.
//
// Class k of K is horizontal stripes whose period grows with k (2 to 8 pixels), with a random
// phase, contrast and pixel noise per image: invariant to the trainer's horizontal flip and
// learnable through its random crop, so a short run shows a falling loss.
// Per class: 80% train, 10% val, the rest test (fer-synth's split: --per-class 20 gives
// 16/2/2). Deterministic by --seed. The output is written under a temporary name and renamed
// into place at the end.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "common/errors.h"
#include "common/fs_util.h"
#include "common/random.h"
#include "data/checksum.h"
#include "data/manifest.h"
#include "data/shard.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr int kMinPeriod = 2;  // stripe period of class 0, pixels
constexpr int kMaxPeriod = 8;  // stripe period of the last class, pixels

struct TinyOptions {
  int per_class = 20;  // images per class over all splits
  int size = 16;       // height = width, pixels
  int channels = 1;    // 1 or 3
  int classes = 7;     // FER2013's seven by default
  std::uint64_t seed = 1;
};

struct SplitPlan {
  std::string name;
  int per_class;
};

std::vector<SplitPlan> plan_splits(int per_class) {
  const int train = per_class * 8 / 10;
  const int val = per_class / 10;
  return {{"train", train}, {"val", val}, {"test", per_class - train - val}};
}

// Image `index` of class `label` in split `split_id`: HWC bytes.
std::vector<std::uint8_t> draw(const TinyOptions& o, int split_id, std::int64_t index, int label) {
  std::mt19937_64 rng(derive_seed(
      {o.seed, static_cast<std::uint64_t>(split_id), static_cast<std::uint64_t>(index)}));
  const double period =
      kMinPeriod + (kMaxPeriod - kMinPeriod) * label / std::max(1.0, o.classes - 1.0);
  const double phase = uniform01(rng) * period;
  const double contrast = 40.0 + 50.0 * uniform01(rng);
  const double base = 96.0 + 64.0 * uniform01(rng);
  std::vector<std::uint8_t> image(static_cast<std::size_t>(o.size) * o.size * o.channels);
  std::size_t at = 0;
  for (int y = 0; y < o.size; ++y) {
    const double stripe = contrast * std::cos(2.0 * kPi * (y + phase) / period);
    for (int x = 0; x < o.size; ++x) {
      for (int c = 0; c < o.channels; ++c) {
        const double noise = 24.0 * (uniform01(rng) - 0.5);
        const double v = base + stripe * (1.0 - 0.2 * c) + noise;
        image[at++] = static_cast<std::uint8_t>(std::lround(std::clamp(v, 0.0, 255.0)));
      }
    }
  }
  return image;
}

void write_dataset(const fs::path& out, const TinyOptions& o, bool overwrite,
                   const std::vector<std::string>& args) {
  if (fs::exists(out) && !overwrite) {
    throw ConfigError(out.string() + " exists", "pass --overwrite to replace it");
  }
  ScopedTempDir tmp(out);
  Manifest m;
  for (int k = 0; k < o.classes; ++k) m.classes.push_back("class" + std::to_string(k));
  m.height = m.width = o.size;
  m.channels = o.channels;
  m.source_kind = "synthetic";
  m.source_path = "fer-tiny-dataset";
  m.packer_version = "fer-tiny-dataset 1";
  m.packer_args = args;
  std::vector<double> sum(o.channels, 0.0), sum_sq(o.channels, 0.0);
  std::int64_t train_pixels = 0;
  const std::vector<SplitPlan> splits = plan_splits(o.per_class);
  for (int split_id = 0; split_id < static_cast<int>(splits.size()); ++split_id) {
    const SplitPlan& plan = splits[split_id];
    // Classes interleaved in a seeded order, as fer-pack shuffles each split before sharding.
    std::vector<int> labels;
    for (int k = 0; k < o.classes; ++k) labels.insert(labels.end(), plan.per_class, k);
    std::mt19937_64 order(derive_seed({o.seed, 0xda7aULL, static_cast<std::uint64_t>(split_id)}));
    shuffle_in_place(labels, order);
    const std::string file = shard_file_name(plan.name, 0, 1);
    ShardWriter writer(tmp.path() / file, ShardLayout{plan.name, 0, 1, o.size, o.size, o.channels},
                       /*compress_level=*/0);
    SplitInfo info;
    info.class_counts.assign(o.classes, 0);
    for (std::size_t i = 0; i < labels.size(); ++i) {
      const auto image = draw(o, split_id, static_cast<std::int64_t>(i), labels[i]);
      writer.append(image.data(), static_cast<std::uint8_t>(labels[i]),
                    plan.name + "/" + std::to_string(i));
      ++info.class_counts[labels[i]];
      if (plan.name == "train") {
        for (std::size_t p = 0; p < image.size(); ++p) {
          const double v = image[p] / 255.0;
          sum[p % o.channels] += v;
          sum_sq[p % o.channels] += v * v;
        }
        train_pixels += o.size * o.size;
      }
    }
    writer.close();
    info.count = static_cast<std::int64_t>(labels.size());
    info.shards.push_back({file, info.count,
                           static_cast<std::int64_t>(fs::file_size(tmp.path() / file)),
                           file_checksum(tmp.path() / file)});
    m.splits[plan.name] = info;
  }
  for (int c = 0; c < o.channels; ++c) {
    const double n = static_cast<double>(train_pixels);
    const double mean = sum[c] / n;
    m.mean.push_back(mean);
    m.std.push_back(std::sqrt(std::max(1e-12, (sum_sq[c] - n * mean * mean) / (n - 1))));
  }
  write_file_atomic(tmp.path() / kManifestName, manifest_to_json(m));
  load_manifest(tmp.path());  // what the trainer will check, checked before the rename
  tmp.commit(out, overwrite);
}

}  // namespace
}  // namespace fer

int main(int argc, char** argv) {
  CLI::App app{
      "fer-tiny-dataset: write a small packed dataset of generated stripe images (no "
      "OpenCV: for trainer-only builds and the GPU device check)"};
  std::string out;
  bool overwrite = false;
  fer::TinyOptions o;
  app.add_option("OUT", out, "dataset folder to create")->required();
  app.add_option("--per-class", o.per_class, "images per class over train/val/test (80/10/10)")
      ->check(CLI::Range(10, 100000))
      ->capture_default_str();
  app.add_option("--size", o.size, "image side, pixels")
      ->check(CLI::Range(8, 512))
      ->capture_default_str();
  app.add_option("--channels", o.channels, "1 or 3")
      ->check(CLI::IsMember({1, 3}))
      ->capture_default_str();
  app.add_option("--classes", o.classes, "number of classes")
      ->check(CLI::Range(2, 64))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "images and order are a function of the seed")
      ->capture_default_str();
  app.add_flag("--overwrite", overwrite, "replace an existing OUT");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : static_cast<int>(fer::ExitCode::kUsage);
  }
  try {
    fer::write_dataset(out, o, overwrite, std::vector<std::string>(argv + 1, argv + argc));
    std::printf("fer-tiny-dataset: %s: %d classes x %d images, %dx%dx%d\n", out.c_str(), o.classes,
                o.per_class, o.size, o.size, o.channels);
    return 0;
  } catch (const fer::Error& e) {
    std::fprintf(stderr, "fer-tiny-dataset: error: %s%s%s\n", e.what(),
                 e.hint().empty() ? "" : "\n  hint: ", e.hint().c_str());
    return e.exit_code();
  }
}
