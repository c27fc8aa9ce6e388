# Third-party dependencies. Every one is a Debian package installed by launch/install-deps.sh.
find_package(Threads REQUIRED)
find_package(spdlog REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(nlohmann_json 3.9 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(HDF5 REQUIRED COMPONENTS C)
if(NOT FER_TRAINER_ONLY)
  find_package(FerOpenCV REQUIRED)  # fer-pack, fer-synth, fer-predict, fer-report only
endif()
find_package(MPI REQUIRED COMPONENTS C)
find_package(OpenSSL REQUIRED COMPONENTS Crypto)  # SHA-256 of shards (SHA-NI accelerated)

# yaml-cpp 0.7 in Debian exports the plain target name.
if(TARGET yaml-cpp::yaml-cpp)
  set(FER_YAML_TARGET yaml-cpp::yaml-cpp)
else()
  set(FER_YAML_TARGET yaml-cpp)
endif()

add_library(fer_hdf5 INTERFACE)
target_include_directories(fer_hdf5 SYSTEM INTERFACE ${HDF5_C_INCLUDE_DIRS} ${HDF5_INCLUDE_DIRS})
target_link_libraries(fer_hdf5 INTERFACE ${HDF5_C_LIBRARIES})
target_compile_definitions(fer_hdf5 INTERFACE ${HDF5_C_DEFINITIONS} H5_USE_110_API)

include(FerTorch)     # LibTorch + its precompiled header
include(FerNccl)      # FER_WITH_NCCL resolution
