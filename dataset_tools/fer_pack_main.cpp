// fer-pack: ImageFolder trees or Kaggle's fer2013.csv -> dataset format v1 (sharded HDF5 +
// manifest.json); `verify` and `inspect` for packed datasets. Flags only: the work is in pack*.cpp.
#include <CLI/CLI.hpp>
#include <opencv2/core/utils/logger.hpp>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>

#include "common/cancel.h"
#include "common/errors.h"
#include "common/logging.h"
#include "data/dataset.h"
#include "data/manifest.h"
#include "pack.h"
#include "pack_sources.h"

namespace fs = std::filesystem;
using namespace fer;
using namespace fer::tools;

namespace {

constexpr const char* kExitCodes =
    "Exit codes:\n"
    "  0    success\n"
    "  2    usage error (bad flags; OUT exists without --overwrite)\n"
    "  3    bad input data (layout, class sets, undecodable file with --strict, bad CSV row\n"
    "       with --strict, corrupt shard found by verify)\n"
    "  4    I/O error (cannot read or write, disk full)\n"
    "  130  interrupted (Ctrl-C): no OUT and no temporary folder are left behind\n";

std::vector<int> parse_split(const std::string& text) {
  std::vector<int> parts;
  std::size_t start = 0;
  while (true) {
    const auto slash = text.find('/', start);
    const std::string part = text.substr(start, slash - start);
    try {
      std::size_t used = 0;
      parts.push_back(std::stoi(part, &used));
      if (used != part.size()) throw std::invalid_argument(part);
    } catch (const std::exception&) {
      throw ConfigError("--split '" + text + "' is not of the form TRAIN/VAL/TEST, e.g. 80/10/10");
    }
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  if (parts.size() != 3) {
    throw ConfigError("--split '" + text + "' needs three parts TRAIN/VAL/TEST, e.g. 80/10/10");
  }
  return parts;
}

struct CommonFlags {
  PackOptions options;
  std::string split = "80/10/10";
  std::string in;
  std::string out;
  bool quiet = false;
};

void add_pack_flags(CLI::App* cmd, CommonFlags* f, const char* in_name, const char* in_help) {
  cmd->add_option(in_name, f->in, in_help)->required();
  cmd->add_option("OUT", f->out, "output dataset folder (created; must not exist)")->required();
  cmd->add_option("--size", f->options.size, "output image side in pixels")->capture_default_str();
  cmd->add_option("--channels", f->options.channels, "1 = grayscale, 3 = RGB")
      ->capture_default_str();
  cmd->add_option("--split", f->split,
                  "train/val/test proportions for sources without splits")
      ->capture_default_str();
  cmd->add_option("--seed", f->options.seed, "seed for split assignment and shard order")
      ->capture_default_str();
  auto* shards = cmd->add_option("--shards", f->options.shards, "shards per split");
  auto* shard_mb = cmd->add_option("--shard-mb", f->options.shard_mb,
                                   "target shard size in MiB (when --shards is not given)")
                       ->capture_default_str();
  shards->excludes(shard_mb);
  cmd->add_option("--threads", f->options.threads, "decode threads (0 = all cores)")
      ->capture_default_str();
  cmd->add_option("--compress", f->options.compress, "deflate level 0-9 (0 = none)")
      ->capture_default_str();
  cmd->add_flag("--strict", f->options.strict,
                "fail on the first undecodable image or malformed row instead of skipping it");
  cmd->add_flag("--overwrite", f->options.overwrite, "replace OUT if it exists");
  cmd->add_flag("-q,--quiet", f->quiet, "no progress output");
}

void print_summary(const PackResult& r, const PreparedInput& in, const std::string& out) {
  std::string per_split;
  for (const auto& [name, s] : r.manifest.splits) {
    per_split += (per_split.empty() ? "" : ", ") + name + " " + std::to_string(s.count);
  }
  std::printf("fer-pack: wrote %lld images (%s) to %s in %.1f s (%.0f images/s)\n",
              static_cast<long long>(r.written), per_split.c_str(), out.c_str(), r.seconds,
              r.seconds > 0 ? r.written / r.seconds : 0.0);
  if (r.skipped > 0) {
    std::printf("fer-pack: skipped %lld undecodable image(s) (warnings above name them)\n",
                static_cast<long long>(r.skipped));
  }
  if (in.skipped_rows > 0) {
    std::printf("fer-pack: skipped %lld malformed CSV row(s) (warnings above name them)\n",
                static_cast<long long>(in.skipped_rows));
  }
  if (in.ignored_files > 0) {
    std::printf("fer-pack: ignored %lld non-image or hidden file(s)\n",
                static_cast<long long>(in.ignored_files));
  }
}

int run_pack(CommonFlags& f, bool csv) {
  f.options.split_parts = parse_split(f.split);
  f.options.progress = !f.quiet;
  PreparedInput in = csv ? prepare_fer2013_csv(f.in, f.options)
                         : prepare_image_folder(f.in, f.options);
  const PackResult result = pack_dataset(*in.source, in.plan, in.meta, f.options, f.out);
  print_summary(result, in, f.out);
  return 0;
}

int run_verify(const std::string& dir) {
  const VerifyReport report = verify_dataset(dir, [](const std::string& shard) {
    spdlog::debug("verifying {}", shard);
  });
  for (const auto& problem : report.problems) std::printf("BAD %s\n", problem.c_str());
  if (!report.ok()) {
    std::printf("fer-pack verify: %zu problem(s) in %d shard(s) of %s\n", report.problems.size(),
                report.shards_checked, dir.c_str());
    return static_cast<int>(ExitCode::kData);
  }
  std::printf("fer-pack verify: %s OK (%d shards: checksums, counts, shapes, labels)\n",
              dir.c_str(), report.shards_checked);
  return 0;
}

int run_inspect(const std::string& dir) {
  const Manifest m = load_manifest(dir);
  std::printf("dataset   %s\n", dir.c_str());
  std::printf("source    %s %s (fer-pack %s)\n", m.source_kind.c_str(), m.source_path.c_str(),
              m.packer_version.c_str());
  std::printf("image     %dx%d, %d channel(s)\n", m.height, m.width, m.channels);
  for (int c = 0; c < m.channels; ++c) {
    std::printf("channel %d mean %.6f std %.6f (train, [0,1] units)\n", c, m.mean[c], m.std[c]);
  }
  std::printf("\n%-12s", "class");
  for (const auto& [name, s] : m.splits) std::printf("%10s", name.c_str());
  std::printf("\n");
  for (std::size_t k = 0; k < m.classes.size(); ++k) {
    std::printf("%-12s", m.classes[k].c_str());
    for (const auto& [name, s] : m.splits) {
      std::printf("%10lld", static_cast<long long>(s.class_counts[k]));
    }
    std::printf("\n");
  }
  std::printf("%-12s", "total");
  for (const auto& [name, s] : m.splits) std::printf("%10lld", static_cast<long long>(s.count));
  std::printf("\n\nshards\n");
  for (const auto& [name, s] : m.splits) {
    for (const auto& shard : s.shards) {
      std::printf("  %-28s %8lld images %10.2f MiB  %s\n", shard.file.c_str(),
                  static_cast<long long>(shard.count), shard.bytes / 1048576.0,
                  shard.checksum.substr(0, 19).c_str());
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fer-pack " FER_VERSION
               ": pack facial-expression images into a versioned, checksummed, sharded HDF5 "
               "dataset (manifest.json + <split>-NNNNN-of-MMMMM.h5)"};
  app.footer(std::string("\nExamples:\n"
                         "  fer-pack imagefolder ~/fer2013 data/fer2013 --threads 2\n"
                         "  fer-pack csv fer2013.csv data/fer2013\n"
                         "  fer-pack verify data/fer2013\n\n") +
             kExitCodes);
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error")->capture_default_str();

  CommonFlags folder_flags, csv_flags;
  auto* folder = app.add_subcommand(
      "imagefolder",
      "pack an ImageFolder: SRC/{train,val|validation|valid,test}/<class>/* (val carved from "
      "train when missing) or SRC/<class>/* (split by --split)");
  add_pack_flags(folder, &folder_flags, "SRC", "ImageFolder root");
  folder->add_option("--val-fraction", folder_flags.options.val_fraction,
                     "share of train carved out as val when SRC has no val/ folder")
      ->capture_default_str();
  auto* csv = app.add_subcommand(
      "csv", "pack Kaggle's fer2013.csv (emotion,pixels,Usage; Training/PublicTest/PrivateTest "
             "-> train/val/test; no Usage column -> --split)");
  add_pack_flags(csv, &csv_flags, "CSV", "path to fer2013.csv");
  std::string verify_dir, inspect_dir;
  auto* verify = app.add_subcommand(
      "verify", "re-check every shard (checksum, count, shapes, labels) against the manifest");
  verify->add_option("DATASET", verify_dir, "packed dataset folder")->required();
  auto* inspect =
      app.add_subcommand("inspect", "print classes, per-split and per-class counts, mean/std, "
                                    "shards");
  inspect->add_option("DATASET", inspect_dir, "packed dataset folder")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : static_cast<int>(ExitCode::kUsage);
  }

  try {
    LogOptions log_options;
    log_options.level = log_level;
    init_logging(log_options);
    // Bad files are reported once by fer-pack itself; OpenCV's own chatter adds nothing.
    cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT);
    install_cancel_handlers();
    if (folder->parsed()) return run_pack(folder_flags, false);
    if (csv->parsed()) return run_pack(csv_flags, true);
    if (verify->parsed()) return run_verify(verify_dir);
    if (inspect->parsed()) return run_inspect(inspect_dir);
  } catch (const Interrupted&) {
    std::fprintf(stderr, "fer-pack: interrupted: nothing was written\n");
    return static_cast<int>(ExitCode::kInterrupted);
  } catch (const Error& e) {
    std::fprintf(stderr, "fer-pack: error: %s\n", e.what());
    if (!e.hint().empty()) std::fprintf(stderr, "  hint: %s\n", e.hint().c_str());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fer-pack: internal error: %s\n", e.what());
    return static_cast<int>(ExitCode::kFailure);
  }
  return static_cast<int>(ExitCode::kUsage);
}
