# Build-wide options: compiler cache, warnings, sanitizers.
find_program(FER_CCACHE ccache)
if(FER_CCACHE)
  # A compile that uses the torch PCH is cacheable only with this sloppiness (ccache manual,
  # "Precompiled headers"; the .gch is always newer than the build's start): without it every
  # torch translation unit, the slowest ones, was an uncacheable call.
  set(_fer_launcher ${CMAKE_COMMAND} -E env
      CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime ${FER_CCACHE})
  set(CMAKE_C_COMPILER_LAUNCHER ${_fer_launcher})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${_fer_launcher})
  message(STATUS "fer: using ccache ${FER_CCACHE}")
endif()

add_library(fer_warnings INTERFACE)
target_compile_options(fer_warnings INTERFACE -Wall -Wextra -Wno-unused-parameter)

if(FER_SANITIZE)
  string(REPLACE ";" "," _fer_san "${FER_SANITIZE}")
  # A sanitizer report is an error: abort on the first one instead of printing and going on.
  add_compile_options(-fsanitize=${_fer_san} -fno-sanitize-recover=all -fno-omit-frame-pointer)
  add_link_options(-fsanitize=${_fer_san} -fno-sanitize-recover=all)
  message(STATUS "fer: sanitizers ${_fer_san}")
endif()
if(FER_FUZZ)
  # Coverage instrumentation for every library the fuzz targets link; the targets themselves
  # link libFuzzer's main (tests/fuzz/CMakeLists.txt).
  add_compile_options(-fsanitize=fuzzer-no-link)
  message(STATUS "fer: libFuzzer instrumentation on")
endif()

# Link only the shared libraries a binary really uses: HDF5 and OpenCV drag in dozens that the
# tools never call, and each one costs start-up time (symbol lookup) on every run.
add_link_options(LINKER:--as-needed)
