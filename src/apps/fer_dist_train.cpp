// fer-dist-train: trains ResNet9 on a packed FER dataset (see --help). Flags only; the recipe is
// in src/train.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>

#include "common/allocator.h"
#include "common/cancel.h"
#include "common/errors.h"
#include "common/logging.h"
#include "common/subprocess.h"
#include "data/manifest.h"
#include "dist/mpi_context.h"
#include "dist/planes.h"
#include "train/device.h"
#include "train/run.h"
#include "train/train_config.h"

using namespace fer;

namespace {

constexpr const char* kExitCodes =
    "Exit codes:\n"
    "  0    success\n"
    "  2    usage or config error (unknown key, wrong type, existing run without --resume)\n"
    "  3    bad dataset (missing folder, wrong manifest version or image shape, corrupt shard)\n"
    "  4    I/O error (cannot write the run folder, disk full)\n"
    "  5    communication failure between ranks\n"
    "  6    checkpoint error (unreadable, another architecture, cannot be written)\n"
    "  7    training diverged (non-finite loss; the last good checkpoint is kept)\n"
    "  75   preempted (SIGUSR1/SIGTERM, e.g. Slurm preemption or time limit): every rank\n"
    "       stopped at the same step and its checkpoint was written; requeue the job and run\n"
    "       it again with --resume auto (launch/slurm/*.sbatch do this)\n"
    "  130  interrupted (SIGINT): a checkpoint of the current step was written\n";

// Runs fer-report (installed beside this executable) on the finished run. The trainer links no
// OpenCV (DESIGN.md), so the plots are drawn by that tool in a child process. The child gets
// kTimeoutS, then is killed (SIGKILL) and reaped: a finished run never waits on its report
// (issue 16: a report that spun kept the job, and its Slurm allocation, alive). Any failure is
// a warning: the training itself succeeded, and the exit status stays the run's.
void write_report(const std::string& run_dir) {
  // fer-report reads two JSON files and draws five charts in about a second on any run: two
  // minutes is generous for a slow disk and still short next to a training run.
  constexpr double kTimeoutS = 120;
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  const std::filesystem::path report = self.parent_path() / "fer-report";
  if (ec || !std::filesystem::exists(report)) {
#ifdef FER_TRAINER_ONLY
    spdlog::info("report skipped: a trainer-only build has no fer-report (run fer-report {} "
                 "with a full build)", run_dir);
#else
    spdlog::warn("no report: fer-report not found next to fer-dist-train ({})", report.string());
#endif
    return;
  }
  std::fflush(stdout);
  const ChildResult r = run_with_timeout({report.string(), run_dir, "-q"}, kTimeoutS);
  if (r.outcome == ChildOutcome::kTimedOut) {
    spdlog::warn("fer-report {}: the run is complete without its report (run {} {} to retry)",
                 describe(r), report.string(), run_dir);
  } else if (!r.succeeded()) {
    spdlog::warn("no report: fer-report {} (run {} {} to see why); the run is complete",
                 describe(r), report.string(), run_dir);
  }
}

}  // namespace

// The command line (main's flags): what the user asked for.
struct Flags {
  std::string config_path, data_dir, run_dir, resume, device = "auto", eval_only;
  std::string tta = "none";
  std::string log_level = "info";
  bool no_report = false;
  bool validate_only = false;
  std::string timeline;
  CLI::Option* timeline_option = nullptr;  // given: write a timeline (PATH optional)
  std::int64_t timeline_from = -1, timeline_steps = 100;
  std::vector<std::string> overrides;
  int threads = 0;
};

void define_flags(CLI::App& app, Flags& f) {
  app.description("fer-dist-train: train ResNet9 on a fer-pack dataset: one process, or data "
                  "parallel under mpirun/srun (mpirun -np 8 fer-dist-train ...)");
  app.footer(std::string("\nExamples:\n"
                         "  fer-dist-train --config configs/demo_cpu.yaml --data data/synth "
                         "--out runs/demo\n"
                         "  fer-dist-train --config configs/fer2013_resnet9.yaml --data "
                         "data/fer2013 --out runs/r9 --set train.epochs=5\n"
                         "  fer-dist-train --out runs/r9 ... --resume auto\n"
                         "  fer-dist-train --eval-only runs/r9/checkpoints/best.pt --data "
                         "data/fer2013\n"
                         "  fer-dist-train --config configs/fer2013_resnet9.yaml --data "
                         "data/fer2013 --out runs/r9 --device cuda --validate-only\n\n") +
             kExitCodes);
  app.add_option("--config", f.config_path, "YAML recipe (configs/*.yaml); defaults otherwise")
      ->check(CLI::ExistingFile);
  app.add_option("--data", f.data_dir, "packed dataset folder (fer-pack output)")->required();
  app.add_option("--out", f.run_dir, "run folder for config, metrics, checkpoints");
  app.add_option("--set", f.overrides, "override a config key, e.g. --set schedule.max_lr=0.005")
      ->allow_extra_args(false);
  app.add_option("--resume", f.resume, "auto (newest valid checkpoint of --out) or a checkpoint");
  app.add_option("--device", f.device, "auto | cpu | cuda | cuda:N")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& value) {  // the spelling only: which GPUs exist is known at start-up
            const bool ok = value == "auto" || value == "cpu" || value == "cuda" ||
                            (value.rfind("cuda:", 0) == 0 && value.size() > 5 &&
                             value.find_first_not_of("0123456789", 5) == std::string::npos);
            return ok ? std::string() : "must be auto, cpu, cuda or cuda:N, not '" + value + "'";
          },
          "", "device"));
  app.add_option("--threads", f.threads, "intra-op f.threads (default: OMP_NUM_THREADS or all cores)");
  auto* eval_option = app.add_option("--eval-only", f.eval_only,
                                     "evaluate this checkpoint on val and test, then exit");
  app.add_option("--tta", f.tta,
                 "with --eval-only: test-time augmentation none | flip | ten_crop (training runs "
                 "use eval.tta)")
      ->check(CLI::IsMember({"none", "flip", "ten_crop"}))
      ->capture_default_str();
  app.add_flag("--validate-only", f.validate_only,
               "check everything a run checks before it starts and exit 0 without training, "
               "communicating or looking for GPUs: the flags, the config with every --set "
               "(unknown keys are errors), the dataset's manifest, the run folder; prints the "
               "resolved config")
      ->excludes(eval_option);
  app.add_option("--log-level", f.log_level, "trace|debug|info|warn|error")->capture_default_str();
  f.timeline_option =
      app.add_option("--timeline", f.timeline,
                     "write a Chrome-trace f.timeline of every rank (Perfetto, chrome://tracing) "
                     "to PATH (default RUN_DIR/f.timeline.json)")
          ->expected(0, 1)
          ->type_name("[PATH]");
  app.add_option("--timeline-from", f.timeline_from,
                 "first step of the f.timeline (default: the first step this run trains)");
  app.add_option("--timeline-steps", f.timeline_steps,
                 "steps in the f.timeline, with the evaluations and checkpoints between them")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000}))
      ->capture_default_str();
  app.add_flag("--no-report", f.no_report,
               "do not run fer-report (plots + report.md in RUN_DIR/report) at the end");
}

// --validate-only: what a run checks before it starts, without training or communicating.
void check_without_running(const Flags& f, const TrainConfig& config, int rank, int world) {
  const Manifest manifest = load_manifest(f.data_dir);
  const std::filesystem::path run_path(f.run_dir);
  if (f.resume.empty() && std::filesystem::exists(run_path / "config.yaml")) {
    throw ConfigError("run folder " + f.run_dir + " already holds a run",
                      "pass --resume auto to continue it, or choose another --out");
  }
  if (!f.resume.empty() && f.resume != "auto" && !std::filesystem::exists(f.resume)) {
    throw CheckpointError("--resume " + f.resume + ": no such checkpoint");
  }
  if (rank != 0) return;
  TrainConfig resolved = config;
  std::printf(
      "fer-dist-train: --validate-only: valid, nothing trained\n"
      "  dataset  %s: %zu classes, %dx%dx%d\n  run      %s (%s)\n"
      "  device   %s, %d rank(s)\nresolved config:\n%s",
      f.data_dir.c_str(), manifest.classes.size(), manifest.height, manifest.width,
      manifest.channels, f.run_dir.c_str(),
      f.resume.empty() ? "new run" : ("--resume " + f.resume).c_str(), f.device.c_str(), world,
      train_config_yaml(resolved).c_str());
}

// What run_training() needs of the flags, on this rank's device and process groups.
TrainRunOptions run_options(const Flags& f, const torch::Device& device, ProcessGroups* groups) {
  TrainRunOptions options;
  options.data_dir = f.data_dir;
  options.run_dir = f.run_dir;
  options.resume = f.resume;
  options.device = device.str();
  options.threads = f.threads;
  options.groups = groups;
  if (*f.timeline_option) {
    options.timeline.path = f.timeline.empty()
                                ? std::filesystem::path(f.run_dir) / "timeline.json"
                                : std::filesystem::path(f.timeline);
    options.timeline.first_step = f.timeline_from;
    options.timeline.steps = f.timeline_steps;
  }
  return options;
}

int main(int argc, char** argv) {
  CLI::App app;
  Flags f;
  define_flags(app, f);
  try {
    app.parse(argc, argv);
    if (f.eval_only.empty() && f.run_dir.empty()) {
      throw CLI::RequiredError("--out (or --eval-only CKPT)");
    }
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : static_cast<int>(ExitCode::kUsage);
  }

  // MPI first: every rank of the job, a world of one without a launcher.
  std::unique_ptr<MpiContext> mpi;
  try {
    mpi = std::make_unique<MpiContext>(&argc, &argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "fer-dist-train: error: %s\n", e.what());
    return e.exit_code();
  }
  const int world = mpi->size();
  const int rank = mpi->rank();
  try {
    LogOptions log_options;
    log_options.level = f.log_level;
    log_options.rank = rank;
    init_logging(log_options);
    const RuntimeReport runtime = runtime_report(loaded_libraries());  // two CUDAs: refuse
    spdlog::info("{}", runtime.describe());
    if (!runtime.problem.empty()) throw ConfigError(runtime.problem, runtime.hint);
    spdlog::debug("{}", keep_freed_memory_for_reuse());
    install_preemption_handlers();
    if (!f.eval_only.empty()) {
      if (rank == 0) {
        std::printf("%s\n", evaluate_checkpoint(f.eval_only, f.data_dir, f.device, 256, f.threads,
                                                f.tta)
                                .c_str());
      }
      return 0;
    }
    const TrainConfig config = load_train_config(f.config_path, f.overrides);
    if (f.validate_only) {
      check_without_running(f, config, rank, world);
      return 0;
    }
    // Rank -> device (cuda: local rank % visible GPUs), then both communication planes on it.
    PlaneOptions planes;
    planes.device = resolve_device(f.device, mpi->local_rank());
    planes.backend = resolve_backend(config.dist.backend, planes.device);
    planes.timeout_s = config.dist.comm_timeout_s;
    planes.force_collectives = config.dist.force_collectives;
    auto groups = std::make_unique<ProcessGroups>(*mpi, planes);
    if (rank == 0 && world > 1) spdlog::info("{}", groups->describe());
    // (each rank logs its host, local rank and device to its own log: Trainer::setup)
    const TrainRunOptions options = run_options(f, planes.device, groups.get());
    const TrainSummary summary = run_training(config, options);
    if (rank == 0) {
      std::printf("fer-dist-train: %lld steps on %d rank(s), best val accuracy %.4f",
                  static_cast<long long>(summary.steps), world, summary.best_val_accuracy);
      if (summary.test_accuracy >= 0) std::printf(", test accuracy %.4f", summary.test_accuracy);
      std::printf(", %.0f images/s -> %s\n", summary.images_per_second, f.run_dir.c_str());
    }
    groups.reset();
    if (rank == 0 && !f.no_report) {
      mpi.reset();  // MPI finalized before the child process starts
      write_report(f.run_dir);
    }
    return 0;
  } catch (const Preempted&) {
    std::fprintf(stderr, "fer-dist-train: rank %d preempted, checkpoint written (exit %d)\n", rank,
                 static_cast<int>(ExitCode::kPreempted));
    return static_cast<int>(ExitCode::kPreempted);
  } catch (const Interrupted&) {
    std::fprintf(stderr, "fer-dist-train: rank %d interrupted\n", rank);
    return static_cast<int>(ExitCode::kInterrupted);
  } catch (const Error& e) {
    std::string message = e.what();
    if (!e.hint().empty()) message += "\n  hint: " + e.hint();
    // Other ranks may be waiting in a collective for this one: stop the whole job.
    if (world > 1) abort_job(e.exit_code(), "rank " + std::to_string(rank) + ": " + message);
    std::fprintf(stderr, "fer-dist-train: error: %s\n", message.c_str());
    return e.exit_code();
  } catch (const std::exception& e) {
    if (world > 1) abort_job(1, "rank " + std::to_string(rank) + ": internal error: " + e.what());
    std::fprintf(stderr, "fer-dist-train: internal error: %s\n", e.what());
    return static_cast<int>(ExitCode::kFailure);
  }
}
