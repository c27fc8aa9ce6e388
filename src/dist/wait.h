// The one bounded wait of fer-dist (DESIGN.md "Failure"; STYLE.md lesson 13: the layer that owns a
// resource owns its failure modes). Every collective of both planes and NCCL's initialisation
// waits through here; no code outside src/dist handles a timeout.
#pragma once

#include <functional>
#include <string>

namespace fer {

class Work;

// Waits for `work` at most `timeout_s`. On expiry logs what it waited for and stops every rank of
// the job (abort_job, exit code 5): a collective that does not finish means a peer died or hangs,
// and waiting longer would hang the whole job. `what` is built only then ("loss all-reduce at step
// 12"), so callers on hot paths pay nothing for the message. Rethrows the collective's own failure
// (CommError) when it finished with one.
void wait_or_abort(Work& work, double timeout_s, const std::function<std::string()>& what);
void wait_or_abort(Work& work, double timeout_s, const std::string& what);

}  // namespace fer
