// The two inputs of fer-pack as PackSources with their split plans.
#pragma once

#include <filesystem>
#include <memory>

#include "pack.h"

namespace fer::tools {

struct PreparedInput {
  std::unique_ptr<PackSource> source;
  SplitPlan plan;
  PackMeta meta;
  std::int64_t ignored_files = 0;  // non-image / hidden / special files seen while scanning
  std::int64_t skipped_rows = 0;   // malformed CSV rows
};

// ImageFolder: split folders are used as they are (val carved from train, stratified, by
// options.val_fraction when absent); class folders directly are split by options.split_parts.
// Throws DataError (layout problems) or ConfigError.
PreparedInput prepare_image_folder(const std::filesystem::path& src, const PackOptions& options);

// Kaggle fer2013.csv: Usage Training/PublicTest/PrivateTest -> train/val/test; without a Usage
// column split by options.split_parts. 48x48 grayscale rows, resized/replicated to the options.
PreparedInput prepare_fer2013_csv(const std::filesystem::path& csv, const PackOptions& options);

}  // namespace fer::tools
