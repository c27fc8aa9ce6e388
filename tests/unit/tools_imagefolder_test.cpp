// Tests for ImageFolder discovery (scan_image_folder) and image decoding (decode_image_*).
// Every test builds its own tree under a unique temporary folder that is removed afterwards.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/errors.h"
#include "image/image_io.h"
#include "image_folder.h"

namespace fer::tools {
namespace {

namespace fs = std::filesystem;

// A fresh folder under the system temp dir, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "fer-imgf-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_bytes(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

void write_text(const fs::path& path, const std::string& text) {
  write_bytes(path, std::vector<std::uint8_t>(text.begin(), text.end()));
}

std::vector<std::uint8_t> encode(const cv::Mat& image, const std::string& ext = ".png") {
  std::vector<std::uint8_t> bytes;
  EXPECT_TRUE(cv::imencode(ext, image, bytes)) << ext;
  return bytes;
}

std::vector<std::uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// A small valid gray PNG.
void write_png(const fs::path& path, std::uint8_t value = 128) {
  write_bytes(path, encode(cv::Mat(4, 4, CV_8UC1, cv::Scalar(value))));
}

std::vector<std::string> ids(const std::vector<ImageFile>& files) {
  std::vector<std::string> out;
  for (const ImageFile& f : files) out.push_back(f.id);
  return out;
}

std::vector<int> labels(const std::vector<ImageFile>& files) {
  std::vector<int> out;
  for (const ImageFile& f : files) out.push_back(f.label);
  return out;
}

std::vector<std::string> split_names(const ImageFolderScan& scan) {
  std::vector<std::string> out;
  for (const auto& entry : scan.splits) out.push_back(entry.first);
  return out;
}

// Runs scan_image_folder expecting a DataError; returns its message (and hint after " | ").
std::string scan_error(const fs::path& src) {
  try {
    scan_image_folder(src);
  } catch (const DataError& e) {
    return std::string(e.what()) + " | " + e.hint();
  }
  ADD_FAILURE() << "expected DataError for " << src;
  return {};
}

// Decodes `bytes` expecting success.
std::vector<std::uint8_t> decode(const std::vector<std::uint8_t>& bytes, int size, int channels) {
  std::vector<std::uint8_t> out(static_cast<std::size_t>(size) * size * channels, 0xAB);
  std::string reason;
  EXPECT_TRUE(decode_image_bytes(bytes, size, channels, out.data(), &reason)) << reason;
  return out;
}

std::vector<std::uint8_t> mat_bytes(const cv::Mat& m) {
  cv::Mat c = m.clone();
  return std::vector<std::uint8_t>(c.datastart, c.dataend);
}

// ---------------------------------------------------------------------------------------------
// Discovery

TEST(ScanImageFolder, SplitLayoutReadsTrainValTestWithLabelsAndSortedIds) {
  TempDir tmp;
  for (const char* split : {"train", "val", "test"}) {
    write_png(tmp.path() / split / "sad" / "2.png");
    write_png(tmp.path() / split / "happy" / "b.png");
    write_png(tmp.path() / split / "happy" / "a.png");
  }
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_TRUE(scan.has_splits);
  EXPECT_EQ(scan.classes, (std::vector<std::string>{"happy", "sad"}));
  EXPECT_EQ(split_names(scan), (std::vector<std::string>{"test", "train", "val"}));
  for (const auto& [split, files] : scan.splits) {
    EXPECT_EQ(ids(files), (std::vector<std::string>{"happy/a.png", "happy/b.png", "sad/2.png"}))
        << split;
    EXPECT_EQ(labels(files), (std::vector<int>{0, 0, 1})) << split;
    EXPECT_EQ(files[2].path, tmp.path() / split / "sad" / "2.png");
  }
  EXPECT_EQ(scan.ignored_files, 0);
}

TEST(ScanImageFolder, ValidationFolderIsTheValSplit) {
  TempDir tmp;
  write_png(tmp.path() / "train" / "a" / "1.png");
  write_png(tmp.path() / "validation" / "a" / "2.png");
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_EQ(split_names(scan), (std::vector<std::string>{"train", "val"}));
  EXPECT_EQ(ids(scan.splits.at("val")), std::vector<std::string>{"a/2.png"});
}

TEST(ScanImageFolder, ValidFolderIsTheValSplit) {
  TempDir tmp;
  write_png(tmp.path() / "train" / "a" / "1.png");
  write_png(tmp.path() / "valid" / "a" / "2.png");
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_EQ(split_names(scan), (std::vector<std::string>{"train", "val"}));
  EXPECT_EQ(ids(scan.splits.at("val")), std::vector<std::string>{"a/2.png"});
}

TEST(ScanImageFolder, TwoValAliasesAreAnError) {
  TempDir tmp;
  write_png(tmp.path() / "train" / "a" / "1.png");
  write_png(tmp.path() / "val" / "a" / "2.png");
  write_png(tmp.path() / "valid" / "a" / "3.png");
  const std::string message = scan_error(tmp.path());
  EXPECT_NE(message.find("val/"), std::string::npos) << message;
  EXPECT_NE(message.find("valid/"), std::string::npos) << message;
}

TEST(ScanImageFolder, TrainAndTestOnlyHasNoValSplit) {
  TempDir tmp;
  write_png(tmp.path() / "train" / "a" / "1.png");
  write_png(tmp.path() / "test" / "a" / "2.png");
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_TRUE(scan.has_splits);
  EXPECT_EQ(split_names(scan), (std::vector<std::string>{"test", "train"}));
}

TEST(ScanImageFolder, SplitFoldersWithoutTrainAreAnError) {
  TempDir tmp;
  write_png(tmp.path() / "val" / "a" / "1.png");
  write_png(tmp.path() / "test" / "a" / "2.png");
  EXPECT_NE(scan_error(tmp.path()).find("train"), std::string::npos);
}

TEST(ScanImageFolder, SplitNamesAreCaseSensitive) {
  TempDir tmp;
  write_png(tmp.path() / "Train" / "1.png");
  write_png(tmp.path() / "Test" / "2.png");
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_FALSE(scan.has_splits);
  EXPECT_EQ(scan.classes, (std::vector<std::string>{"Test", "Train"}));
}

TEST(ScanImageFolder, FlatLayoutHasOneSplitAll) {
  TempDir tmp;
  write_png(tmp.path() / "neutral" / "x.png");
  write_png(tmp.path() / "angry" / "y.png");
  // "train" below a class folder is an ordinary sub-folder, not a split.
  write_png(tmp.path() / "angry" / "train" / "z.png");
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_FALSE(scan.has_splits);
  EXPECT_EQ(split_names(scan), std::vector<std::string>{"all"});
  EXPECT_EQ(scan.classes, (std::vector<std::string>{"angry", "neutral"}));
  EXPECT_EQ(ids(scan.splits.at("all")),
            (std::vector<std::string>{"angry/train/z.png", "angry/y.png", "neutral/x.png"}));
  EXPECT_EQ(labels(scan.splits.at("all")), (std::vector<int>{0, 0, 1}));
}

TEST(ScanImageFolder, ClassesAreSortedByteWise) {
  TempDir tmp;
  for (const char* name : {"b", "B", "a", "9", "10"}) write_png(tmp.path() / name / "x.png");
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_EQ(scan.classes, (std::vector<std::string>{"10", "9", "B", "a", "b"}));
  const auto& files = scan.splits.at("all");
  ASSERT_EQ(files.size(), 5u);
  for (const ImageFile& f : files) {
    EXPECT_EQ(f.id, scan.classes[static_cast<std::size_t>(f.label)] + "/x.png");
  }
}

TEST(ScanImageFolder, ImagesInSubFoldersBelongToTheirClass) {
  TempDir tmp;
  write_png(tmp.path() / "happy" / "top.png");
  write_png(tmp.path() / "happy" / "session 1" / "deep" / "x.png");
  write_png(tmp.path() / "sad" / "s.png");
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_EQ(scan.classes, (std::vector<std::string>{"happy", "sad"}));
  const auto& files = scan.splits.at("all");
  EXPECT_EQ(ids(files),
            (std::vector<std::string>{"happy/session 1/deep/x.png", "happy/top.png", "sad/s.png"}));
  EXPECT_EQ(labels(files), (std::vector<int>{0, 0, 1}));
}

TEST(ScanImageFolder, HiddenAndNonImageEntriesAreIgnoredAndCounted) {
  TempDir tmp;
  const fs::path a = tmp.path() / "a";
  write_png(a / "img.png");
  write_text(tmp.path() / "README.txt", "top-level file");  // 1
  write_png(tmp.path() / ".git" / "x.png");                 // 2 (hidden folder, not a class)
  write_png(a / ".hidden.png");                             // 3
  write_png(a / ".cache" / "y.png");                        // 4 (the folder counts once)
  write_text(a / "notes.txt", "not an image");              // 5
  write_text(a / "labels.csv", "x,y");                      // 6
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_EQ(scan.classes, std::vector<std::string>{"a"});
  EXPECT_EQ(ids(scan.splits.at("all")), std::vector<std::string>{"a/img.png"});
  EXPECT_EQ(scan.ignored_files, 6);
}

TEST(ScanImageFolder, ExtensionsAreCaseInsensitive) {
  for (const char* name : {"a.jpg", "a.JPG", "a.JpEg", "a.png", "a.PNG", "a.bmp", "a.webp", "a.tif",
                           "a.TIFF", "a.pgm", "a.ppm", "dir/x.y.png"}) {
    EXPECT_TRUE(has_image_extension(name)) << name;
  }
  for (const char* name : {"a.gif", "a.png.txt", "png", "a.", "a", "a.jpgx", ".png"}) {
    EXPECT_FALSE(has_image_extension(name)) << name;
  }
  TempDir tmp;
  write_png(tmp.path() / "c" / "one.PNG");
  write_bytes(tmp.path() / "c" / "two.JpEg", encode(cv::Mat(4, 4, CV_8UC3), ".jpg"));
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_EQ(ids(scan.splits.at("all")), (std::vector<std::string>{"c/one.PNG", "c/two.JpEg"}));
}

TEST(ScanImageFolder, ClassMismatchErrorListsTheDifferingClasses) {
  TempDir tmp;
  for (const char* c : {"happy", "sad", "contempt"}) write_png(tmp.path() / "train" / c / "x.png");
  for (const char* c : {"happy", "sad", "surprise"}) write_png(tmp.path() / "test" / c / "x.png");
  const std::string message = scan_error(tmp.path());
  EXPECT_NE(message.find("class folders differ between splits"), std::string::npos) << message;
  EXPECT_NE(message.find("train has [contempt] that test lacks"), std::string::npos) << message;
  EXPECT_NE(message.find("test has [surprise] that train lacks"), std::string::npos) << message;
  EXPECT_EQ(message.find("happy"), std::string::npos) << message;
}

TEST(ScanImageFolder, SplitWithoutClassFoldersIsAClassMismatch) {
  TempDir tmp;
  write_png(tmp.path() / "train" / "a" / "1.png");
  write_png(tmp.path() / "val" / "loose.png");
  const std::string message = scan_error(tmp.path());
  EXPECT_NE(message.find("train has [a] that val lacks"), std::string::npos) << message;
}

TEST(ScanImageFolder, FolderLinkedIntoTwoSplitsIsReadOnceForTrain) {
  TempDir tmp;
  write_png(tmp.path() / "train" / "a" / "1.png");
  write_png(tmp.path() / "train" / "b" / "2.png");
  write_png(tmp.path() / "test" / "a" / "3.png");
  fs::create_directory_symlink(tmp.path() / "train" / "b", tmp.path() / "test" / "b");
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_EQ(ids(scan.splits.at("train")), (std::vector<std::string>{"a/1.png", "b/2.png"}));
  EXPECT_EQ(ids(scan.splits.at("test")), std::vector<std::string>{"a/3.png"});
}

TEST(ScanImageFolder, MissingSourceIsDataErrorNamingIt) {
  TempDir tmp;
  const fs::path missing = tmp.path() / "no-such-dataset";
  EXPECT_NE(scan_error(missing).find(missing.string()), std::string::npos);
}

TEST(ScanImageFolder, FileAsSourceIsDataErrorNamingIt) {
  TempDir tmp;
  const fs::path file = tmp.path() / "dataset.zip";
  write_text(file, "PK");
  const std::string message = scan_error(file);
  EXPECT_NE(message.find(file.string()), std::string::npos) << message;
  EXPECT_NE(message.find("not a folder"), std::string::npos) << message;
}

TEST(ScanImageFolder, NoClassFoldersIsDataErrorWithLayoutHint) {
  TempDir tmp;
  write_png(tmp.path() / "loose.png");
  const std::string message = scan_error(tmp.path());
  EXPECT_NE(message.find("no class folders"), std::string::npos) << message;
  EXPECT_NE(message.find("SRC/<class>/<image>"), std::string::npos) << message;
}

TEST(ScanImageFolder, NoImagesAtAllIsDataError) {
  TempDir tmp;
  write_text(tmp.path() / "a" / "notes.txt", "x");
  fs::create_directories(tmp.path() / "b");
  EXPECT_NE(scan_error(tmp.path()).find("no images"), std::string::npos);
}

TEST(ScanImageFolder, SplitWithoutImagesIsDataError) {
  TempDir tmp;
  write_png(tmp.path() / "train" / "a" / "1.png");
  fs::create_directories(tmp.path() / "test" / "a");
  const std::string message = scan_error(tmp.path());
  EXPECT_NE(message.find("split test"), std::string::npos) << message;
}

TEST(ScanImageFolder, EmptyClassFolderIsStillAClass) {
  TempDir tmp;
  write_png(tmp.path() / "a" / "1.png");
  fs::create_directories(tmp.path() / "b");
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_EQ(scan.classes, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(scan.splits.at("all").size(), 1u);
}

TEST(ScanImageFolder, SymlinkLoopTerminatesAndCountsImagesOnce) {
  TempDir tmp;
  const fs::path a = tmp.path() / "a";
  write_png(a / "x.png");
  write_png(a / "sub" / "y.png");
  fs::create_directory_symlink("..", a / "sub" / "loop");  // a/sub/loop -> a
  fs::create_directory_symlink(a, a / "self");             // a/self -> a
  // A link to a folder outside SRC is followed like a real sub-folder.
  TempDir outside;
  write_png(outside.path() / "z.png");
  write_png(tmp.path() / "b" / "b.png");
  fs::create_directory_symlink(outside.path(), tmp.path() / "b" / "more");
  // A link to a file is followed too.
  fs::create_symlink(a / "x.png", tmp.path() / "b" / "link.png");
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_EQ(ids(scan.splits.at("all")),
            (std::vector<std::string>{"a/sub/y.png", "a/x.png", "b/b.png", "b/link.png",
                                      "b/more/z.png"}));
}

TEST(ScanImageFolder, DanglingSymlinkAndFifoWithImageNamesAreIgnored) {
  TempDir tmp;
  const fs::path a = tmp.path() / "a";
  write_png(a / "ok.png");
  fs::create_symlink(tmp.path() / "gone.png", a / "dangling.png");
  ASSERT_EQ(::mkfifo((a / "x.png").c_str(), 0644), 0);
  const ImageFolderScan scan = scan_image_folder(tmp.path());  // must not block on the FIFO
  EXPECT_EQ(ids(scan.splits.at("all")), std::vector<std::string>{"a/ok.png"});
  EXPECT_EQ(scan.ignored_files, 2);
  // Decoding the FIFO directly fails fast as well.
  std::vector<std::uint8_t> out(16);
  std::string reason;
  EXPECT_FALSE(decode_image_file(a / "x.png", 4, 1, out.data(), &reason));
  EXPECT_EQ(reason, "cannot read: not a regular file");
}

TEST(ScanImageFolder, NamesWithSpacesUnicodeAndNonUtf8BytesAreFoundAndDecode) {
  TempDir tmp;
  const std::string latin1_class = "caf\xe9 class";
  const std::string latin1_file = "caf\xe9 1.png";
  const std::string unicode_file = "\xc3\xbc \xf0\x9f\x98\x80.png";  // "ü 😀.png"
  write_png(tmp.path() / latin1_class / latin1_file, 7);
  write_png(tmp.path() / "happy face" / unicode_file, 9);
  const ImageFolderScan scan = scan_image_folder(tmp.path());
  EXPECT_EQ(scan.classes, (std::vector<std::string>{latin1_class, "happy face"}));
  const auto& files = scan.splits.at("all");
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].id, latin1_class + "/" + latin1_file);
  EXPECT_EQ(files[1].id, "happy face/" + unicode_file);
  std::vector<std::uint8_t> out(16);
  std::string reason;
  ASSERT_TRUE(decode_image_file(files[0].path, 4, 1, out.data(), &reason)) << reason;
  EXPECT_EQ(out[0], 7);
  ASSERT_TRUE(decode_image_file(files[1].path, 4, 1, out.data(), &reason)) << reason;
  EXPECT_EQ(out[0], 9);
}

// ---------------------------------------------------------------------------------------------
// Decoding

TEST(DecodeImage, SixteenBitIsScaledBy1Over257) {
  cv::Mat m(1, 4, CV_16UC1);
  m.at<std::uint16_t>(0, 0) = 65535;
  m.at<std::uint16_t>(0, 1) = 257 * 100;
  m.at<std::uint16_t>(0, 2) = 0;
  m.at<std::uint16_t>(0, 3) = 257 * 200 + 128;  // 200.498 rounds to 200
  cv::Mat square;
  cv::repeat(m, 4, 1, square);
  const std::vector<std::uint8_t> bytes = encode(square);
  const auto out = decode(bytes, 4, 1);
  EXPECT_EQ(std::vector<std::uint8_t>(out.begin(), out.begin() + 4),
            (std::vector<std::uint8_t>{255, 100, 0, 200}));
}

TEST(DecodeImage, SixteenBitColorIsScaledToRgb) {
  const cv::Mat bgr16(2, 2, CV_16UC3, cv::Scalar(257 * 10, 257 * 20, 257 * 30));
  const auto out = decode(encode(bgr16), 2, 3);
  EXPECT_EQ(std::vector<std::uint8_t>(out.begin(), out.begin() + 3),
            (std::vector<std::uint8_t>{30, 20, 10}));
}

TEST(DecodeImage, FloatImageIsTakenAsUnitRange) {
  if (!cv::haveImageWriter(".tiff")) GTEST_SKIP() << "OpenCV built without TIFF";
  cv::Mat f(2, 2, CV_32FC1, cv::Scalar(0.5));
  f.at<float>(0, 1) = 2.0f;   // saturates
  f.at<float>(1, 0) = -1.0f;  // saturates
  std::vector<std::uint8_t> bytes;
  ASSERT_TRUE(cv::imencode(".tiff", f, bytes));
  const auto out = decode(bytes, 2, 1);
  EXPECT_EQ(out, (std::vector<std::uint8_t>{128, 255, 0, 128}));
}

TEST(DecodeImage, AlphaIsDroppedNotComposited) {
  // Fully transparent pixels keep their color, as PIL's convert("RGB") does.
  const cv::Mat bgra(3, 3, CV_8UC4, cv::Scalar(10, 20, 30, 0));
  const auto out = decode(encode(bgra), 3, 3);
  for (int i = 0; i < 9; ++i) {
    EXPECT_EQ(out[i * 3 + 0], 30);
    EXPECT_EQ(out[i * 3 + 1], 20);
    EXPECT_EQ(out[i * 3 + 2], 10);
  }
}

TEST(DecodeImage, GrayWithAlphaDropsAlpha) {
  const auto bytes =
      read_bytes(fs::path(FER_SOURCE_DIR) / "tests/data/imagefolder/gray_alpha_4x4.png");
  ASSERT_FALSE(bytes.empty());
  EXPECT_EQ(decode(bytes, 4, 1), std::vector<std::uint8_t>(16, 200));
  EXPECT_EQ(decode(bytes, 4, 3), std::vector<std::uint8_t>(48, 200));
}

TEST(DecodeImage, GrayUsesItuR601WeightsLikePilL) {
  // PIL "L" of pure red, green, blue and (200, 100, 50) in RGB.
  cv::Mat bgr(1, 4, CV_8UC3);
  bgr.at<cv::Vec3b>(0, 0) = {0, 0, 255};
  bgr.at<cv::Vec3b>(0, 1) = {0, 255, 0};
  bgr.at<cv::Vec3b>(0, 2) = {255, 0, 0};
  bgr.at<cv::Vec3b>(0, 3) = {50, 100, 200};
  cv::Mat square;
  cv::repeat(bgr, 4, 1, square);
  const auto out = decode(encode(square), 4, 1);
  EXPECT_EQ(std::vector<std::uint8_t>(out.begin(), out.begin() + 4),
            (std::vector<std::uint8_t>{76, 150, 29, 124}));
}

TEST(DecodeImage, ThreeChannelsAreInRgbOrder) {
  const cv::Mat bgr(2, 2, CV_8UC3, cv::Scalar(1, 2, 3));
  const auto out = decode(encode(bgr), 2, 3);
  EXPECT_EQ(out, (std::vector<std::uint8_t>{3, 2, 1, 3, 2, 1, 3, 2, 1, 3, 2, 1}));
}

TEST(DecodeImage, GrayToThreeChannelsReplicates) {
  const auto out = decode(encode(cv::Mat(2, 2, CV_8UC1, cv::Scalar(42))), 2, 3);
  EXPECT_EQ(out, std::vector<std::uint8_t>(12, 42));
}

TEST(DecodeImage, OutputIsRowMajorHwc) {
  cv::Mat bgr(2, 2, CV_8UC3);
  bgr.at<cv::Vec3b>(0, 0) = {0, 0, 1};
  bgr.at<cv::Vec3b>(0, 1) = {0, 0, 2};
  bgr.at<cv::Vec3b>(1, 0) = {0, 0, 3};
  bgr.at<cv::Vec3b>(1, 1) = {0, 0, 4};
  const auto out = decode(encode(bgr), 2, 3);
  EXPECT_EQ(out, (std::vector<std::uint8_t>{1, 0, 0, 2, 0, 0, 3, 0, 0, 4, 0, 0}));
}

cv::Mat noise(int rows, int cols, int type) {
  cv::Mat m(rows, cols, type);
  cv::RNG rng(1234);
  rng.fill(m, cv::RNG::UNIFORM, 0, 256);
  return m;
}

TEST(DecodeImage, ShrinkUsesAreaInterpolation) {
  const cv::Mat gray = noise(96, 96, CV_8UC1);
  cv::Mat expected;
  cv::resize(gray, expected, cv::Size(48, 48), 0, 0, cv::INTER_AREA);
  EXPECT_EQ(decode(encode(gray), 48, 1), mat_bytes(expected));

  // A non-integer factor tells area from bilinear apart.
  cv::resize(gray, expected, cv::Size(40, 40), 0, 0, cv::INTER_AREA);
  cv::Mat linear;
  cv::resize(gray, linear, cv::Size(40, 40), 0, 0, cv::INTER_LINEAR);
  ASSERT_NE(mat_bytes(expected), mat_bytes(linear));
  EXPECT_EQ(decode(encode(gray), 40, 1), mat_bytes(expected));
}

TEST(DecodeImage, ShrinkOfColorImageResizesRgb) {
  const cv::Mat bgr = noise(96, 96, CV_8UC3);
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  cv::Mat expected;
  cv::resize(rgb, expected, cv::Size(48, 48), 0, 0, cv::INTER_AREA);
  EXPECT_EQ(decode(encode(bgr), 48, 3), mat_bytes(expected));
}

TEST(DecodeImage, EnlargeUsesBilinearInterpolation) {
  const cv::Mat gray = noise(8, 8, CV_8UC1);
  cv::Mat expected;
  cv::resize(gray, expected, cv::Size(20, 20), 0, 0, cv::INTER_LINEAR);
  EXPECT_EQ(decode(encode(gray), 20, 1), mat_bytes(expected));
}

TEST(DecodeImage, TargetSizeIsCopiedUnchanged) {
  const cv::Mat gray = noise(48, 48, CV_8UC1);
  EXPECT_EQ(decode(encode(gray), 48, 1), mat_bytes(gray));
}

TEST(DecodeImage, CmykJpegDecodesToRgb) {
  // Made by PIL: Image.new("CMYK", (8, 8), (0, 255, 0, 0)), i.e. magenta = RGB (255, 0, 255).
  const auto bytes =
      read_bytes(fs::path(FER_SOURCE_DIR) / "tests/data/imagefolder/cmyk_magenta_8x8.jpg");
  ASSERT_FALSE(bytes.empty());
  const auto out = decode(bytes, 8, 3);
  for (int i = 0; i < 64; ++i) {
    EXPECT_NEAR(out[i * 3 + 0], 255, 3) << i;
    EXPECT_NEAR(out[i * 3 + 1], 0, 3) << i;
    EXPECT_NEAR(out[i * 3 + 2], 255, 3) << i;
  }
}

TEST(DecodeImage, EmptyInputFailsWithReason) {
  std::vector<std::uint8_t> out(16);
  std::string reason;
  EXPECT_FALSE(decode_image_bytes({}, 4, 1, out.data(), &reason));
  EXPECT_EQ(reason, "empty file");
  TempDir tmp;
  write_bytes(tmp.path() / "empty.png", {});
  reason.clear();
  EXPECT_FALSE(decode_image_file(tmp.path() / "empty.png", 4, 1, out.data(), &reason));
  EXPECT_EQ(reason, "empty file");
}

TEST(DecodeImage, TruncatedPngFailsWithReason) {
  std::vector<std::uint8_t> bytes = encode(noise(32, 32, CV_8UC3));
  bytes.resize(bytes.size() / 2);
  std::vector<std::uint8_t> out(16);
  std::string reason;
  EXPECT_FALSE(decode_image_bytes(bytes, 4, 1, out.data(), &reason));
  EXPECT_EQ(reason, "not a decodable image (truncated or not an image)");
}

TEST(DecodeImage, TextFileNamedJpgFailsWithReason) {
  TempDir tmp;
  write_text(tmp.path() / "fake.jpg", "this is not a JPEG, just some words\n");
  std::vector<std::uint8_t> out(16);
  std::string reason;
  EXPECT_FALSE(decode_image_file(tmp.path() / "fake.jpg", 4, 1, out.data(), &reason));
  EXPECT_EQ(reason, "not a decodable image (truncated or not an image)");
}

TEST(DecodeImage, UnreadablePathFailsWithStrerror) {
  TempDir tmp;
  std::vector<std::uint8_t> out(16);
  std::string reason;
  EXPECT_FALSE(decode_image_file(tmp.path() / "missing.png", 4, 1, out.data(), &reason));
  EXPECT_EQ(reason, "cannot read: No such file or directory");
  EXPECT_FALSE(decode_image_file(tmp.path(), 4, 1, out.data(), &reason));
  EXPECT_EQ(reason, "cannot read: Is a directory");
}

TEST(DecodeImage, InvalidArgumentsFailWithoutWriting) {
  const auto bytes = encode(cv::Mat(4, 4, CV_8UC1, cv::Scalar(1)));
  std::vector<std::uint8_t> out(48, 0xAB);
  std::string reason;
  EXPECT_FALSE(decode_image_bytes(bytes, 4, 2, out.data(), &reason));
  EXPECT_FALSE(decode_image_bytes(bytes, 0, 1, out.data(), &reason));
  EXPECT_FALSE(decode_image_bytes(bytes, 4, 1, nullptr, &reason));
  EXPECT_EQ(out, std::vector<std::uint8_t>(48, 0xAB));
}

TEST(DecodeImage, FileAndBytesGiveTheSameResult) {
  TempDir tmp;
  const auto bytes = encode(noise(30, 50, CV_8UC3), ".jpg");
  write_bytes(tmp.path() / "x.jpg", bytes);
  std::vector<std::uint8_t> from_file(24 * 24 * 3);
  std::string reason;
  ASSERT_TRUE(decode_image_file(tmp.path() / "x.jpg", 24, 3, from_file.data(), &reason)) << reason;
  EXPECT_EQ(from_file, decode(bytes, 24, 3));
}

TEST(DecodeImage, ConcurrentDecodesAgree) {
  const auto bytes = encode(noise(96, 96, CV_8UC3));
  const auto expected = decode(bytes, 48, 3);
  std::vector<std::vector<std::uint8_t>> results(4, std::vector<std::uint8_t>(48 * 48 * 3));
  std::vector<int> ok(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      bool all = true;
      for (int i = 0; i < 20; ++i) {
        all = decode_image_bytes(bytes, 48, 3, results[t].data(), nullptr) && all;
      }
      ok[t] = all ? 1 : 0;
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < 4; ++t) {
    EXPECT_EQ(ok[t], 1);
    EXPECT_EQ(results[t], expected);
  }
}

}  // namespace
}  // namespace fer::tools
