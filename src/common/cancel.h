// Cooperative cancellation on signals: long loops poll cancel_requested() and unwind by throwing
// fer::Interrupted (or fer::Preempted), so destructors remove temporary outputs. The handlers only
// set a flag: async-signal-safe.
#pragma once

namespace fer {

// Why work was asked to stop. Ordered: when ranks combine their reasons (max), preemption wins,
// so a job that got both SIGINT on one rank and SIGUSR1 on another still asks to be requeued.
enum class StopReason : int {
  kNone = 0,
  kInterrupt = 1,  // SIGINT (and SIGTERM for the tools): the user wants it to stop
  kPreempt = 2,    // SIGUSR1/SIGTERM in a trainer: the scheduler takes the node back, requeue
};

// Tools (fer-pack, fer-synth): SIGINT and SIGTERM set kInterrupt; a second one kills at once.
void install_cancel_handlers();
// Training: SIGINT sets kInterrupt (a second SIGINT kills at once); SIGTERM and SIGUSR1 set
// kPreempt (Slurm's preemption, time-limit and `scancel --signal` signals). Repeated preemption
// signals are idempotent: Slurm and the launchers may deliver one to a rank more than once, and
// the checkpoint must still be written.
void install_preemption_handlers();

bool cancel_requested();
StopReason stop_reason();
// Sets the reason as a signal would (tests and fault injection); never lowers it.
void request_stop(StopReason reason);
// Same as request_stop(StopReason::kInterrupt).
void request_cancel();
// Clears the flag (tests that cancel on purpose).
void clear_cancel();
// Throws fer::Interrupted when cancellation was requested.
void throw_if_cancelled();

}  // namespace fer
