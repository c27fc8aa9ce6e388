#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/errors.h"
#include "fer2013_csv.h"

namespace fer::tools {
namespace {

namespace fs = std::filesystem;

// Each test writes its CSV files into a fresh directory that is removed afterwards.
class CsvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("fer_csv_test_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path write(const std::string& content, const std::string& name = "fer2013.csv") {
    fs::path path = dir_ / name;
    std::ofstream out(path, std::ios::binary);
    out << content;
    EXPECT_TRUE(out.good());
    return path;
  }

  fs::path dir_;
};

CsvOptions with_pixels(int pixels, bool strict = false) {
  CsvOptions options;
  options.pixels = pixels;
  options.strict = strict;
  return options;
}

using Pixels = std::vector<std::uint8_t>;

// read_pixels() into a fresh buffer pre-filled with a marker value.
Pixels read(const Fer2013Csv& csv, const CsvRowRef& row, int pixels) {
  Pixels out(static_cast<std::size_t>(pixels), 0xAB);
  csv.read_pixels(row, out.data());
  return out;
}

TEST(Fer2013ClassNames, AreTheSevenKaggleLabelsInOrder) {
  EXPECT_EQ(fer2013_class_names(), (std::vector<std::string>{"Angry", "Disgust", "Fear", "Happy",
                                                             "Sad", "Surprise", "Neutral"}));
}

TEST_F(CsvTest, RoundTripsLabelsUsageAndPixels) {
  const auto path = write(
      "emotion,pixels,Usage\n"
      "0,0 1 2 3,Training\n"
      "6,255 128 7 9,PublicTest\n"
      "3,10 20 30 40,PrivateTest\n");
  Fer2013Csv csv(path, with_pixels(4));
  EXPECT_TRUE(csv.has_usage());
  EXPECT_EQ(csv.skipped(), 0);
  EXPECT_EQ(csv.path(), path);
  ASSERT_EQ(csv.rows().size(), 3u);
  const auto& rows = csv.rows();
  EXPECT_EQ(rows[0].label, 0);
  EXPECT_EQ(rows[1].label, 6);
  EXPECT_EQ(rows[2].label, 3);
  EXPECT_EQ(rows[0].usage, CsvUsage::kTrain);
  EXPECT_EQ(rows[1].usage, CsvUsage::kVal);
  EXPECT_EQ(rows[2].usage, CsvUsage::kTest);
  EXPECT_EQ(rows[0].line, 2);
  EXPECT_EQ(rows[1].line, 3);
  EXPECT_EQ(rows[2].line, 4);
  EXPECT_EQ(rows[0].offset, 21u);
  EXPECT_EQ(rows[0].length, 18u);
  EXPECT_EQ(read(csv, rows[0], 4), (Pixels{0, 1, 2, 3}));
  EXPECT_EQ(read(csv, rows[1], 4), (Pixels{255, 128, 7, 9}));
  EXPECT_EQ(read(csv, rows[2], 4), (Pixels{10, 20, 30, 40}));
}

TEST_F(CsvTest, ReadsFullSizeFer2013Rows) {
  std::string content = "emotion,pixels,Usage\n";
  std::vector<Pixels> expected;
  for (int r = 0; r < 3; ++r) {
    Pixels image(std::size_t{48} * 48);
    std::string text;
    for (std::size_t i = 0; i < image.size(); ++i) {
      image[i] = static_cast<std::uint8_t>((i * 7 + static_cast<std::size_t>(r) * 31) % 256);
      text += (i ? " " : "") + std::to_string(image[i]);
    }
    content += std::to_string(r) + "," + text + ",Training\n";
    expected.push_back(image);
  }
  const auto path = write(content);
  Fer2013Csv csv(path, CsvOptions{});
  ASSERT_EQ(csv.rows().size(), 3u);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(csv.rows()[r].label, r);
    EXPECT_EQ(read(csv, csv.rows()[r], 48 * 48), expected[r]) << "row " << r;
  }
}

TEST_F(CsvTest, FindsColumnsInAnyOrderCaseInsensitively) {
  const auto path = write(
      " Usage ,PIXELS,Emotion\n"
      "PrivateTest,4 3 2 1,5\n");
  Fer2013Csv csv(path, with_pixels(4));
  ASSERT_EQ(csv.rows().size(), 1u);
  EXPECT_EQ(csv.rows()[0].label, 5);
  EXPECT_EQ(csv.rows()[0].usage, CsvUsage::kTest);
  EXPECT_EQ(read(csv, csv.rows()[0], 4), (Pixels{4, 3, 2, 1}));
}

TEST_F(CsvTest, IgnoresExtraColumns) {
  const auto path = write(
      "id,emotion,note,pixels,Usage,more\n"
      "a,2,\"x, y\",1 2 3 4,Training,\n"
      "b,1,,5 6 7 8,PublicTest,zzz\n");
  Fer2013Csv csv(path, with_pixels(4));
  ASSERT_EQ(csv.rows().size(), 2u);
  EXPECT_EQ(csv.skipped(), 0);
  EXPECT_EQ(csv.rows()[0].label, 2);
  EXPECT_EQ(csv.rows()[1].usage, CsvUsage::kVal);
  EXPECT_EQ(read(csv, csv.rows()[0], 4), (Pixels{1, 2, 3, 4}));
  EXPECT_EQ(read(csv, csv.rows()[1], 4), (Pixels{5, 6, 7, 8}));
}

TEST_F(CsvTest, WorksWithoutUsageColumn) {
  const auto path = write(
      "pixels,emotion\n"
      "9 8 7 6,1\n");
  Fer2013Csv csv(path, with_pixels(4));
  EXPECT_FALSE(csv.has_usage());
  ASSERT_EQ(csv.rows().size(), 1u);
  EXPECT_EQ(csv.rows()[0].usage, CsvUsage::kNone);
  EXPECT_EQ(csv.rows()[0].label, 1);
  EXPECT_EQ(read(csv, csv.rows()[0], 4), (Pixels{9, 8, 7, 6}));
}

TEST_F(CsvTest, AcceptsCrlfLineEndings) {
  const auto path = write(
      "emotion,pixels,Usage\r\n"
      "1,1 2 3 4,Training\r\n"
      "\r\n"
      "2,5 6 7 8,PublicTest\r\n");
  Fer2013Csv csv(path, with_pixels(4));
  EXPECT_EQ(csv.skipped(), 0);
  ASSERT_EQ(csv.rows().size(), 2u);
  EXPECT_EQ(csv.rows()[0].length, 18u);  // without "\r\n"
  EXPECT_EQ(csv.rows()[1].line, 4);
  EXPECT_EQ(csv.rows()[1].usage, CsvUsage::kVal);
  EXPECT_EQ(read(csv, csv.rows()[0], 4), (Pixels{1, 2, 3, 4}));
  EXPECT_EQ(read(csv, csv.rows()[1], 4), (Pixels{5, 6, 7, 8}));
}

TEST_F(CsvTest, AcceptsQuotedFieldsAndQuotedHeader) {
  const auto path = write(
      "\"emotion\",\"pixels\",\"Usage\",\"comment\"\n"
      "\"4\",\"1 2 3 4\",\"Training\",\"he said \"\"hi, there\"\"\"\n"
      "5, \"  5 6  7 8 \" ,PrivateTest,\"\"\n");
  Fer2013Csv csv(path, with_pixels(4));
  EXPECT_EQ(csv.skipped(), 0);
  ASSERT_EQ(csv.rows().size(), 2u);
  EXPECT_EQ(csv.rows()[0].label, 4);
  EXPECT_EQ(csv.rows()[1].label, 5);
  EXPECT_EQ(csv.rows()[1].usage, CsvUsage::kTest);
  EXPECT_EQ(read(csv, csv.rows()[0], 4), (Pixels{1, 2, 3, 4}));
  EXPECT_EQ(read(csv, csv.rows()[1], 4), (Pixels{5, 6, 7, 8}));
}

TEST_F(CsvTest, ToleratesUtf8Bom) {
  const auto path = write(
      "\xEF\xBB\xBF"
      "emotion,pixels,Usage\n"
      "0,1 2 3 4,Training\n");
  Fer2013Csv csv(path, with_pixels(4));
  ASSERT_EQ(csv.rows().size(), 1u);
  EXPECT_EQ(csv.rows()[0].offset, 24u);
  EXPECT_EQ(read(csv, csv.rows()[0], 4), (Pixels{1, 2, 3, 4}));
}

TEST_F(CsvTest, IgnoresBlankLinesAndKeepsLineNumbers) {
  const auto path = write(
      "\n"
      "  \n"
      "emotion,pixels,Usage\n"
      "\n"
      "1,1 2 3 4,Training\n"
      " \t \n"
      "\n"
      "2,5 6 7 8,Training");  // no final line break
  Fer2013Csv csv(path, with_pixels(4));
  EXPECT_EQ(csv.skipped(), 0);
  ASSERT_EQ(csv.rows().size(), 2u);
  EXPECT_EQ(csv.rows()[0].line, 5);
  EXPECT_EQ(csv.rows()[1].line, 8);
  EXPECT_EQ(read(csv, csv.rows()[1], 4), (Pixels{5, 6, 7, 8}));
}

TEST_F(CsvTest, ToleratesTabsAndRepeatedSpacesBetweenPixels) {
  const auto path = write(
      "emotion,pixels\n"
      "1,\t 1   2\t3 4  \n");
  Fer2013Csv csv(path, with_pixels(4));
  ASSERT_EQ(csv.rows().size(), 1u);
  EXPECT_EQ(read(csv, csv.rows()[0], 4), (Pixels{1, 2, 3, 4}));
}

TEST_F(CsvTest, ParsesPixelValuesOfEveryWidth) {
  const auto path = write(
      "emotion,pixels\n"
      "1,0 9 10 99 100 255 007 0255 000\n"
      "2,\"5 55 255 0 1 22 200 3 44\"\n"
      "3,1 22 255 4 55 6 77 8 199");  // pixels end the file: no line break after them
  Fer2013Csv csv(path, with_pixels(9));
  EXPECT_EQ(csv.skipped(), 0);
  ASSERT_EQ(csv.rows().size(), 3u);
  EXPECT_EQ(read(csv, csv.rows()[0], 9), (Pixels{0, 9, 10, 99, 100, 255, 7, 255, 0}));
  EXPECT_EQ(read(csv, csv.rows()[1], 9), (Pixels{5, 55, 255, 0, 1, 22, 200, 3, 44}));
  EXPECT_EQ(read(csv, csv.rows()[2], 9), (Pixels{1, 22, 255, 4, 55, 6, 77, 8, 199}));
}

TEST_F(CsvTest, AcceptsUsageValuesCaseInsensitively) {
  const auto path = write(
      "emotion,pixels,Usage\n"
      "1,1 2 3 4,training\n"
      "1,1 2 3 4,PUBLICTEST\n"
      "1,1 2 3 4, privatetest \n");
  Fer2013Csv csv(path, with_pixels(4));
  ASSERT_EQ(csv.rows().size(), 3u);
  EXPECT_EQ(csv.rows()[0].usage, CsvUsage::kTrain);
  EXPECT_EQ(csv.rows()[1].usage, CsvUsage::kVal);
  EXPECT_EQ(csv.rows()[2].usage, CsvUsage::kTest);
}

// One malformed row of each kind between valid rows: every bad row is skipped and counted, the
// good rows keep their line numbers and pixels.
TEST_F(CsvTest, SkipsEachKindOfMalformedRow) {
  const std::vector<std::string> bad = {
      "1,1 2 3 4",                       // too few fields
      "1,1 2 3 4,Training,extra",        // too many fields
      "1,1 2 3,Training",                // too few pixels
      "1,1 2 3 4 5,Training",            // too many pixels
      "1,1 2 x 4,Training",              // non-numeric pixel
      "1,1 2 3a 4,Training",             // pixel with trailing garbage
      "1,1 2 -3 4,Training",             // negative pixel
      "1,1 256 3 4,Training",            // pixel above 255
      "1,1 99999999999 3 4,Training",    // pixel that overflows
      "1,,Training",                     // empty pixel list
      "1,   ,Training",                  // blank pixel list
      "x,1 2 3 4,Training",              // non-numeric label
      ",1 2 3 4,Training",               // empty label
      "-1,1 2 3 4,Training",             // negative label
      "7,1 2 3 4,Training",              // label out of range
      "99999999999,1 2 3 4,Training",    // label that overflows
      "1,1 2 3 4,Validation",            // unknown usage
      "1,1 2 3 4,",                      // empty usage
      "1,\"1 2 3 4,Training",            // unterminated quote
      "1,\"1 2 3 4\"x,Training",         // text after a closing quote
      "1,\"1 2 \"\"3\"\" 4\",Training",  // escaped quote inside the pixels
      "1,1 2 3 1000,Training",           // four digits
      "1,1 2 3 25a,Training",            // three digits then garbage
      "1,1 2 3 4x,Training",             // garbage on the last pixel
      "1,1 2 3 +4,Training",             // signed pixel
  };
  std::string content = "emotion,pixels,Usage\n0,0 0 0 0,Training\n";
  for (std::size_t i = 0; i < bad.size(); ++i) {
    content += bad[i] + "\n";
    content += std::to_string(i % 7) + "," + std::to_string(i) + " 1 2 3,PublicTest\n";
  }
  const auto path = write(content);
  Fer2013Csv csv(path, with_pixels(4));
  EXPECT_EQ(csv.skipped(), static_cast<std::int64_t>(bad.size()));
  ASSERT_EQ(csv.rows().size(), bad.size() + 1);
  EXPECT_EQ(csv.rows()[0].line, 2);
  for (std::size_t i = 0; i < bad.size(); ++i) {
    const CsvRowRef& row = csv.rows()[i + 1];
    EXPECT_EQ(row.line, static_cast<std::int64_t>(4 + 2 * i)) << bad[i];
    EXPECT_EQ(row.label, i % 7) << bad[i];
    EXPECT_EQ(row.usage, CsvUsage::kVal) << bad[i];
    EXPECT_EQ(read(csv, row, 4), (Pixels{static_cast<std::uint8_t>(i), 1, 2, 3})) << bad[i];
  }
}

TEST_F(CsvTest, QuotedFieldSpanningLinesIsSkippedWithoutDesync) {
  const auto path = write(
      "emotion,pixels,Usage\n"
      "1,1 2 3 4,Training\n"
      "2,\"5 6\n"
      "7 8\",Training\n"
      "3,9 10 11 12,PublicTest\n");
  Fer2013Csv csv(path, with_pixels(4));
  EXPECT_GE(csv.skipped(), 1);
  ASSERT_EQ(csv.rows().size(), 2u);
  EXPECT_EQ(csv.rows()[1].line, 5);
  EXPECT_EQ(csv.rows()[1].label, 3);
  EXPECT_EQ(read(csv, csv.rows()[1], 4), (Pixels{9, 10, 11, 12}));
}

TEST_F(CsvTest, LabelRangeFollowsNumClasses) {
  const auto path = write(
      "emotion,pixels\n"
      "2,1 2 3 4\n"
      "3,1 2 3 4\n");
  CsvOptions options = with_pixels(4);
  options.num_classes = 3;
  Fer2013Csv csv(path, options);
  EXPECT_EQ(csv.skipped(), 1);
  ASSERT_EQ(csv.rows().size(), 1u);
  EXPECT_EQ(csv.rows()[0].label, 2);
}

TEST_F(CsvTest, SkipsOverlongLineWithoutLineBreaks) {
  // 3 MB of digits in one line: longer than any record the reader accepts for 4 pixels.
  const auto path =
      write("emotion,pixels\n1,1 2 3 4\n2," + std::string(3 << 20, '1') + "\n3,5 6 7 8\n");
  Fer2013Csv csv(path, with_pixels(4));
  EXPECT_EQ(csv.skipped(), 1);
  ASSERT_EQ(csv.rows().size(), 2u);
  EXPECT_EQ(csv.rows()[1].line, 4);
  EXPECT_EQ(read(csv, csv.rows()[1], 4), (Pixels{5, 6, 7, 8}));
}

// Routes the default logger into a string for the lifetime of the object.
class CapturedLog {
 public:
  CapturedLog() : previous_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(stream_);
    sink->set_pattern("%l %v");
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("captured", sink));
  }
  ~CapturedLog() { spdlog::set_default_logger(previous_); }
  std::vector<std::string> lines() const {
    std::vector<std::string> result;
    std::istringstream in(stream_.str());
    for (std::string line; std::getline(in, line);) result.push_back(line);
    return result;
  }

 private:
  std::ostringstream stream_;
  std::shared_ptr<spdlog::logger> previous_;
};

TEST_F(CsvTest, WarnsAboutTheFirstTwentyMalformedRowsThenSummarizes) {
  std::string content = "emotion,pixels\n";
  for (int i = 0; i < 25; ++i) content += "1,1 2 3\n1,1 2 3 4\n";
  const auto path = write(content);
  std::vector<std::string> lines;
  {
    CapturedLog log;
    Fer2013Csv csv(path, with_pixels(4));
    EXPECT_EQ(csv.skipped(), 25);
    EXPECT_EQ(csv.rows().size(), 25u);
    lines = log.lines();
  }
  ASSERT_EQ(lines.size(), 21u);
  EXPECT_NE(lines[0].find("fer2013.csv:2: "), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("3 pixels, expected 4"), std::string::npos) << lines[0];
  EXPECT_NE(lines[19].find("fer2013.csv:40: "), std::string::npos) << lines[19];
  EXPECT_NE(lines[20].find("5 more"), std::string::npos) << lines[20];
  EXPECT_NE(lines[20].find("25 skipped in total"), std::string::npos) << lines[20];
}

TEST_F(CsvTest, StrictModeThrowsNamingTheLine) {
  const auto path = write(
      "emotion,pixels,Usage\n"
      "1,1 2 3 4,Training\n"
      "\n"
      "1,1 2 3,Training\n"
      "1,1 2,Training\n");
  try {
    Fer2013Csv csv(path, with_pixels(4, /*strict=*/true));
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("fer2013.csv:4:"), std::string::npos) << what;
    EXPECT_NE(what.find("3 pixels, expected 4"), std::string::npos) << what;
  }
}

TEST_F(CsvTest, StrictModeAcceptsAValidFile) {
  const auto path = write("emotion,pixels\n1,1 2 3 4\n");
  Fer2013Csv csv(path, with_pixels(4, /*strict=*/true));
  EXPECT_EQ(csv.rows().size(), 1u);
}

TEST_F(CsvTest, FileWithoutHeaderIsADataError) {
  const auto path = write("0,1 2 3 4,Training\n1,5 6 7 8,Training\n");
  try {
    Fer2013Csv csv(path, with_pixels(4));
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("fer2013.csv"), std::string::npos) << what;
    EXPECT_NE(what.find("0,1 2 3 4,Training"), std::string::npos) << what;  // what was found
    EXPECT_NE(what.find("emotion"), std::string::npos) << what;             // what is expected
    EXPECT_NE(what.find("pixels"), std::string::npos) << what;
  }
}

TEST_F(CsvTest, HeaderWithoutPixelsIsADataError) {
  const auto path = write("emotion,image,Usage\n0,1 2 3 4,Training\n");
  EXPECT_THROW(Fer2013Csv(path, with_pixels(4)), DataError);
}

TEST_F(CsvTest, EmptyFileIsADataError) {
  EXPECT_THROW(Fer2013Csv(write(""), with_pixels(4)), DataError);
  EXPECT_THROW(Fer2013Csv(write("\n \r\n", "blank.csv"), with_pixels(4)), DataError);
}

TEST_F(CsvTest, MissingFileIsAnIoError) {
  const fs::path path = dir_ / "does_not_exist.csv";
  try {
    Fer2013Csv csv(path, with_pixels(4));
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path.string()), std::string::npos) << what;
    EXPECT_NE(what.find("No such file"), std::string::npos) << what;
  }
}

TEST_F(CsvTest, ReadPixelsThrowsWhenTheFileChanged) {
  const auto path = write("emotion,pixels\n1,1 2 3 4\n2,5 6 7 8\n");
  Fer2013Csv csv(path, with_pixels(4));
  ASSERT_EQ(csv.rows().size(), 2u);
  write("emotion,pixels\n1,1 2 3 4 5\n2,5 6 7 8\n");  // same inode, rewritten in place
  try {
    read(csv, csv.rows()[0], 4);
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("fer2013.csv:2:"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read(csv, csv.rows()[1], 4), DataError);  // shifted by two bytes
  write("emotion,pixels\n");                             // truncated
  EXPECT_THROW(read(csv, csv.rows()[1], 4), DataError);
}

TEST_F(CsvTest, ReadPixelsIsSafeFromManyThreads) {
  std::string content = "emotion,pixels\n";
  for (int r = 0; r < 500; ++r) {
    content += std::to_string(r % 7) + ",";
    for (int i = 0; i < 9; ++i) content += std::to_string((r + i) % 256) + " ";
    content += "\n";
  }
  Fer2013Csv csv(write(content), with_pixels(9));
  ASSERT_EQ(csv.rows().size(), 500u);
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int pass = 0; pass < 5; ++pass) {
        for (std::size_t r = 0; r < csv.rows().size(); ++r) {
          Pixels out(9);
          csv.read_pixels(csv.rows()[r], out.data());
          for (int i = 0; i < 9; ++i) mismatches[t] += out[i] != (r + i) % 256;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

// Rows of random values and padding in a file of several reader blocks (megabytes): records
// straddle the block ends at arbitrary points, including between '\r' and '\n'. With
// `pixels_last` the pixels are the last column, so a block may also end between a pixel's digits
// and the line terminator. Without `final_eol` the last record ends the file.
void check_large_file(const fs::path& path, const std::string& eol, bool pixels_last,
                      bool final_eol) {
  static const std::string kUsageNames[] = {"Training", "PublicTest", "PrivateTest"};
  std::mt19937 rng(1234);
  constexpr int kPixels = 48 * 48;
  std::vector<Pixels> images;
  std::vector<int> labels;
  std::vector<int> usages;
  std::string content = (pixels_last ? "Usage,emotion,pixels" : "emotion,pixels,Usage") + eol;
  while (content.size() < (std::size_t{13} << 20)) {
    Pixels image(kPixels);
    std::string text;
    for (int i = 0; i < kPixels; ++i) {
      image[i] = static_cast<std::uint8_t>(rng() % 256);
      text += std::to_string(image[i]);
      if (i + 1 < kPixels) text += (rng() % 16 == 0) ? "  " : " ";
    }
    const int label = static_cast<int>(rng() % 7);
    const int usage = static_cast<int>(rng() % 3);
    const std::string& usage_name = kUsageNames[usage];
    content += pixels_last ? usage_name + "," + std::to_string(label) + "," + text
                           : std::to_string(label) + "," + text + "," + usage_name;
    if (final_eol || content.size() < (std::size_t{13} << 20)) content += eol;
    images.push_back(std::move(image));
    labels.push_back(label);
    usages.push_back(usage);
  }
  {
    std::ofstream out(path, std::ios::binary);
    out << content;
  }
  Fer2013Csv csv(path, CsvOptions{});
  EXPECT_TRUE(csv.has_usage());
  EXPECT_EQ(csv.skipped(), 0);
  ASSERT_EQ(csv.rows().size(), images.size());
  for (std::size_t r = 0; r < images.size(); ++r) {
    const CsvRowRef& row = csv.rows()[r];
    ASSERT_EQ(row.line, static_cast<std::int64_t>(r + 2));
    ASSERT_EQ(row.label, labels[r]) << "row " << r;
    ASSERT_EQ(static_cast<int>(row.usage), usages[r]) << "row " << r;
    if (r + 1 < images.size() || final_eol) {
      ASSERT_EQ(content.compare(row.offset + row.length, eol.size(), eol), 0) << "row " << r;
    } else {
      ASSERT_EQ(row.offset + row.length, content.size());
    }
    ASSERT_EQ(content[row.offset - 1], '\n') << "row " << r;
    ASSERT_EQ(read(csv, row, kPixels), images[r]) << "row " << r;
  }
}

TEST_F(CsvTest, RecordsSplitAcrossReadBlocksWithLf) {
  check_large_file(dir_ / "lf.csv", "\n", /*pixels_last=*/false, /*final_eol=*/true);
}

TEST_F(CsvTest, RecordsSplitAcrossReadBlocksWithCrlfAndPixelsLast) {
  check_large_file(dir_ / "crlf.csv", "\r\n", /*pixels_last=*/true, /*final_eol=*/true);
}

TEST_F(CsvTest, RecordsSplitAcrossReadBlocksWithPixelsEndingTheFile) {
  check_large_file(dir_ / "no_final_eol.csv", "\n", /*pixels_last=*/true, /*final_eol=*/false);
}

// Valid and malformed rows mixed at random (seeded): the index must hold exactly the valid ones.
TEST_F(CsvTest, RandomMixOfValidAndMalformedRowsIndexesExactlyTheValidOnes) {
  std::mt19937 rng(42);
  const std::vector<std::string> bad = {
      "1,1 2 3,Training", "1,1 2 3 4 5,Training", "9,1 2 3 4,Training", "1,1 2 300 4,Training",
      "1,1 2 3 4,Nope",   "1,\"1 2 3 4,Training", "1,1 2 3 4",          "a,1 2 3 4,Training"};
  std::string content = "emotion,pixels,Usage\n";
  std::vector<std::int64_t> good_lines;
  std::vector<Pixels> good_pixels;
  std::int64_t bad_count = 0;
  for (int line = 2; line < 2000; ++line) {
    const unsigned kind = rng() % 10;
    if (kind < 6) {
      Pixels p = {static_cast<std::uint8_t>(rng()), static_cast<std::uint8_t>(rng()),
                  static_cast<std::uint8_t>(rng()), static_cast<std::uint8_t>(rng())};
      content += "2," + std::to_string(p[0]) + " " + std::to_string(p[1]) + " " +
                 std::to_string(p[2]) + " " + std::to_string(p[3]) + ",PrivateTest\n";
      good_lines.push_back(line);
      good_pixels.push_back(p);
    } else if (kind < 9) {
      content += bad[rng() % bad.size()] + "\n";
      ++bad_count;
    } else {
      content += "\n";
    }
  }
  const auto path = write(content);
  Fer2013Csv csv(path, with_pixels(4));
  EXPECT_EQ(csv.skipped(), bad_count);
  ASSERT_EQ(csv.rows().size(), good_lines.size());
  for (std::size_t i = 0; i < good_lines.size(); ++i) {
    ASSERT_EQ(csv.rows()[i].line, good_lines[i]);
    ASSERT_EQ(read(csv, csv.rows()[i], 4), good_pixels[i]);
  }
}

}  // namespace
}  // namespace fer::tools
