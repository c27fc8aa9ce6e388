# Resolves FER_WITH_NCCL (AUTO|ON|OFF) to FER_HAVE_NCCL. The NCCL backend needs only the CUDA
# runtime API and nccl.h, so it builds next to Debian's CPU-only LibTorch.
#
# NCCL comes from the CUDA toolkit's folders or from pip's nvidia-nccl-cu* wheel
# (site-packages/nvidia/nccl/{include,lib}), which ships only the versioned libnccl.so.2: give its
# folders with -DNCCL_INCLUDE_DIR=... -DNCCL_LIBRARY=.../libnccl.so.2, or NCCL_ROOT / NCCL_HOME
# (CMake variable or environment). AUTO without NCCL turns the backend off and says so; ON without
# NCCL is a configure error, never a silent off.
set(FER_HAVE_NCCL OFF)
if(NOT FER_WITH_NCCL MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "FER_WITH_NCCL must be AUTO, ON or OFF, not '${FER_WITH_NCCL}'")
endif()
if(NOT FER_WITH_NCCL STREQUAL "OFF")
  find_package(CUDAToolkit QUIET)
  set(_fer_nccl_hints ${NCCL_ROOT} $ENV{NCCL_ROOT} $ENV{NCCL_HOME})
  find_path(NCCL_INCLUDE_DIR nccl.h
    HINTS ${_fer_nccl_hints} ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda
    PATH_SUFFIXES include)
  # The unversioned name is a development symlink that pip's wheel and some runtime-only
  # installs lack; the versioned soname is what the loader wants anyway.
  find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
    HINTS ${_fer_nccl_hints} ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda
    PATH_SUFFIXES lib lib64)
  set(_fer_nccl_missing)
  if(NOT CUDAToolkit_FOUND)
    list(APPEND _fer_nccl_missing "the CUDA toolkit (CUDAToolkit_ROOT=..., or nvcc on PATH)")
  endif()
  if(NOT NCCL_INCLUDE_DIR)
    list(APPEND _fer_nccl_missing "nccl.h (NCCL_INCLUDE_DIR=...)")
  endif()
  if(NOT NCCL_LIBRARY)
    list(APPEND _fer_nccl_missing "libnccl.so or libnccl.so.2 (NCCL_LIBRARY=...)")
  endif()
  if(NOT _fer_nccl_missing)
    set(FER_HAVE_NCCL ON)
    set(_fer_nccl_version "")
    file(STRINGS "${NCCL_INCLUDE_DIR}/nccl.h" _fer_nccl_defs REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) ")
    foreach(_part MAJOR MINOR PATCH)
      if(_fer_nccl_defs MATCHES "NCCL_${_part} ([0-9]+)")
        string(APPEND _fer_nccl_version "${CMAKE_MATCH_1}.")
      endif()
    endforeach()
    string(REGEX REPLACE "\\.$" "" _fer_nccl_version "${_fer_nccl_version}")
    add_library(fer_nccl INTERFACE)
    target_include_directories(fer_nccl SYSTEM INTERFACE ${NCCL_INCLUDE_DIR})
    target_link_libraries(fer_nccl INTERFACE ${NCCL_LIBRARY} CUDA::cudart)
    target_compile_definitions(fer_nccl INTERFACE FER_HAVE_NCCL=1)
    message(STATUS "fer: NCCL backend ON (NCCL ${_fer_nccl_version} ${NCCL_LIBRARY}, "
                   "CUDA ${CUDAToolkit_VERSION} ${CUDAToolkit_LIBRARY_DIR})")
  else()
    string(REPLACE ";" ", " _fer_nccl_missing "${_fer_nccl_missing}")
    if(FER_WITH_NCCL STREQUAL "ON")
      message(FATAL_ERROR "FER_WITH_NCCL=ON but not found: ${_fer_nccl_missing}. "
                          "Point at them (pip's nvidia-nccl: NCCL_INCLUDE_DIR=<site-packages>/"
                          "nvidia/nccl/include NCCL_LIBRARY=<...>/nvidia/nccl/lib/libnccl.so.2), "
                          "or use -DFER_WITH_NCCL=AUTO or OFF.")
    endif()
    message(STATUS "fer: NCCL backend OFF (not found: ${_fer_nccl_missing})")
  endif()
endif()
