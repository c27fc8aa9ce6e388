// Child processes under a deadline (src/common/subprocess.h): a hanging child is killed and
// reaped on time, an exiting one reports its status, and nothing the parent waits for can hold it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>

#include "common/subprocess.h"

namespace fer {
namespace {

TEST(Subprocess, ChildStillRunningAtTheDeadlineIsKilledAndReaped) {
  const ChildResult r = run_with_timeout({"/bin/sleep", "30"}, 1.0);
  EXPECT_EQ(r.outcome, ChildOutcome::kTimedOut) << describe(r);
  EXPECT_GE(r.seconds, 1.0);
  EXPECT_LT(r.seconds, 5.0);  // killed at the deadline, not after the child's 30 s
  EXPECT_FALSE(r.succeeded());
  EXPECT_NE(describe(r).find("killed"), std::string::npos) << describe(r);
  // Reaped: no child of ours is left, zombie or not.
  errno = 0;
  EXPECT_EQ(::waitpid(-1, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
}

TEST(Subprocess, ExitStatusIsReportedWithoutWaitingForTheDeadline) {
  const ChildResult r = run_with_timeout({"/bin/sh", "-c", "exit 3"}, 30.0);
  EXPECT_EQ(r.outcome, ChildOutcome::kExited) << describe(r);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_LT(r.seconds, 5.0);
  EXPECT_EQ(describe(r), "exited with 3");
  EXPECT_TRUE(run_with_timeout({"/bin/true"}, 30.0).succeeded());
}

TEST(Subprocess, DeathBySignalIsNotMistakenForATimeout) {
  const ChildResult r = run_with_timeout({"/bin/sh", "-c", "kill -SEGV $$"}, 30.0);
  EXPECT_EQ(r.outcome, ChildOutcome::kSignalled) << describe(r);
  EXPECT_EQ(r.signal, SIGSEGV);
}

TEST(Subprocess, MissingProgramIsReportedAsNotStarted) {
  const ChildResult r = run_with_timeout({"/nonexistent/fer-report"}, 5.0);
  EXPECT_EQ(r.outcome, ChildOutcome::kNotStarted) << describe(r);
  EXPECT_FALSE(r.error.empty());
  EXPECT_EQ(run_with_timeout({}, 5.0).outcome, ChildOutcome::kNotStarted);
}

TEST(Subprocess, ZeroOrNanTimeoutKillsAtOnce) {
  for (double timeout : {0.0, -1.0, std::nan("")}) {
    const ChildResult r = run_with_timeout({"/bin/sleep", "30"}, timeout);
    EXPECT_EQ(r.outcome, ChildOutcome::kTimedOut) << timeout << ": " << describe(r);
    EXPECT_LT(r.seconds, 2.0) << timeout;
  }
}

TEST(Subprocess, ForkedChildThatSpinsIsKilledAtTheDeadline) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    for (volatile unsigned i = 0;; i = i + 1) {  // a busy loop that never ends, like the bug
    }
  }
  const ChildResult r = wait_with_timeout(pid, 0.3);
  EXPECT_EQ(r.outcome, ChildOutcome::kTimedOut) << describe(r);
  EXPECT_LT(r.seconds, 3.0);
}

TEST(Subprocess, ProcessThatIsNotOurChildIsReportedLostAtOnce) {
  const ChildResult r = wait_with_timeout(::getppid(), 30.0);
  EXPECT_EQ(r.outcome, ChildOutcome::kLost) << describe(r);
  EXPECT_LT(r.seconds, 1.0);
}

}  // namespace
}  // namespace fer
