// Cooperative cancellation on SIGINT/SIGTERM: long loops poll cancel_requested() and unwind by
// throwing fer::Interrupted, so destructors remove temporary outputs. Async-signal-safe.
#pragma once

namespace fer {

// Installs handlers for SIGINT and SIGTERM that set the flag (a second signal kills at once).
void install_cancel_handlers();
bool cancel_requested();
// Sets the flag as a signal would (tests and fault injection).
void request_cancel();
// Clears the flag (tests that cancel on purpose).
void clear_cancel();
// Throws fer::Interrupted when cancellation was requested.
void throw_if_cancelled();

}  // namespace fer
