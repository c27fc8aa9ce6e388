// Child processes with a deadline: a parent that waits for a child never waits forever. A child
// still running at its deadline is killed with SIGKILL (it cannot catch or ignore that) and
// reaped, so no zombie is left either.
//
// Polling, not SIGCHLD: waiting installs no signal handler and works in a process whose other
// parts (MPI, a thread pool) may own SIGCHLD. Thread-safe for different children.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace fer {

// How a child process ended.
enum class ChildOutcome {
  kExited,      // returned from main or called exit(): `exit_code` is its status
  kSignalled,   // died of a signal not sent by us (crash, kill by someone else): `signal`
  kTimedOut,    // still running at the deadline: killed with SIGKILL and reaped by us
  kNotStarted,  // posix_spawn failed (no such program, no resources): `error` says why
  kLost,        // reaped by someone else (SIGCHLD ignored by the process): status unknown
};

struct ChildResult {
  ChildOutcome outcome = ChildOutcome::kNotStarted;
  int exit_code = -1;  // kExited only
  int signal = 0;      // kSignalled only (kTimedOut: always SIGKILL, not stored)
  double seconds = 0;  // wall time from the start of the wait until the child was reaped
  std::string error;   // kNotStarted and kLost: what went wrong

  bool succeeded() const { return outcome == ChildOutcome::kExited && exit_code == 0; }
};

// Starts argv[0] (a path, not looked up in PATH) with argv and this process's environment,
// stdin/stdout/stderr inherited, and waits at most `timeout_s` seconds (values <= 0 or NaN:
// no waiting, the child is killed at once unless it has already finished).
ChildResult run_with_timeout(const std::vector<std::string>& argv, double timeout_s);

// Waits for the already started child `pid` of this process, at most `timeout_s` seconds, then
// SIGKILLs and reaps it. Returns only when the child is gone (or was never ours: kLost). For
// children made with fork() (tests that run a function under a deadline).
ChildResult wait_with_timeout(pid_t pid, double timeout_s);

// One line for logs: "exited with 3", "killed by signal 11 (Segmentation fault)",
// "still running after 120 s, killed", "could not be started: No such file or directory".
std::string describe(const ChildResult& result);

}  // namespace fer
