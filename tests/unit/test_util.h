// Small helpers shared by the test files: temporary folders and running the built tools.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

namespace fer::testing {

// An empty folder unique to this process and test name, removed by the destructor.
class TempFolder {
 public:
  explicit TempFolder(const std::string& name)
      : path_(std::filesystem::path(::testing::TempDir()) /
              ("fer_" + name + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempFolder() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& child) const { return path_ / child; }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `command` through /bin/sh, capturing stdout+stderr.
inline CommandResult run_command(const std::string& command) {
  CommandResult result;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buffer;
  std::size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
    result.output.append(buffer.data(), n);
  }
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

// Path of a tool built by this project (fer-pack, fer-synth, ...).
inline std::string tool(const std::string& name) { return std::string(FER_TOOLS_DIR) + "/" + name; }

inline std::string quote(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

// A small packed dataset for end-to-end tests: `fer-synth ROOT/src SYNTH_ARGS`, then
// `fer-pack imagefolder ROOT/src ROOT/data -q PACK_ARGS`. Returns the first failing command's
// result, else fer-pack's.
inline CommandResult make_packed_dataset(const std::filesystem::path& root,
                                         const std::string& synth_args,
                                         const std::string& pack_args) {
  const CommandResult synth =
      run_command(tool("fer-synth") + " " + quote(root / "src") + " " + synth_args);
  if (synth.exit_code != 0) return synth;
  return run_command(tool("fer-pack") + " imagefolder " + quote(root / "src") + " " +
                     quote(root / "data") + " -q " + pack_args);
}

#ifdef FER_MPIEXEC
// The start of a command line run by mpiexec (FER_MPIEXEC, defined for the multi-rank test
// targets by tests/CMakeLists.txt): oversubscribed, so more ranks than cores fit, and allowed as
// root (CI containers). With np > 0 it ends in "-np NP "; with 0 the caller writes the ranks
// (e.g. MPMD "-np 1 A : -np 1 B").
inline std::string mpiexec(int np = 0) {
  std::string prefix = std::string("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ") +
                       FER_MPIEXEC + " --oversubscribe ";
  if (np > 0) prefix += "-np " + std::to_string(np) + " ";
  return prefix;
}
#endif

}  // namespace fer::testing
