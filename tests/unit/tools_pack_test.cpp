// fer-pack end to end: the built tool on generated ImageFolders and CSVs, read back through the
// dataset library. Each test pins a behaviour a user relies on.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <fstream>
#include <map>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <set>
#include <thread>

#include "common/cancel.h"
#include "common/errors.h"
#include "common/fs_util.h"
#include "data/dataset.h"
#include "image/image_io.h"
#include "pack.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace fer::tools {
namespace {

using fer::testing::quote;
using fer::testing::run_command;
using fer::testing::TempFolder;
using fer::testing::tool;

// Writes `count` random grayscale PNGs of side `side` into dir (created), seeded by `seed`.
void write_images(const fs::path& dir, int count, int side, int seed) {
  fs::create_directories(dir);
  cv::RNG rng(static_cast<std::uint64_t>(seed) * 7919 + 17);
  for (int i = 0; i < count; ++i) {
    cv::Mat img(side, side, CV_8UC1);
    rng.fill(img, cv::RNG::UNIFORM, 0, 256);
    cv::imwrite((dir / ("img" + std::to_string(i) + ".png")).string(), img);
  }
}

// SRC/{train,val,test}/{angry,happy,sad}/imgN.png
void write_split_folder(const fs::path& src, int per_class, int side,
                        const std::vector<std::string>& splits = {"train", "val", "test"}) {
  int seed = 0;
  for (const auto& split : splits) {
    for (const char* cls : {"angry", "happy", "sad"}) {
      write_images(src / split / cls, per_class, side, ++seed);
    }
  }
}

std::string pack(const fs::path& src, const fs::path& out, const std::string& flags = "") {
  return tool("fer-pack") + " imagefolder " + quote(src) + " " + quote(out) + " -q " + flags;
}

// All images, labels and ids of one split, read back through the verified reader.
struct SplitData {
  std::vector<std::vector<std::uint8_t>> images;
  std::vector<int> labels;
  std::vector<std::string> ids;
};

SplitData read_split(const fs::path& dir, const std::string& split) {
  const Manifest m = load_manifest(dir);
  SplitData data;
  for (int k = 0; k < static_cast<int>(m.split(split).shards.size()); ++k) {
    ShardReader reader = open_verified_shard(dir, m, split, k);
    const auto n = reader.count();
    std::vector<std::uint8_t> pixels(n * m.image_bytes()), labels(n);
    reader.read_images(0, n, pixels.data());
    reader.read_labels(0, n, labels.data());
    const auto ids = reader.read_ids(0, n);
    for (std::int64_t i = 0; i < n; ++i) {
      data.images.emplace_back(pixels.begin() + i * m.image_bytes(),
                               pixels.begin() + (i + 1) * m.image_bytes());
      data.labels.push_back(labels[i]);
      data.ids.push_back(ids[i]);
    }
  }
  return data;
}

bool no_temporaries_beside(const fs::path& out) {
  for (const auto& e : fs::directory_iterator(out.parent_path())) {
    if (e.path().filename().string().find(".tmp-") != std::string::npos) return false;
  }
  return true;
}

TEST(FerPack, ImageFolderRoundTripsPixelsLabelsAndNormalization) {
  TempFolder tmp("pack_roundtrip");
  write_split_folder(tmp / "src", 6, 40);
  auto r = run_command(pack(tmp / "src", tmp / "out", "--size 32 --shards 2"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Manifest m = load_manifest(tmp / "out");
  EXPECT_EQ(m.classes, (std::vector<std::string>{"angry", "happy", "sad"}));
  EXPECT_EQ(m.height, 32);
  double sum = 0, sum_sq = 0, n = 0;
  for (const char* split : {"train", "val", "test"}) {
    const SplitData data = read_split(tmp / "out", split);
    ASSERT_EQ(data.images.size(), 18u) << split;
    EXPECT_EQ(m.split(split).shards.size(), 2u);
    EXPECT_EQ(m.split(split).class_counts, (std::vector<std::int64_t>{6, 6, 6}));
    for (std::size_t i = 0; i < data.images.size(); ++i) {
      const std::string cls = data.ids[i].substr(0, data.ids[i].find('/'));
      EXPECT_EQ(m.classes[data.labels[i]], cls);
      std::vector<std::uint8_t> expected(32 * 32);
      std::string reason;
      ASSERT_TRUE(decode_image_file(tmp / "src" / split / data.ids[i], 32, 1, expected.data(),
                                    &reason));
      ASSERT_EQ(data.images[i], expected) << data.ids[i];
      if (std::string(split) == "train") {
        for (auto v : expected) {
          sum += v / 255.0;
          sum_sq += (v / 255.0) * (v / 255.0);
          ++n;
        }
      }
    }
  }
  const double mean = sum / n;
  const double stdev = std::sqrt((sum_sq - n * mean * mean) / (n - 1));
  EXPECT_NEAR(m.mean[0], mean, 1e-9);
  EXPECT_NEAR(m.std[0], stdev, 1e-9);
}

TEST(FerPack, OutputIsByteIdenticalForOneAndTwoThreadsAndFollowsTheSeed) {
  TempFolder tmp("pack_determinism");
  write_split_folder(tmp / "src", 30, 24, {"train", "test"});
  for (const char* t : {"1", "2"}) {
    auto r = run_command(pack(tmp / "src", tmp / (std::string("out") + t),
                              std::string("--compress 1 --shards 3 --threads ") + t));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  auto r = run_command(pack(tmp / "src", tmp / "seed9", "--compress 1 --shards 3 --seed 9"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  int files = 0;
  for (const auto& e : fs::directory_iterator(tmp / "out1")) {
    const auto name = e.path().filename().string();
    EXPECT_EQ(read_file(e.path()), read_file(tmp / "out2" / name)) << name;
    ++files;
  }
  EXPECT_EQ(files, 1 + 3 * 3);
  EXPECT_NE(read_file(tmp / "out1" / "train-00000-of-00003.h5"),
            read_file(tmp / "seed9" / "train-00000-of-00003.h5"));
}

TEST(FerPack, UndecodableFilesAreSkippedWithAWarningOrFailWithStrict) {
  TempFolder tmp("pack_badfiles");
  write_split_folder(tmp / "src", 4, 16);
  const fs::path happy = tmp / "src" / "train" / "happy";
  std::ofstream(happy / "empty.png").close();
  const std::string png = read_file(happy / "img0.png");
  std::ofstream(happy / "truncated.png", std::ios::binary) << png.substr(0, png.size() / 2);
  std::ofstream(happy / "text.JPG") << "this is not a picture";
  std::ofstream(happy / "notes.txt") << "ignored";
  std::ofstream(happy / ".hidden.png") << "ignored";
  std::ofstream(tmp / "src" / "train" / "sad" / "name with space \xe9.png", std::ios::binary)
      << png;
  auto r = run_command(pack(tmp / "src", tmp / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* name : {"empty.png", "truncated.png", "text.JPG"}) {
    EXPECT_NE(r.output.find(name), std::string::npos) << name << "\n" << r.output;
  }
  EXPECT_NE(r.output.find("skipped 3 undecodable"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ignored 2 non-image or hidden"), std::string::npos) << r.output;
  EXPECT_EQ(load_manifest(tmp / "out").split("train").class_counts,
            (std::vector<std::int64_t>{4, 4, 5}));

  r = run_command(pack(tmp / "src", tmp / "strict", "--strict --threads 2"));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("cannot decode"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("happy/"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(tmp / "strict"));
  EXPECT_TRUE(no_temporaries_beside(tmp / "strict"));
}

TEST(FerPack, DifferentClassSetsAcrossSplitsAreAnErrorListingTheDifference) {
  TempFolder tmp("pack_classes");
  write_split_folder(tmp / "src", 2, 16, {"train", "test"});
  write_images(tmp / "src" / "train" / "contempt", 2, 16, 99);
  auto r = run_command(pack(tmp / "src", tmp / "out"));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("contempt"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST(FerPack, ClassFoldersAreSplitStratifiedAndEveryImageLandsOnce) {
  TempFolder tmp("pack_flat");
  write_images(tmp / "src" / "happy", 50, 16, 1);
  write_images(tmp / "src" / "sad", 30, 16, 2);
  auto r = run_command(pack(tmp / "src", tmp / "out", "--split 80/10/10"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Manifest m = load_manifest(tmp / "out");
  EXPECT_EQ(m.split("train").class_counts, (std::vector<std::int64_t>{40, 24}));
  EXPECT_EQ(m.split("val").class_counts, (std::vector<std::int64_t>{5, 3}));
  EXPECT_EQ(m.split("test").class_counts, (std::vector<std::int64_t>{5, 3}));
  std::multiset<std::string> ids;
  for (const char* split : {"train", "val", "test"}) {
    for (const auto& id : read_split(tmp / "out", split).ids) ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 80u);
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 80u);
}

TEST(FerPack, MissingValIsCarvedFromTrainByValFraction) {
  TempFolder tmp("pack_carve");
  write_split_folder(tmp / "src", 20, 16, {"train", "test"});
  auto r = run_command(pack(tmp / "src", tmp / "out", "--val-fraction 0.25"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Manifest m = load_manifest(tmp / "out");
  EXPECT_EQ(m.split("train").class_counts, (std::vector<std::int64_t>{15, 15, 15}));
  EXPECT_EQ(m.split("val").class_counts, (std::vector<std::int64_t>{5, 5, 5}));
  EXPECT_EQ(m.split("test").class_counts, (std::vector<std::int64_t>{20, 20, 20}));
}

TEST(FerPack, ExistingOutputIsRefusedWithoutOverwrite) {
  TempFolder tmp("pack_exists");
  write_split_folder(tmp / "src", 2, 16);
  fs::create_directories(tmp / "out");
  std::ofstream(tmp / "out" / "keep.txt") << "mine";
  auto r = run_command(pack(tmp / "src", tmp / "out"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--overwrite"), std::string::npos) << r.output;
  EXPECT_EQ(read_file(tmp / "out" / "keep.txt"), "mine");
  r = run_command(pack(tmp / "src", tmp / "out", "--overwrite"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(tmp / "out" / "keep.txt"));
  EXPECT_TRUE(fs::exists(tmp / "out" / "manifest.json"));
}

// One fer2013.csv row: label, 48*48 pixels derived from `seed`, usage.
std::string csv_row(int label, int seed, const std::string& usage, int pixels = 48 * 48) {
  std::string row = std::to_string(label) + ",";
  for (int p = 0; p < pixels; ++p) {
    row += (p ? " " : "") + std::to_string((seed * 13 + p * 5) % 256);
  }
  return row + (usage.empty() ? "" : "," + usage);
}

TEST(FerPack, CsvUsageMapsToSplitsAndMalformedRowsAreNamedByLine) {
  TempFolder tmp("pack_csv");
  std::ofstream csv(tmp / "fer2013.csv", std::ios::binary);
  csv << "emotion,pixels,Usage\r\n";
  int line = 1;
  for (int i = 0; i < 21; ++i) {
    const char* usage = i < 14 ? "Training" : i < 18 ? "PublicTest" : "PrivateTest";
    csv << csv_row(i % 7, i, usage) << "\r\n";
    ++line;
  }
  csv << csv_row(3, 99, "Training", 2303) << "\r\n";  // line 23: one pixel short
  csv.close();
  auto r = run_command(tool("fer-pack") + " csv " + quote(tmp / "fer2013.csv") + " " +
                       quote(tmp / "out") + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("fer2013.csv:23"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("skipped 1 malformed"), std::string::npos) << r.output;
  const Manifest m = load_manifest(tmp / "out");
  EXPECT_EQ(m.classes.front(), "Angry");
  EXPECT_EQ(m.split("train").count, 14);
  EXPECT_EQ(m.split("val").count, 4);
  EXPECT_EQ(m.split("test").count, 3);
  const SplitData train = read_split(tmp / "out", "train");
  for (std::size_t i = 0; i < train.ids.size(); ++i) {
    const int row_line = std::stoi(train.ids[i].substr(train.ids[i].find(':') + 1));
    const int seed = row_line - 2;
    EXPECT_EQ(train.labels[i], seed % 7);
    for (int p : {0, 1, 2303}) EXPECT_EQ(train.images[i][p], (seed * 13 + p * 5) % 256);
  }
  r = run_command(tool("fer-pack") + " csv " + quote(tmp / "fer2013.csv") + " " +
                  quote(tmp / "strict") + " -q --strict");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find(":23"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(tmp / "strict"));
}

TEST(FerPack, CsvWithoutUsageIsSplitByProportions) {
  TempFolder tmp("pack_csv_nousage");
  std::ofstream csv(tmp / "x.csv");
  csv << "pixels,emotion\n";
  for (int i = 0; i < 40; ++i) {
    const std::string row = csv_row(i % 2, i, "");
    const auto comma = row.find(',');
    csv << row.substr(comma + 1) << "," << row.substr(0, comma) << "\n";
  }
  csv.close();
  auto r = run_command(tool("fer-pack") + " csv " + quote(tmp / "x.csv") + " " +
                       quote(tmp / "out") + " -q --split 50/25/25 --channels 3 --size 24");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Manifest m = load_manifest(tmp / "out");
  EXPECT_EQ(m.split("train").count, 20);
  EXPECT_EQ(m.split("val").count, 10);
  EXPECT_EQ(m.split("test").count, 10);
  EXPECT_EQ(m.channels, 3);
  EXPECT_EQ(m.mean.size(), 3u);
  EXPECT_EQ(m.mean[0], m.mean[2]);  // gray replicated to RGB
}

// Cancels (as Ctrl-C would) when the packer has decoded `after` items.
class CancellingSource : public PackSource {
 public:
  explicit CancellingSource(std::size_t after) : after_(after) {}
  std::size_t size() const override { return 400; }
  std::string id(std::size_t i) const override { return "i" + std::to_string(i); }
  int label(std::size_t i) const override { return static_cast<int>(i % 2); }
  bool decode(std::size_t i, int size, int channels, std::uint8_t* out,
              std::string*) const override {
    if (i == after_) request_cancel();
    for (int p = 0; p < size * size * channels; ++p) out[p] = static_cast<std::uint8_t>(i + p);
    return true;
  }

 private:
  std::size_t after_;
};

TEST(FerPack, InterruptedPackLeavesNeitherOutputNorTemporaryFolder) {
  TempFolder tmp("pack_cancel");
  CancellingSource source(150);
  SplitPlan plan;
  for (std::size_t i = 0; i < 400; ++i) plan["train"].push_back(i);
  PackMeta meta{{"a", "b"}, "test", "memory", {}};
  PackOptions options;
  options.size = 16;
  options.shards = 4;
  options.progress = false;
  EXPECT_THROW(pack_dataset(source, plan, meta, options, tmp / "out"), Interrupted);
  clear_cancel();
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_TRUE(no_temporaries_beside(tmp / "out"));
  // The same pack without the cancel completes.
  CancellingSource fine(100000);
  EXPECT_EQ(pack_dataset(fine, plan, meta, options, tmp / "out").written, 400);
}

TEST(FerPack, CtrlCOnTheProcessExits130AndLeavesNothing) {
  TempFolder tmp("pack_sigint");
  write_images(tmp / "src" / "a", 300, 256, 1);
  write_images(tmp / "src" / "b", 300, 256, 2);
  const std::string exe = tool("fer-pack");
  const std::string src = (tmp / "src").string(), out = (tmp / "out").string();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::execl(exe.c_str(), exe.c_str(), "imagefolder", src.c_str(), out.c_str(), "-q",
            "--threads", "1", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait until packing has begun (its temporary folder exists), then press Ctrl-C.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  bool started = false;
  while (!started && std::chrono::steady_clock::now() < deadline) {
    for (const auto& e : fs::directory_iterator(tmp.path())) {
      if (e.path().filename().string().find(".out.tmp-") == 0) started = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(started);
  ::kill(pid, SIGINT);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_TRUE(no_temporaries_beside(tmp / "out"));
}

TEST(FerPackVerify, CatchesAFlippedByteNamingTheShardAndPassesIntactData) {
  TempFolder tmp("pack_verify");
  write_split_folder(tmp / "src", 5, 16);
  ASSERT_EQ(run_command(pack(tmp / "src", tmp / "out", "--shards 2")).exit_code, 0);
  auto r = run_command(tool("fer-pack") + " verify " + quote(tmp / "out"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("OK (6 shards"), std::string::npos) << r.output;
  const fs::path victim = tmp / "out" / "val-00001-of-00002.h5";
  std::string bytes = read_file(victim);
  bytes[bytes.size() - 100] ^= 0x10;
  std::ofstream(victim, std::ios::binary | std::ios::trunc) << bytes;
  r = run_command(tool("fer-pack") + " verify " + quote(tmp / "out"));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("BAD val-00001-of-00002.h5"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("BAD train"), std::string::npos) << r.output;
}

TEST(FerPackVerify, RefusesAManifestWhoseShardNameLeavesTheFolder) {
  TempFolder tmp("pack_escape");
  write_split_folder(tmp / "src", 2, 16);
  ASSERT_EQ(run_command(pack(tmp / "src", tmp / "out")).exit_code, 0);
  std::string manifest = read_file(tmp / "out" / "manifest.json");
  const std::string from = "\"train-00000-of-00001.h5\"";
  manifest.replace(manifest.find(from), from.size(), "\"../train-00000-of-00001.h5\"");
  write_file_atomic(tmp / "out" / "manifest.json", manifest);
  auto r = run_command(tool("fer-pack") + " verify " + quote(tmp / "out"));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("not a plain file name"), std::string::npos) << r.output;
}

TEST(FerPackCli, InspectHelpAndUsageErrors) {
  TempFolder tmp("pack_cli");
  write_split_folder(tmp / "src", 3, 16);
  ASSERT_EQ(run_command(pack(tmp / "src", tmp / "out")).exit_code, 0);
  auto r = run_command(tool("fer-pack") + " inspect " + quote(tmp / "out"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* s : {"angry", "happy", "sad", "mean", "train-00000-of-00001.h5"}) {
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
  }
  r = run_command(tool("fer-pack") + " --help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* s : {"Exit codes", "130", "imagefolder", "verify"}) {
    EXPECT_NE(r.output.find(s), std::string::npos) << s;
  }
  EXPECT_EQ(run_command(tool("fer-pack") + " imagefolder").exit_code, 2);
  EXPECT_EQ(run_command(tool("fer-pack") + " imagefolder a b --shards 2 --shard-mb 3").exit_code, 2);
  EXPECT_EQ(run_command(pack(tmp / "src", tmp / "o2", "--split 80/20")).exit_code, 2);
  EXPECT_EQ(run_command(pack(tmp / "src", tmp / "o3", "--channels 2")).exit_code, 2);
  r = run_command(pack(tmp / "nowhere", tmp / "o4"));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("nowhere"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace fer::tools
