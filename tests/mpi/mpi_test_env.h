// The MPI session of a multi-rank gtest binary (tests/mpi/*_test.cpp), created once in main().
#pragma once

namespace fer {
class MpiContext;
extern MpiContext* g_mpi;
}  // namespace fer
