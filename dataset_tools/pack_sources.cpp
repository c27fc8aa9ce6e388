#include "pack_sources.h"

#include <opencv2/imgproc.hpp>
#include <spdlog/spdlog.h>

#include <cmath>

#include "common/errors.h"
#include "fer2013_csv.h"
#include "image/image_io.h"
#include "image_folder.h"

namespace fs = std::filesystem;

namespace fer::tools {
namespace {

class ImageFolderSource : public PackSource {
 public:
  explicit ImageFolderSource(std::vector<ImageFile> files) : files_(std::move(files)) {}
  std::size_t size() const override { return files_.size(); }
  std::string id(std::size_t i) const override { return files_[i].id; }
  int label(std::size_t i) const override { return files_[i].label; }
  std::string location(std::size_t i) const override { return files_[i].path.string(); }
  bool decode(std::size_t i, int size, int channels, std::uint8_t* out,
              std::string* reason) const override {
    return decode_image_file(files_[i].path, size, channels, out, reason);
  }

 private:
  std::vector<ImageFile> files_;
};

constexpr int kCsvSide = 48;  // fer2013.csv rows are 48x48 grayscale

class CsvSource : public PackSource {
 public:
  explicit CsvSource(std::unique_ptr<Fer2013Csv> csv) : csv_(std::move(csv)) {}
  std::size_t size() const override { return csv_->rows().size(); }
  std::string id(std::size_t i) const override {
    return csv_->path().filename().string() + ":" + std::to_string(csv_->rows()[i].line);
  }
  int label(std::size_t i) const override { return csv_->rows()[i].label; }
  std::string location(std::size_t i) const override {
    return csv_->path().string() + ":" + std::to_string(csv_->rows()[i].line);
  }
  bool decode(std::size_t i, int size, int channels, std::uint8_t* out,
              std::string* reason) const override {
    cv::Mat gray(kCsvSide, kCsvSide, CV_8UC1);
    csv_->read_pixels(csv_->rows()[i], gray.data);
    cv::Mat sized = gray;
    if (size != kCsvSide) {
      cv::resize(gray, sized, cv::Size(size, size), 0, 0,
                 size < kCsvSide ? cv::INTER_AREA : cv::INTER_LINEAR);
    }
    cv::Mat wrapped(size, size, channels == 1 ? CV_8UC1 : CV_8UC3, out);
    if (channels == 1) {
      sized.copyTo(wrapped);
    } else {
      cv::cvtColor(sized, wrapped, cv::COLOR_GRAY2RGB);
    }
    return true;
  }

 private:
  std::unique_ptr<Fer2013Csv> csv_;
};

// Integer parts for carving `fraction` out of train: {train, val, test}.
std::vector<int> carve_parts(double fraction) {
  const int kScale = 1000000;
  const int val = static_cast<int>(std::lround(fraction * kScale));
  return {kScale - val, val, 0};
}

void add_stratified(const PackSource& source, const std::vector<std::size_t>& items,
                    const std::vector<int>& parts, std::uint64_t seed, SplitPlan* plan) {
  auto split = stratified_split(items, source, parts, seed);
  const char* names[] = {"train", "val", "test"};
  for (int k = 0; k < 3; ++k) {
    auto& dest = (*plan)[names[k]];
    dest.insert(dest.end(), split[k].begin(), split[k].end());
  }
}

}  // namespace

PreparedInput prepare_image_folder(const fs::path& src, const PackOptions& options) {
  ImageFolderScan scan = scan_image_folder(src);
  PreparedInput in;
  in.ignored_files = scan.ignored_files;
  in.meta.classes = scan.classes;
  in.meta.source_kind = "imagefolder";
  in.meta.source_path = src.string();
  in.meta.args = describe_options(options);
  std::vector<ImageFile> all;
  std::map<std::string, std::vector<std::size_t>> ranges;
  for (auto& [split, files] : scan.splits) {
    auto& indices = ranges[split];
    for (auto& f : files) {
      indices.push_back(all.size());
      all.push_back(std::move(f));
    }
  }
  auto source = std::make_unique<ImageFolderSource>(std::move(all));
  if (!scan.has_splits) {
    add_stratified(*source, ranges["all"], options.split_parts, options.seed, &in.plan);
  } else {
    for (const auto& [split, indices] : ranges) {
      if (split != "train" && split != "val" && split != "test") continue;
      in.plan[split] = indices;
    }
    if (!ranges.count("val")) {
      spdlog::info("{} has no val/ folder: carving {:.0f}% of train as val (stratified)",
                   src.string(), options.val_fraction * 100);
      const auto train = in.plan["train"];
      in.plan.erase("train");
      add_stratified(*source, train, carve_parts(options.val_fraction), options.seed, &in.plan);
      in.plan.erase("test");
      if (ranges.count("test")) in.plan["test"] = ranges["test"];
    }
    if (!ranges.count("test")) {
      spdlog::warn("{} has no test/ folder: the dataset will have no test split", src.string());
    }
  }
  in.source = std::move(source);
  return in;
}

PreparedInput prepare_fer2013_csv(const fs::path& csv_path, const PackOptions& options) {
  CsvOptions csv_options;
  csv_options.pixels = kCsvSide * kCsvSide;
  csv_options.num_classes = static_cast<int>(fer2013_class_names().size());
  csv_options.strict = options.strict;
  auto csv = std::make_unique<Fer2013Csv>(csv_path, csv_options);
  PreparedInput in;
  in.skipped_rows = csv->skipped();
  in.meta.classes = fer2013_class_names();
  in.meta.source_kind = "csv";
  in.meta.source_path = csv_path.string();
  in.meta.args = describe_options(options);
  const bool has_usage = csv->has_usage();
  std::vector<std::size_t> all;
  for (std::size_t i = 0; i < csv->rows().size(); ++i) {
    const CsvUsage usage = csv->rows()[i].usage;
    if (!has_usage) {
      all.push_back(i);
    } else {
      const char* split = usage == CsvUsage::kTrain ? "train"
                          : usage == CsvUsage::kVal ? "val"
                                                    : "test";
      in.plan[split].push_back(i);
    }
  }
  auto source = std::make_unique<CsvSource>(std::move(csv));
  if (!has_usage) {
    spdlog::info("{} has no Usage column: splitting {}/{}/{} (stratified)", csv_path.string(),
                 options.split_parts[0], options.split_parts[1], options.split_parts[2]);
    add_stratified(*source, all, options.split_parts, options.seed, &in.plan);
  }
  in.source = std::move(source);
  return in;
}

}  // namespace fer::tools
