// Fault injection for tests, from the environment variable FER_FAULT_INJECT:
//   "kind:nan,step:5"          the loss of step 5 becomes NaN (every rank)
//   "kind:exit,rank:1,step:3"  rank 1 exits abruptly (code 99) at step 3
//   "kind:hang,rank:1,step:3"  rank 1 stops responding at step 3
//   "kind:preempt,rank:1,step:3"  rank 1 raises SIGUSR1 before step 3, as Slurm preemption does;
//                                 every rank finishes step 3 (the step in flight, whose control
//                                 all-reduce carries the flag) and stops with the checkpoint of
//                                 step 4 (exit 75)
// Unset in normal use; a malformed value is a ConfigError so a typo cannot silently test nothing.
#pragma once

#include <cstdint>
#include <string>

namespace fer {

struct FaultPlan {
  std::string kind;         // "" (none) | nan | exit | hang | preempt
  int rank = -1;            // -1 = every rank
  std::int64_t step = -1;   // global optimizer step
  bool fires(int this_rank, std::int64_t this_step, const char* kind_wanted) const {
    return kind == kind_wanted && step == this_step && (rank < 0 || rank == this_rank);
  }
};

// Parses FER_FAULT_INJECT (empty plan when unset).
FaultPlan fault_plan_from_env();
FaultPlan parse_fault_plan(const std::string& text);

}  // namespace fer
