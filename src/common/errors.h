// Typed errors and check macros shared by every fer-dist library and tool.
//
// Each error type maps to one documented process exit code, so a main only has to catch
// fer::Error, print what() (and the hint) on one line, and return exit_code().
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace fer {

// Process exit codes of every fer-dist executable (documented in the README and in --help).
enum class ExitCode : int {
  kOk = 0,
  kFailure = 1,      // unexpected internal error (a bug)
  kUsage = 2,        // bad command line or config (ConfigError)
  kData = 3,         // bad input data: dataset, images, CSV, manifest, shard (DataError)
  kIo = 4,           // file system error: cannot read/write/rename, disk full (IoError)
  kComm = 5,         // a collective failed or timed out (CommError)
  kCheckpoint = 6,   // a checkpoint cannot be written or read (CheckpointError)
  kDiverged = 7,     // training produced a non-finite loss (TrainingError)
  kPreempted = 75,   // fer-dist-train got SIGUSR1/SIGTERM: checkpoint written, requeue and
                     // --resume auto (75 is sysexits' EX_TEMPFAIL: "try again later")
  kInterrupted = 130 // SIGINT (tools: also SIGTERM) before the work finished; nothing partial
                     // left behind (fer-dist-train: a checkpoint of the current step is written)
};

class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& what, std::string hint = {})
      : std::runtime_error(what), code_(code), hint_(std::move(hint)) {}
  ExitCode code() const { return code_; }
  int exit_code() const { return static_cast<int>(code_); }
  // One line telling the user how to fix it; may be empty.
  const std::string& hint() const { return hint_; }

 private:
  ExitCode code_;
  std::string hint_;
};

// Bad input files: images, CSV rows, manifests, shards.
class DataError : public Error {
 public:
  explicit DataError(const std::string& what, std::string hint = {})
      : Error(ExitCode::kData, what, std::move(hint)) {}
};

// Bad command-line flags or configuration (unknown key, wrong type, violated invariant).
class ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& what, std::string hint = {})
      : Error(ExitCode::kUsage, what, std::move(hint)) {}
};

// The file system refused: cannot create, write, rename or read a path.
class IoError : public Error {
 public:
  explicit IoError(const std::string& what, std::string hint = {})
      : Error(ExitCode::kIo, what, std::move(hint)) {}
};

// A collective failed, timed out, or the ranks disagree.
class CommError : public Error {
 public:
  explicit CommError(const std::string& what, std::string hint = {})
      : Error(ExitCode::kComm, what, std::move(hint)) {}
};

// A checkpoint cannot be written, read or does not fit the model.
class CheckpointError : public Error {
 public:
  explicit CheckpointError(const std::string& what, std::string hint = {})
      : Error(ExitCode::kCheckpoint, what, std::move(hint)) {}
};

// Training cannot go on: a non-finite loss or gradient.
class TrainingError : public Error {
 public:
  explicit TrainingError(const std::string& what, std::string hint = {})
      : Error(ExitCode::kDiverged, what, std::move(hint)) {}
};

// Thrown when a cooperative cancellation (SIGINT/SIGTERM) stops long work.
class Interrupted : public Error {
 public:
  Interrupted() : Error(ExitCode::kInterrupted, "interrupted") {}
};

// Thrown by the trainer when a preemption signal (SIGUSR1/SIGTERM) stopped it after every rank
// agreed on the step and the checkpoint of that step was written: the job should be requeued.
class Preempted : public Error {
 public:
  Preempted() : Error(ExitCode::kPreempted, "preempted") {}
};

namespace detail {
// Builds a message from any streamable parts: concat("read ", n, " bytes").
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}
// "file.cpp:42" for error messages (basename only, no build-machine paths).
std::string source_location(const char* file, int line);
}  // namespace detail

}  // namespace fer

// FER_CHECK(cond, ErrorType, parts...): throws ErrorType("<parts> [file:line]") when cond is false.
#define FER_CHECK(cond, ErrorType, ...)                                                    \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      throw ErrorType(::fer::detail::concat(__VA_ARGS__, " [",                             \
                                            ::fer::detail::source_location(__FILE__, __LINE__), \
                                            "]"));                                         \
    }                                                                                      \
  } while (0)
