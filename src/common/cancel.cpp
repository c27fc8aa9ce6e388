#include "common/cancel.h"

#include <csignal>

#include "common/errors.h"

namespace fer {
namespace {

volatile std::sig_atomic_t g_cancel = 0;

extern "C" void on_cancel_signal(int sig) {
  if (g_cancel) {  // second Ctrl-C: the user means it
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
  g_cancel = 1;
}

}  // namespace

void install_cancel_handlers() {
  struct sigaction action {};
  action.sa_handler = on_cancel_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

bool cancel_requested() { return g_cancel != 0; }
void request_cancel() { g_cancel = 1; }
void clear_cancel() { g_cancel = 0; }
void throw_if_cancelled() {
  if (g_cancel) throw Interrupted();
}

}  // namespace fer
