#include "common/cancel.h"

#include <csignal>

#include "common/errors.h"

namespace fer {
namespace {

volatile std::sig_atomic_t g_reason = 0;  // a StopReason

extern "C" void on_cancel_signal(int sig) {
  if (g_reason) {  // second Ctrl-C: the user means it
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
  g_reason = static_cast<int>(StopReason::kInterrupt);
}

extern "C" void on_preempt_signal(int) { g_reason = static_cast<int>(StopReason::kPreempt); }

void install(int sig, void (*handler)(int)) {
  struct sigaction action {};
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  sigaction(sig, &action, nullptr);
}

}  // namespace

void install_cancel_handlers() {
  install(SIGINT, on_cancel_signal);
  install(SIGTERM, on_cancel_signal);
}

void install_preemption_handlers() {
  install(SIGINT, on_cancel_signal);
  install(SIGTERM, on_preempt_signal);
  install(SIGUSR1, on_preempt_signal);
}

bool cancel_requested() { return g_reason != 0; }
StopReason stop_reason() { return static_cast<StopReason>(static_cast<int>(g_reason)); }
void request_stop(StopReason reason) {
  if (static_cast<int>(reason) > g_reason) g_reason = static_cast<int>(reason);
}
void request_cancel() { request_stop(StopReason::kInterrupt); }
void clear_cancel() { g_reason = 0; }
void throw_if_cancelled() {
  if (g_reason) throw Interrupted();
}

}  // namespace fer
