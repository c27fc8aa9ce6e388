// Dataset format v1: shard writer/reader round trip, manifest validation, checksums, verify.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <limits>

#include "common/errors.h"
#include "common/fs_util.h"
#include "data/checksum.h"
#include "data/dataset.h"
#include "data/hdf5_util.h"
#include "data/manifest.h"
#include "data/shard.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) /
                       ("fer_data_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string sha_of(const std::string& text) {
  Sha256 sha;
  sha.update(text.data(), text.size());
  return sha.hex_digest();
}

TEST(Checksum, Sha256MatchesFipsVectors) {
  EXPECT_EQ(sha_of(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha_of("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // Fed in uneven pieces across block boundaries.
  Sha256 pieces;
  const std::string million(1000000, 'a');
  for (std::size_t at = 0; at < million.size(); at += 777) {
    pieces.update(million.data() + at, std::min<std::size_t>(777, million.size() - at));
  }
  EXPECT_EQ(pieces.hex_digest(),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

ShardLayout layout(const std::string& split, int index, int num, int side, int channels) {
  return ShardLayout{split, index, num, side, side, channels};
}

std::vector<std::uint8_t> image_of(int i, std::size_t bytes) {
  std::vector<std::uint8_t> img(bytes);
  for (std::size_t p = 0; p < bytes; ++p) img[p] = static_cast<std::uint8_t>((i * 31 + p * 7) % 251);
  return img;
}

TEST(Shard, RoundTripsImagesLabelsAndIdsAcrossChunkBoundaries) {
  const auto dir = fresh_dir("roundtrip");
  const int n = 300, side = 12, channels = 3;
  const std::size_t bytes = side * side * channels;
  ShardWriter writer(dir / "s.h5", layout("train", 1, 3, side, channels), /*compress=*/3,
                     /*chunk_images=*/64);
  for (int i = 0; i < n; ++i) {
    writer.append(image_of(i, bytes).data(), static_cast<std::uint8_t>(i % 7),
                  i == 5 ? std::string("caf\xe9 with space.png") : "id" + std::to_string(i));
  }
  writer.close();
  ShardExpectation expect{layout("train", 1, 3, side, channels), n, 7};
  ShardReader reader(dir / "s.h5", expect);
  ASSERT_EQ(reader.count(), n);
  EXPECT_EQ(reader.chunk_images(), 64);
  std::vector<std::uint8_t> images(n * bytes), labels(n);
  reader.read_images(0, n, images.data());
  reader.read_labels(0, n, labels.data());
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(std::vector<std::uint8_t>(images.begin() + i * bytes,
                                        images.begin() + (i + 1) * bytes),
              image_of(i, bytes))
        << "image " << i;
    ASSERT_EQ(labels[i], i % 7);
  }
  const auto ids = reader.read_ids(3, 4);
  EXPECT_EQ(ids, (std::vector<std::string>{"id3", "id4", "caf\xe9 with space.png", "id6"}));
  std::vector<std::uint8_t> middle(10 * bytes);
  reader.read_images(250, 10, middle.data());
  EXPECT_EQ(std::vector<std::uint8_t>(middle.begin(), middle.begin() + bytes),
            image_of(250, bytes));
  EXPECT_THROW(reader.read_images(295, 10, middle.data()), DataError);
  fs::remove_all(dir);
}

TEST(Shard, SameInputGivesByteIdenticalFiles) {
  const auto dir = fresh_dir("determinism");
  for (const char* name : {"a.h5", "b.h5"}) {
    ShardWriter writer(dir / name, layout("val", 0, 1, 8, 1), 0, 16);
    for (int i = 0; i < 40; ++i) writer.append(image_of(i, 64).data(), 1, "x" + std::to_string(i));
    writer.close();
    usleep(1100000 / 2);  // different wall-clock times must not show in the bytes
  }
  EXPECT_EQ(read_file(dir / "a.h5"), read_file(dir / "b.h5"));
  fs::remove_all(dir);
}

TEST(Shard, ReaderRefusesMismatchesAndNamesTheFile) {
  const auto dir = fresh_dir("mismatch");
  {
    ShardWriter writer(dir / "s.h5", layout("train", 0, 2, 8, 1), 0, 16);
    for (int i = 0; i < 10; ++i) writer.append(image_of(i, 64).data(), 6, "x");
    writer.close();
  }
  auto expect_error = [&](ShardExpectation e, const std::string& needle) {
    try {
      ShardReader reader(dir / "s.h5", e);
      std::vector<std::uint8_t> labels(10);
      reader.read_labels(0, 10, labels.data());
      ADD_FAILURE() << "no error for " << needle;
    } catch (const DataError& err) {
      EXPECT_NE(std::string(err.what()).find(needle), std::string::npos) << err.what();
      EXPECT_NE(std::string(err.what()).find("s.h5"), std::string::npos) << err.what();
    }
  };
  expect_error({layout("val", 0, 2, 8, 1), 10, 7}, "manifest expects val");
  expect_error({layout("train", 1, 2, 8, 1), 10, 7}, "manifest expects train 1/2");
  expect_error({layout("train", 0, 2, 9, 1), 10, 7}, "expected Nx9x9x1");
  expect_error({layout("train", 0, 2, 8, 3), 10, 7}, "expected Nx8x8x3");
  expect_error({layout("train", 0, 2, 8, 1), 11, 7}, "manifest says 11");
  expect_error({layout("train", 0, 2, 8, 1), 10, 6}, "label 6");
  std::ofstream(dir / "junk.h5") << "not an hdf5 file";
  EXPECT_THROW(ShardReader(dir / "junk.h5", {layout("train", 0, 2, 8, 1), -1, 7}), DataError);
  EXPECT_THROW(ShardReader(dir / "absent.h5", {layout("train", 0, 2, 8, 1), -1, 7}), DataError);
  fs::remove_all(dir);
}

Manifest small_manifest() {
  Manifest m;
  m.classes = {"a", "b"};
  m.height = m.width = 8;
  m.channels = 1;
  m.mean = {0.5};
  m.std = {0.25};
  SplitInfo s;
  s.count = 3;
  s.class_counts = {1, 2};
  s.shards = {{"train-00000-of-00001.h5", 3, 100, "sha256:00"}};
  m.splits["train"] = s;
  m.source_kind = "csv";
  m.packer_args = {"--size=8"};
  return m;
}

std::string manifest_error(const std::string& json) {
  try {
    parse_manifest(json, "m.json");
  } catch (const DataError& e) {
    return e.what();
  }
  return "no error";
}

TEST(Manifest, RoundTripsThroughJson) {
  const Manifest m = small_manifest();
  const std::string json = manifest_to_json(m);
  const Manifest back = parse_manifest(json, "m.json");
  EXPECT_EQ(back.classes, m.classes);
  EXPECT_EQ(back.split("train").shards[0].file, "train-00000-of-00001.h5");
  EXPECT_EQ(back.split("train").class_counts, m.split("train").class_counts);
  EXPECT_EQ(back.mean, m.mean);
  EXPECT_EQ(back.packer_args, m.packer_args);
  EXPECT_EQ(manifest_to_json(back), json);
}

TEST(Manifest, RejectsShardNamesOutsideTheDatasetFolder) {
  for (const char* bad : {"../evil.h5", "sub/x.h5", "/abs.h5", "..", ".hidden.h5", "a..b.h5",
                          "back\\slash.h5", ""}) {
    Manifest m = small_manifest();
    m.splits["train"].shards[0].file = bad;
    const auto msg = manifest_error(manifest_to_json(m));
    EXPECT_NE(msg.find("not a plain file name"), std::string::npos) << bad << ": " << msg;
  }
}

TEST(Manifest, RejectsWrongVersionFormatCountsAndNormalization) {
  std::string json = manifest_to_json(small_manifest());
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string j = json;
    j.replace(j.find(from), from.size(), to);
    return j;
  };
  EXPECT_NE(manifest_error(replaced("\"version\": 1", "\"version\": 2")).find("version 2"),
            std::string::npos);
  EXPECT_NE(manifest_error(replaced("fer-shards", "other")).find("format"), std::string::npos);
  EXPECT_NE(manifest_error(replaced("\"count\": 3,", "\"count\": 4,")).find("class_counts"),
            std::string::npos);
  EXPECT_NE(manifest_error(replaced("0.25", "0.0")).find("std > 0"), std::string::npos);
  EXPECT_NE(manifest_error(replaced("\"channels\": 1", "\"channels\": 2")).find("channels 1 or 3"),
            std::string::npos);
  EXPECT_NE(manifest_error(replaced("\"height\": 8", "\"height\": 1000000")).find("out of range"),
            std::string::npos);
  EXPECT_NE(manifest_error("{nope").find("not valid JSON"), std::string::npos);
  EXPECT_THROW(load_manifest("/nonexistent/dataset"), DataError);
}

TEST(Manifest, RefusesHugeCountsAndShapesBeforeSizingAnything) {
  std::string json = manifest_to_json(small_manifest());
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string j = json;
    j.replace(j.find(from), from.size(), to);
    return j;
  };
  // 10^12 images, and a count within the image limit whose pixels would not fit the byte limit.
  EXPECT_NE(manifest_error(replaced("\"count\": 3,", "\"count\": 1000000000000,"))
                .find("out of range"),
            std::string::npos);
  std::string big = replaced("\"height\": 8", "\"height\": 4096");
  big.replace(big.find("\"width\": 8"), 11, "\"width\": 4096");
  big.replace(big.find("\"count\": 3,"), 11, "\"count\": 4000000000,");
  EXPECT_NE(manifest_error(big).find("GiB of pixels"), std::string::npos) << manifest_error(big);
  EXPECT_NE(manifest_error(replaced("\"width\": 8", "\"width\": 1000000")).find("out of range"),
            std::string::npos);
  // Class counts whose sum would overflow int64 are refused, not summed.
  Manifest overflow = small_manifest();
  overflow.splits["train"].class_counts = {std::numeric_limits<std::int64_t>::max(), 4};
  EXPECT_NE(manifest_error(manifest_to_json(overflow)).find("class_counts"), std::string::npos);
  // Integers given as huge floats or beyond the type's range are type errors, not casts.
  EXPECT_NE(manifest_error(replaced("\"height\": 8", "\"height\": 1e300")).find("wrong type"),
            std::string::npos);
  EXPECT_NE(manifest_error(replaced("\"height\": 8", "\"height\": 4294967304")).find("wrong type"),
            std::string::npos);
  EXPECT_NE(manifest_error(replaced("\"count\": 3,", "\"count\": 18446744073709551615,"))
                .find("wrong type"),
            std::string::npos);
  // A number beyond double's range is nlohmann's out_of_range, not a parse_error (found by
  // fuzz_manifest): still a DataError.
  EXPECT_NE(manifest_error(replaced("0.25", "1e400")).find("not valid JSON"), std::string::npos);
  // Informational fields of the wrong type are DataErrors too.
  EXPECT_NE(manifest_error(replaced("\"kind\": \"csv\"", "\"kind\": 5")).find("source.kind"),
            std::string::npos);
}

TEST(Shard, ReadsAnInMemoryImageLikeTheFile) {
  const auto dir = fresh_dir("image");
  {
    ShardWriter writer(dir / "s.h5", layout("train", 0, 1, 8, 1), 0, 16);
    for (int i = 0; i < 20; ++i) writer.append(image_of(i, 64).data(), i % 3, "id");
    writer.close();
  }
  const std::string bytes = read_file(dir / "s.h5");
  const ShardExpectation expect{layout("train", 0, 1, 8, 1), 20, 3};
  ShardReader reader("mem.h5", bytes.data(), bytes.size(), expect);
  ASSERT_EQ(reader.count(), 20);
  std::vector<std::uint8_t> images(20 * 64), labels(20);
  reader.read_images(0, 20, images.data());
  reader.read_labels(0, 20, labels.data());
  EXPECT_EQ(std::vector<std::uint8_t>(images.begin() + 64 * 7, images.begin() + 64 * 8),
            image_of(7, 64));
  EXPECT_EQ(labels[5], 2);
  // Truncated images are DataErrors naming the shard, at every cut.
  for (std::size_t cut : {std::size_t{0}, std::size_t{100}, bytes.size() / 2, bytes.size() - 1}) {
    try {
      ShardReader bad("cut.h5", bytes.data(), cut, expect);
      std::vector<std::uint8_t> out(20 * 64);
      bad.read_images(0, 20, out.data());
      bad.read_labels(0, 20, labels.data());
      ADD_FAILURE() << "no error at cut " << cut;
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("cut.h5"), std::string::npos) << e.what();
    }
  }
  fs::remove_all(dir);
}

TEST(Shard, RefusesAShardClaimingMoreImagesThanTheLimit) {
  const auto dir = fresh_dir("huge");
  {
    ShardWriter writer(dir / "s.h5", layout("train", 0, 1, 8, 1), 0, 16);
    for (int i = 0; i < 4; ++i) writer.append(image_of(i, 64).data(), 0, "id");
    writer.close();
  }
  {  // Grow the (chunked, never written) datasets to 10^12 rows: nothing is allocated on disk.
    h5::silence_errors();
    h5::File file(H5Fopen((dir / "s.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    ASSERT_TRUE(file.valid());
    for (const char* name : {"images", "labels", "ids"}) {
      h5::Dataset ds(H5Dopen2(file.get(), name, H5P_DEFAULT));
      ASSERT_TRUE(ds.valid());
      std::vector<hsize_t> dims = {1000000000000ULL, 8, 8, 1};
      if (std::string(name) != "images") dims.resize(1);
      ASSERT_GE(H5Dset_extent(ds.get(), dims.data()), 0);
    }
  }
  try {
    ShardReader reader(dir / "s.h5", {layout("train", 0, 1, 8, 1), -1, 7});
    ADD_FAILURE() << "a shard of 10^12 images was accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("claims 1000000000000 images"), std::string::npos)
        << e.what();
  }
  fs::remove_all(dir);
}

// A one-split dataset written with the real writer, for verify tests.
fs::path write_dataset(const std::string& name) {
  const auto dir = fresh_dir(name);
  Manifest m = small_manifest();
  m.splits.clear();
  SplitInfo s;
  s.class_counts = {0, 0};
  for (int k = 0; k < 2; ++k) {
    const std::string file = shard_file_name("train", k, 2);
    ShardWriter writer(dir / file, layout("train", k, 2, 8, 1), 0, 16);
    for (int i = 0; i < 20; ++i) {
      writer.append(image_of(i, 64).data(), i % 2, "x");
      ++s.class_counts[i % 2];
    }
    writer.close();
    s.shards.push_back({file, 20, static_cast<std::int64_t>(fs::file_size(dir / file)),
                        file_checksum(dir / file)});
  }
  s.count = 40;
  m.splits["train"] = s;
  write_file_atomic(dir / kManifestName, manifest_to_json(m));
  return dir;
}

TEST(Verify, AcceptsAnIntactDataset) {
  const auto dir = write_dataset("verify_ok");
  const auto report = verify_dataset(dir);
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.shards_checked, 2);
  fs::remove_all(dir);
}

TEST(Verify, CatchesOneFlippedByteAndNamesTheShard) {
  const auto dir = write_dataset("verify_flip");
  const fs::path victim = dir / shard_file_name("train", 1, 2);
  std::string bytes = read_file(victim);
  bytes[bytes.size() / 2] ^= 0x01;
  std::ofstream(victim, std::ios::binary | std::ios::trunc) << bytes;
  const auto report = verify_dataset(dir);
  ASSERT_EQ(report.problems.size(), 1u);
  EXPECT_NE(report.problems[0].find("train-00001-of-00002.h5"), std::string::npos);
  EXPECT_NE(report.problems[0].find("checksum"), std::string::npos);
  const Manifest m = load_manifest(dir);
  EXPECT_THROW(open_verified_shard(dir, m, "train", 1), DataError);
  EXPECT_NO_THROW(open_verified_shard(dir, m, "train", 0));
  fs::remove_all(dir);
}

TEST(Verify, CatchesMissingAndTruncatedShards) {
  const auto dir = write_dataset("verify_missing");
  fs::remove(dir / shard_file_name("train", 0, 2));
  fs::resize_file(dir / shard_file_name("train", 1, 2), 100);
  const auto report = verify_dataset(dir);
  ASSERT_EQ(report.problems.size(), 2u);
  EXPECT_NE(report.problems[0].find("missing"), std::string::npos) << report.problems[0];
  EXPECT_NE(report.problems[1].find("100 bytes"), std::string::npos) << report.problems[1];
  fs::remove_all(dir);
}

}  // namespace
}  // namespace fer
