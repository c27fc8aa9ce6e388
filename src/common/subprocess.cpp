#include "common/subprocess.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>

extern char** environ;

namespace fer {
namespace {

using Clock = std::chrono::steady_clock;

// Polls start fast (a child that ends at once costs ~1 ms) and back off to kMaxPoll, so a long
// wait costs ~40 wake-ups a second. Every poll sleeps at least kMinPoll (sleep_for resumes after
// EINTR), which bounds the number of polls by timeout / kMinPoll.
constexpr std::chrono::milliseconds kMinPoll{1};
constexpr std::chrono::milliseconds kMaxPoll{25};
constexpr double kMaxTimeoutS = 1e6;  // ~11 days: keeps the poll count far from overflow

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// waitpid that resumes after EINTR. Returns its result (pid, 0 with WNOHANG, or -1 and errno).
pid_t waitpid_retrying(pid_t pid, int* status, int options) {
  pid_t r = -1;
  // EINTR needs a signal delivered to this thread each time; a handful in a row is already
  // unusual, so a small cap keeps the loop finite without changing behaviour.
  for (int attempt = 0; attempt < 1000; ++attempt) {
    r = ::waitpid(pid, status, options);
    if (r >= 0 || errno != EINTR) return r;
  }
  return r;
}

ChildResult from_status(int status, Clock::time_point start) {
  ChildResult result;
  result.seconds = seconds_since(start);
  if (WIFEXITED(status)) {
    result.outcome = ChildOutcome::kExited;
    result.exit_code = WEXITSTATUS(status);
  } else {
    result.outcome = ChildOutcome::kSignalled;
    result.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  }
  return result;
}

ChildResult lost(int error, Clock::time_point start) {
  ChildResult result;
  result.outcome = ChildOutcome::kLost;
  result.seconds = seconds_since(start);
  result.error = std::string("waitpid: ") + std::strerror(error);
  return result;
}

}  // namespace

ChildResult wait_with_timeout(pid_t pid, double timeout_s) {
  const Clock::time_point start = Clock::now();
  const double timeout = std::isnan(timeout_s) ? 0.0 : std::clamp(timeout_s, 0.0, kMaxTimeoutS);
  const auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout));
  const std::int64_t max_polls =
      static_cast<std::int64_t>(std::ceil(timeout * 1000.0 / kMinPoll.count())) + 1;
  auto pause = kMinPoll;
  int status = 0;
  for (std::int64_t poll = 0; poll <= max_polls; ++poll) {
    const pid_t r = waitpid_retrying(pid, &status, WNOHANG);
    if (r == pid) return from_status(status, start);
    if (r < 0) return lost(errno, start);
    const auto now = Clock::now();
    if (now >= deadline) break;
    std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
    pause = std::min(pause * 2, kMaxPoll);
  }
  // Past the deadline. The child may have ended since the last poll: then this kill is harmless
  // (the zombie is not gone until reaped, so the pid cannot have been reused by another process).
  ::kill(pid, SIGKILL);
  // SIGKILL cannot be caught, so this blocking wait returns once the kernel has torn the child
  // down; only a child stuck in uninterruptible I/O (D state) delays it.
  const pid_t r = waitpid_retrying(pid, &status, 0);
  if (r != pid) return lost(errno, start);
  ChildResult result = from_status(status, start);
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
    result.outcome = ChildOutcome::kTimedOut;
    result.signal = 0;
  }
  return result;
}

ChildResult run_with_timeout(const std::vector<std::string>& argv, double timeout_s) {
  ChildResult result;
  if (argv.empty()) {
    result.error = "no program given";
    return result;
  }
  std::vector<std::string> storage = argv;  // posix_spawn takes char* const[]
  std::vector<char*> args;
  args.reserve(storage.size() + 1);
  for (auto& a : storage) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), environ);
  if (rc != 0) {
    result.error = std::string(std::strerror(rc));
    return result;
  }
  return wait_with_timeout(pid, timeout_s);
}

std::string describe(const ChildResult& result) {
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%.0f", result.seconds);
  switch (result.outcome) {
    case ChildOutcome::kExited:
      return "exited with " + std::to_string(result.exit_code);
    case ChildOutcome::kSignalled:
      return "killed by signal " + std::to_string(result.signal) + " (" +
             ::strsignal(result.signal) + ")";
    case ChildOutcome::kTimedOut:
      return std::string("still running after ") + seconds + " s, killed";
    case ChildOutcome::kNotStarted:
      return "could not be started: " + result.error;
    case ChildOutcome::kLost:
      return "status unknown (" + result.error + ")";
  }
  return "unknown outcome";
}

}  // namespace fer
