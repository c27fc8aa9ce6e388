#include "dist/wait.h"

#include "common/errors.h"
#include "dist/communicator.h"
#include "dist/mpi_context.h"

namespace fer {

void wait_or_abort(Work& work, double timeout_s, const std::function<std::string()>& what) {
  if (!work.wait_for(timeout_s)) {
    abort_job(static_cast<int>(ExitCode::kComm),
              what() + " timed out after " + std::to_string(timeout_s) +
                  " s (dist.comm_timeout_s): " + work.describe() +
                  " (another rank died, hangs, or issued a different collective)");
  }
  work.wait();  // returns at once; rethrows a failure
}

void wait_or_abort(Work& work, double timeout_s, const std::string& what) {
  wait_or_abort(work, timeout_s, [&what] { return what; });
}

}  // namespace fer
