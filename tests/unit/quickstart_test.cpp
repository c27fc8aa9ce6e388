// launch/quickstart.sh, the README's first command, run on a reduced size: its steps after the
// set-up (fer-synth, fer-pack, fer-dist-train under mpirun -np 2, test evaluation, report) with
// the tools of this build (SKIP_SETUP=1 skips installing and building).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <regex>
#include <string>

#include "common/fs_util.h"
#include "test_util.h"

namespace fer {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::quote;
using testing::run_command;
using testing::TempFolder;

TEST(Quickstart, RunsEndToEndOnAReducedSizeAndTellsWhereEverythingIs) {
  TempFolder work("quickstart");
  const std::string command =
      "SKIP_SETUP=1 BUILD_DIR=" + quote(fs::path(FER_TOOLS_DIR).parent_path()) +
      " WORK_DIR=" + quote(work.path()) + " PER_CLASS=25 EPOCHS=1 NP=2 JOBS=1 bash " +
      quote(fs::path(FER_SOURCE_DIR) / "launch" / "quickstart.sh") + " 2>&1";
  const CommandResult result = run_command(command);
  ASSERT_EQ(result.exit_code, 0) << result.output;

  std::smatch match;
  ASSERT_TRUE(std::regex_search(result.output, match,
                                std::regex("run folder +(\\S+)")))
      << result.output;
  const fs::path run = match[1].str();
  ASSERT_TRUE(fs::exists(run / "summary.json"));
  // What ran, not what the script said it would run: two ranks trained.
  const auto summary = nlohmann::json::parse(read_file(run / "summary.json"));
  EXPECT_EQ(summary["world_size"], 2) << summary.dump();
  EXPECT_EQ(summary["device"], "cpu") << summary.dump();
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "best.pt"));
  EXPECT_TRUE(fs::exists(run / "report" / "report.md")) << result.output;
  EXPECT_TRUE(std::regex_search(result.output,
                                std::regex("test accuracy of the best checkpoint: [01]\\.[0-9]+")))
      << result.output;

  // Re-runnable: the second run reuses the images and the packed dataset.
  const CommandResult again = run_command(command);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("reusing"), std::string::npos) << again.output;
}

}  // namespace
}  // namespace fer
