// fer-report: turns a run folder's metrics.jsonl and summary.json into PNG plots and a report.md
// that embeds them with the summary tables. Reads only those two files (and notes whether
// config.yaml is there), so it runs on a copy of a run folder without the dataset or LibTorch.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace fer::report {

// File names inside the report folder (report.md links them relatively).
inline constexpr const char* kReportMarkdown = "report.md";
inline constexpr const char* kLossPlot = "loss.png";            // train/val loss per epoch
inline constexpr const char* kAccuracyPlot = "accuracy.png";    // train/val accuracy per epoch
inline constexpr const char* kSchedulePlot = "schedule.png";    // lr and Adam beta1 per step
inline constexpr const char* kConfusionPlot = "confusion.png";  // heat map with counts
inline constexpr const char* kPerClassPlot = "per_class.png";   // precision/recall/F1 bars

struct ReportOptions {
  std::filesystem::path run_dir;  // fer-dist-train --out folder
  std::filesystem::path out_dir;  // where to write; empty = <run_dir>/report
};

struct ReportResult {
  std::filesystem::path out_dir;
  std::filesystem::path markdown;
  std::vector<std::filesystem::path> images;  // the plots written, in report order
  std::vector<std::string> warnings;          // skipped lines, missing parts (also in report.md)
};

// Writes the plots and report.md, each file atomically (a reader never sees half a PNG). A run
// without summary.json (still training, or stopped) still gets the per-epoch plots. Throws
// DataError when run_dir has no readable metrics.jsonl or it holds no records, IoError when the
// report folder cannot be written.
ReportResult write_report(const ReportOptions& options);

}  // namespace fer::report
