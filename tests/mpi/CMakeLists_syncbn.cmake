# SyncBatchNorm2d tests (src/model/sync_batchnorm.*), to be include()d once from a CMakeLists.txt
# inside the tests tree (e.g. at the end of tests/CMakeLists.txt, after fer_add_test is defined):
#   include(${CMAKE_CURRENT_SOURCE_DIR}/mpi/CMakeLists_syncbn.cmake)
#   test_model_sync_bn   unit tests, a world of 1, each case registered with gtest_discover_tests
#   test_sync_bn_mpi     own main(), run under mpiexec as sync_bn_mpi_np2 / _np3 / _np4 (label mpi)
# Needs model/sync_batchnorm.cpp in fer_model (src/CMakeLists.txt). Uses only targets and functions
# visible from any directory (fer_model, fer_warnings, fer_use_torch) and finds GTest / MPI itself
# when the including directory has not.

get_filename_component(_fer_syncbn_root "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)

if(NOT TARGET GTest::gtest)
  find_package(GTest REQUIRED)
endif()
include(GoogleTest)
if(NOT TARGET MPI::MPI_C)
  find_package(MPI REQUIRED COMPONENTS C)
endif()

# Fashion-MNIST from Debian's dataset-fashion-mnist (tests/unit/real_images.h): a real image set
# for tests that must not run on drawn data. Torch-free; any test target may link it.
if(NOT TARGET ZLIB::ZLIB)
  find_package(ZLIB REQUIRED)
endif()
if(NOT TARGET fer_test_real_images)
  add_library(fer_test_real_images STATIC ${_fer_syncbn_root}/tests/unit/real_images.cpp)
  target_include_directories(fer_test_real_images PUBLIC ${_fer_syncbn_root}/tests/unit)
  target_link_libraries(fer_test_real_images PUBLIC ZLIB::ZLIB PRIVATE fer_warnings)
endif()

add_executable(test_model_sync_bn ${_fer_syncbn_root}/tests/unit/model_sync_bn_test.cpp)
target_link_libraries(test_model_sync_bn PRIVATE fer_model fer_test_real_images GTest::gtest
  GTest::gtest_main fer_warnings)
fer_use_torch(test_model_sync_bn)
gtest_discover_tests(test_model_sync_bn DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 600)

add_executable(test_sync_bn_mpi ${_fer_syncbn_root}/tests/mpi/sync_bn_mpi_test.cpp)
target_link_libraries(test_sync_bn_mpi PRIVATE fer_model fer_test_real_images MPI::MPI_C GTest::gtest
  fer_warnings)
# The C API only: Open MPI's mpi.h otherwise pulls in the deprecated C++ bindings (libmpi_cxx).
target_compile_definitions(test_sync_bn_mpi PRIVATE OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)
fer_use_torch(test_sync_bn_mpi)
foreach(n IN ITEMS 2 3 4)
  add_test(NAME sync_bn_mpi_np${n}
    COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${n} --oversubscribe
            ${MPIEXEC_PREFLAGS} $<TARGET_FILE:test_sync_bn_mpi> ${MPIEXEC_POSTFLAGS})
  # Open MPI refuses to run as root (CI containers) unless told twice; one thread per rank keeps
  # 4 oversubscribed ranks from fighting over 2 cores.
  set_tests_properties(sync_bn_mpi_np${n} PROPERTIES
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMP_NUM_THREADS=1"
    LABELS mpi TIMEOUT 300 PROCESSORS ${n})
endforeach()
