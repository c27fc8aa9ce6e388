// launch/slurm/train_cpu.sbatch on a real Slurm: a one-node cluster (munged, slurmctld, slurmd
// from Debian's slurm-wlm) started by tests/slurm/local_slurm.sh under a temporary folder for
// each test and stopped by its pid files at the end. Three behaviours:
//   - the job with 2 tasks completes: metrics from 2 ranks, a final checkpoint;
//   - `scancel --signal=USR1` mid-run: the ranks checkpoint and exit 75, the script requeues the
//     job, the requeued job resumes and ends with the same steps and metrics as the first;
//   - a rank that dies once: the step ends at once (not after dist.comm_timeout_s), the script
//     starts it again within the allocation (FER_MAX_RESTARTS) and the job completes.
// Every wait is bounded; a failure prints the job's logs and the daemons' logs.
// Label `slurm` (ctest -LE slurm leaves them out).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "common/fs_util.h"
#include "metrics_util.h"
#include "test_util.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace fer {
namespace {

using testing::numeric_metrics;
using testing::quote;
using testing::run_command;
using testing::TempFolder;
using testing::tool;

constexpr int kTasks = 2;
constexpr int kPerRankBatch = 8;    // 112 train images / (2 x 8) = 7 steps per epoch
constexpr int kEpochs = 24;  // 168 steps: long enough to signal mid-run on a fast, quiet machine
constexpr int kJobTimeoutS = 240;   // per job, requeue included
constexpr int kExitPreempted = 75;  // ExitCode::kPreempted
constexpr int kCommTimeoutS = 60;   // dist.comm_timeout_s of the runs

std::string script(const std::string& name) {
  return std::string(FER_SOURCE_DIR) + "/" + name;
}

std::string tail_of(const fs::path& file, std::size_t chars = 6000) {
  std::ifstream in(file);
  if (!in) return "(no " + file.string() + ")\n";
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() > chars) text = "..." + text.substr(text.size() - chars);
  return "==== " + file.string() + "\n" + text + "\n";
}

// "Key=Value" of `scontrol show job -o`.
std::string field(const std::string& record, const std::string& key) {
  const std::regex re("(^|\\s)" + key + "=(\\S*)");
  std::smatch m;
  return std::regex_search(record, m, re) ? m[2].str() : "";
}


std::int64_t last_step(const fs::path& run) {
  std::int64_t step = -1;
  std::ifstream in(run / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    try {
      step = std::max<std::int64_t>(step, json::parse(line).value("step", std::int64_t{-1}));
    } catch (const json::exception&) {
      // a line being written
    }
  }
  return step;
}

class SlurmTrain : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* bin : {"sbatch", "slurmctld", "slurmd", "munged"}) {
      if (run_command(std::string("command -v ") + bin).exit_code != 0) {
        GTEST_SKIP() << "\n\n**** SLURM TESTS NOT RUN: " << bin
                     << " is not installed. Run launch/install-deps.sh (slurm-wlm, munge), or "
                        "leave these tests out with `ctest -LE slurm`. ****\n";
      }
    }
    if (::geteuid() != 0) {
      GTEST_SKIP() << "\n\n**** SLURM TESTS NOT RUN: the local cluster needs root (slurmd starts "
                      "jobs as their user). Leave them out with `ctest -LE slurm`. ****\n";
    }
    tmp_ = std::make_unique<TempFolder>("slurm");  // short: Unix socket paths under it
    cluster_ = *tmp_ / "cluster";
    auto r = run_command(quote(script("tests/slurm/local_slurm.sh")) + " start " +
                         quote(cluster_));
    started_ = true;  // stop what did start, even when start failed half-way
    ASSERT_EQ(r.exit_code, 0) << "the local Slurm cluster did not start:\n" << r.output
                              << daemon_logs();
    env_ = "SLURM_CONF=" + quote(cluster_ / "slurm.conf") +
           " OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
           "FER_ROOT=" + quote(FER_SOURCE_DIR) + " FER_BIN=" + quote(tool("fer-dist-train")) + " ";

    r = testing::make_packed_dataset(tmp_->path(), "--per-class 20 --size 16 --seed 6",
                                     "--size 16");  // 112 train images
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::ofstream(*tmp_ / "tiny.yaml")
        << "model: {width: 0.0625, dropout: 0.1}\n"
           "train: {epochs: " << kEpochs << ", batch_size: " << kPerRankBatch
        << ", log_every: 1, threads: 1}\n"
           "data: {workers: 1}\n"
           "checkpoint: {keep_last: 2}\n"
           "dist: {comm_timeout_s: " << kCommTimeoutS << "}\n";
  }

  void TearDown() override {
    if (started_) {
      auto r = run_command(quote(script("tests/slurm/local_slurm.sh")) + " stop " +
                           quote(cluster_));
      EXPECT_EQ(r.exit_code, 0) << r.output;
    }
  }

  std::string daemon_logs() const {
    std::string out;
    for (const char* name : {"slurmctld.log", "slurmd.log", "munged.log"}) {
      out += tail_of(cluster_ / "log" / name, 3000);
    }
    return out;
  }

  // The job's output file, the run folder's logs and the daemons' logs.
  std::string job_logs(const fs::path& run) const {
    std::string out;
    for (const auto& e : fs::directory_iterator(tmp_->path())) {
      if (e.path().extension() == ".out") out += tail_of(e.path());
    }
    if (fs::exists(run / "logs")) {
      for (const auto& e : fs::directory_iterator(run / "logs")) out += tail_of(e.path());
    }
    return out + daemon_logs();
  }

  // sbatch train_cpu.sbatch with kTasks tasks and `env` (VAR=value ...); returns the job id.
  std::string submit(const fs::path& run, const std::string& env = "") {
    auto r = run_command(env_ + env + " sbatch --parsable --ntasks=" + std::to_string(kTasks) +
                         " --output=" + quote(*tmp_ / "job-%j.out") + " --chdir=" +
                         quote(tmp_->path()) + " " +
                         quote(script("launch/slurm/train_cpu.sbatch")) + " " +
                         quote(*tmp_ / "tiny.yaml") + " " + quote(*tmp_ / "data") + " " +
                         quote(run));
    EXPECT_EQ(r.exit_code, 0) << r.output << daemon_logs();
    std::string id = r.output.substr(0, r.output.find_first_of(";\n"));
    EXPECT_FALSE(id.empty()) << r.output;
    return id;
  }

  std::string show_job(const std::string& id) {
    return run_command(env_ + "scontrol show job -o " + id).output;
  }

  // Waits until the job has finished (bounded); returns its `scontrol show job` record.
  std::string wait_for_end(const std::string& id, const fs::path& run) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kJobTimeoutS);
    std::string record;
    while (std::chrono::steady_clock::now() < deadline) {
      record = show_job(id);
      const std::string state = field(record, "JobState");
      if (state == "COMPLETED" || state == "FAILED" || state == "CANCELLED" ||
          state == "TIMEOUT" || state == "NODE_FAIL" || state == "OUT_OF_MEMORY" ||
          state == "BOOT_FAIL" || state == "DEADLINE") {
        return record;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    ADD_FAILURE() << "job " << id << " did not finish within " << kJobTimeoutS << " s:\n"
                  << record << "\n" << job_logs(run);
    run_command(env_ + "scancel " + id);
    return record;
  }

  std::unique_ptr<TempFolder> tmp_;
  fs::path cluster_;
  std::string env_;
  bool started_ = false;
};

TEST_F(SlurmTrain, SbatchCpuJobWithTwoTasksCompletesWithMetricsOfTwoRanksAndAFinalCheckpoint) {
  const fs::path run = *tmp_ / "run";
  const std::string id = submit(run);
  ASSERT_FALSE(id.empty());
  const std::string record = wait_for_end(id, run);
  ASSERT_EQ(field(record, "JobState"), "COMPLETED") << record << job_logs(run);
  EXPECT_EQ(field(record, "ExitCode"), "0:0") << record;
  EXPECT_EQ(field(record, "Restarts"), "0") << record;

  const json summary = json::parse(read_file(run / "summary.json"));
  EXPECT_EQ(summary["world_size"], kTasks) << job_logs(run);
  EXPECT_EQ(summary["steps"], kEpochs * 7);
  EXPECT_TRUE(summary["test"].contains("accuracy"));
  for (int rank = 0; rank < kTasks; ++rank) {
    EXPECT_TRUE(fs::exists(run / "logs" / ("rank-" + std::to_string(rank) + ".log"))) << rank;
  }
  int epochs = 0, steps = 0;
  for (const auto& m : numeric_metrics(run)) {
    epochs += m["type"] == "epoch";
    steps += m["type"] == "step";
  }
  EXPECT_EQ(epochs, kEpochs);
  EXPECT_EQ(steps, kEpochs * 7);
  EXPECT_TRUE(fs::exists(run / "checkpoints" / checkpoint_file_name(kEpochs * 7)))
      << job_logs(run);
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "best.pt"));
  const std::string job_log = read_file(run / "logs" / ("slurm-" + id + "-try0.log"));
  EXPECT_NE(job_log.find("2 rank(s), control mpi"), std::string::npos) << job_log;
}

TEST_F(SlurmTrain, UsrOneMidRunRequeuesTheJobWhichResumesToTheSameStepsAndMetrics) {
  // The reference: the same job, not disturbed.
  const fs::path reference = *tmp_ / "reference";
  const std::string ref_id = submit(reference);
  ASSERT_FALSE(ref_id.empty());
  ASSERT_EQ(field(wait_for_end(ref_id, reference), "JobState"), "COMPLETED")
      << job_logs(reference);

  const fs::path run = *tmp_ / "preempted";
  const std::string id = submit(run);
  ASSERT_FALSE(id.empty());
  // Signal once a few steps are done (bounded wait).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kJobTimeoutS);
  while (last_step(run) < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const std::int64_t signalled_after = last_step(run);
  ASSERT_GE(signalled_after, 2) << "the job did not start training in time\n"
                                << show_job(id) << job_logs(run);
  ASSERT_LT(signalled_after, kEpochs * 7) << "the job ended before it could be signalled";
  auto r = run_command(env_ + "scancel --signal=USR1 " + id);
  ASSERT_EQ(r.exit_code, 0) << r.output;

  const std::string record = wait_for_end(id, run);
  ASSERT_EQ(field(record, "JobState"), "COMPLETED") << record << job_logs(run);
  EXPECT_EQ(field(record, "Restarts"), "1") << record << job_logs(run);

  // The first try stopped with a checkpoint and asked for the requeue; the second resumed.
  const std::string try0 = read_file(run / "logs" / ("slurm-" + id + "-try0.log"));
  EXPECT_NE(try0.find("preempted (SIGUSR1/SIGTERM): checkpoint written at step"),
            std::string::npos)
      << try0;
  EXPECT_NE(try0.find("requeueing job " + id), std::string::npos) << try0;
  const fs::path try1_path = run / "logs" / ("slurm-" + id + "-try1.log");
  ASSERT_TRUE(fs::exists(try1_path)) << job_logs(run);
  const std::string try1 = read_file(try1_path);
  EXPECT_NE(try1.find("resuming from"), std::string::npos) << try1;
  EXPECT_NE(try1.find("fer-dist-train exited with 0"), std::string::npos) << try1;
  std::printf("preempted after step >= %lld; %s\n", static_cast<long long>(signalled_after),
              try1.substr(try1.find("resuming from"), 120).c_str());

  // Same total steps and the same metrics (CPU is deterministic), to the bit.
  const json summary = json::parse(read_file(run / "summary.json"));
  const json ref_summary = json::parse(read_file(reference / "summary.json"));
  EXPECT_EQ(summary["steps"], kEpochs * 7);
  EXPECT_EQ(summary["steps"], ref_summary["steps"]);
  EXPECT_EQ(summary["test"], ref_summary["test"]);
  EXPECT_EQ(summary["best_val_accuracy"], ref_summary["best_val_accuracy"]);
  EXPECT_EQ(numeric_metrics(run), numeric_metrics(reference));
}

// Seconds of a `scontrol show job` RunTime ([D-]HH:MM:SS).
int run_seconds(const std::string& record) {
  std::smatch m;
  const std::string text = field(record, "RunTime");
  if (!std::regex_match(text, m, std::regex("(?:(\\d+)-)?(\\d+):(\\d+):(\\d+)"))) return -1;
  const int days = m[1].matched ? std::stoi(m[1].str()) : 0;
  return ((days * 24 + std::stoi(m[2].str())) * 60 + std::stoi(m[3].str())) * 60 +
         std::stoi(m[4].str());
}

// A FER_BIN that runs `first_start` (shell) the first time each rank starts (one marker file per
// rank), then fer-dist-train: a one-off crash that the restart does not repeat.
fs::path fault_once_wrapper(const fs::path& dir, const std::string& first_start) {
  const fs::path marks = dir / "marks", wrapper = dir / "fault_once.sh";
  fs::create_directories(marks);
  std::ofstream(wrapper) << "#!/bin/sh\n"
                            "mark="
                         << quote(marks)
                         << "/rank-${SLURM_PROCID:-0}\n"
                            "if [ ! -e \"$mark\" ]; then\n"
                            "  : > \"$mark\"\n  "
                         << first_start
                         << "\n"
                            "fi\n"
                            "exec "
                         << quote(tool("fer-dist-train")) << " \"$@\"\n";
  fs::permissions(wrapper, fs::perms::owner_all, fs::perm_options::add);
  return wrapper;
}

TEST_F(SlurmTrain, ARankThatDiesOnceEndsTheStepAndTheJobRestartsWithinItsAllocation) {
  // Rank 1 exits abruptly (code 99) at step 9, after the checkpoint of step 7.
  fs::create_directories(*tmp_ / "mid_run");
  const fs::path mid_run =
      fault_once_wrapper(*tmp_ / "mid_run", "export FER_FAULT_INJECT=kind:exit,rank:1,step:9");
  const fs::path run = *tmp_ / "crashed";
  const std::string id = submit(run, "FER_BIN=" + quote(mid_run));
  ASSERT_FALSE(id.empty());
  const std::string record = wait_for_end(id, run);
  ASSERT_EQ(field(record, "JobState"), "COMPLETED") << record << job_logs(run);
  EXPECT_EQ(field(record, "Restarts"), "0") << record;  // restarted in place, not requeued
  // The survivor did not wait for the dead rank until the communication timeout.
  EXPECT_LT(run_seconds(record), kCommTimeoutS) << record << job_logs(run);

  const std::string log = read_file(run / "logs" / ("slurm-" + id + "-try0.log"));
  const auto restart = log.find("restart 1 of 2 in this allocation");
  ASSERT_NE(restart, std::string::npos) << log;
  const auto line = log.rfind('\n', restart) + 1;
  std::printf("job ran %d s; %s\n", run_seconds(record),
              log.substr(line, log.find('\n', restart) - line).c_str());
  EXPECT_EQ(log.find("restart 2 of 2"), std::string::npos) << log;
  EXPECT_NE(log.find("resuming from"), std::string::npos) << log;
  EXPECT_NE(log.find("fer-dist-train exited with 0"), std::string::npos) << log;
  const json summary = json::parse(read_file(run / "summary.json"));
  EXPECT_EQ(summary["steps"], kEpochs * 7);
  EXPECT_EQ(summary["world_size"], kTasks);

  // Rank 1 fails before it joins the MPI job (a bad node): rank 0 would wait in MPI_Init with no
  // timeout of ours; srun --kill-on-bad-exit ends the step, the restart completes the job.
  fs::create_directories(*tmp_ / "at_start");
  const fs::path at_start =
      fault_once_wrapper(*tmp_ / "at_start", "[ \"$SLURM_PROCID\" = 1 ] && exit 3");
  const fs::path run2 = *tmp_ / "failed_at_start";
  const std::string id2 = submit(run2, "FER_BIN=" + quote(at_start));
  ASSERT_FALSE(id2.empty());
  const std::string record2 = wait_for_end(id2, run2);
  ASSERT_EQ(field(record2, "JobState"), "COMPLETED") << record2 << job_logs(run2);
  EXPECT_LT(run_seconds(record2), kCommTimeoutS) << record2 << job_logs(run2);
  const std::string log2 = read_file(run2 / "logs" / ("slurm-" + id2 + "-try0.log"));
  EXPECT_NE(log2.find("restart 1 of 2 in this allocation"), std::string::npos) << log2;
}

}  // namespace
}  // namespace fer
