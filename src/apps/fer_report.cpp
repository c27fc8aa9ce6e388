// fer-report: plots and report.md for a fer-dist-train run folder (see --help). Flags only; the
// work is in src/report.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "common/errors.h"
#include "report/report.h"

using namespace fer;

int main(int argc, char** argv) {
  CLI::App app{
      "fer-report: PNG plots (loss, accuracy, lr/beta1, confusion matrix, per-class "
      "scores) and report.md for a fer-dist-train run folder"};
  app.footer(
      "\nReads RUN_DIR/metrics.jsonl and RUN_DIR/summary.json; writes RUN_DIR/report/ (report.md,\n"
      "loss.png, accuracy.png, schedule.png, confusion.png, per_class.png). fer-dist-train runs\n"
      "it at the end of training unless --no-report.\n\n"
      "Examples:\n"
      "  fer-report runs/demo\n"
      "  fer-report runs/demo --out runs/demo/report-copy -q\n\n"
      "Exit codes: 0 ok, 2 usage, 3 not a run folder (no readable metrics.jsonl or no records),\n"
      "4 I/O error writing the report.");
  report::ReportOptions options;
  bool quiet = false;
  app.add_option("RUN_DIR", options.run_dir, "fer-dist-train --out folder")->required();
  app.add_option("--out", options.out_dir, "report folder (default: RUN_DIR/report)");
  app.add_flag("-q,--quiet", quiet, "print only the path of report.md");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : static_cast<int>(ExitCode::kUsage);
  }
  try {
    const report::ReportResult result = report::write_report(options);
    for (const auto& w : result.warnings) std::fprintf(stderr, "fer-report: note: %s\n", w.c_str());
    if (!quiet) {
      for (const auto& image : result.images) std::printf("%s\n", image.c_str());
    }
    std::printf("%s\n", result.markdown.c_str());
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "fer-report: error: %s\n", e.what());
    if (!e.hint().empty()) std::fprintf(stderr, "  hint: %s\n", e.hint().c_str());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fer-report: internal error: %s\n", e.what());
    return static_cast<int>(ExitCode::kFailure);
  }
}
