# LibTorch (Debian's libtorch-dev, the libtorch archive, or the one inside a pip-installed torch:
# Torch_DIR / CMAKE_PREFIX_PATH, see launch/build-gpu.sh) and a precompiled header shared by every
# target that includes torch: a file including torch/torch.h costs ~20 s to compile, the PCH makes
# that a one-time cost.
#   fer_use_torch(<target>)  links torch and reuses the shared PCH.
find_package(Torch REQUIRED)

# The C++ standard, decided before the first compiled target (fer_torch_pch below): what Torch's
# own CMake target declares (TorchConfig.cmake sets CXX_STANDARD on `torch`: 14 in 1.x, 17 in
# 2.x, 20 once its headers need C++20, which they then enforce with #error), at least C++17.
# The declaration is exact where a version threshold would be a guess. -DCMAKE_CXX_STANDARD=N
# overrides it; a value below Torch's is refused here rather than by a wall of header errors.
set(_fer_torch_std 0)
if(TARGET torch)
  get_target_property(_fer_torch_std torch CXX_STANDARD)
  get_target_property(_fer_torch_features torch INTERFACE_COMPILE_FEATURES)
  if(_fer_torch_features MATCHES "cxx_std_([0-9]+)" AND CMAKE_MATCH_1 GREATER _fer_torch_std)
    set(_fer_torch_std ${CMAKE_MATCH_1})
  endif()
endif()
if(NOT _fer_torch_std MATCHES "^[0-9]+$")
  set(_fer_torch_std 0)
endif()
if(NOT CMAKE_CXX_STANDARD)
  set(CMAKE_CXX_STANDARD 17)
  if(_fer_torch_std GREATER 17)
    set(CMAKE_CXX_STANDARD ${_fer_torch_std})
  endif()
elseif(CMAKE_CXX_STANDARD LESS 17 OR CMAKE_CXX_STANDARD LESS _fer_torch_std)
  message(FATAL_ERROR "CMAKE_CXX_STANDARD=${CMAKE_CXX_STANDARD}, but fer-dist needs C++17 and "
                      "LibTorch ${Torch_VERSION} (${Torch_DIR}) declares C++${_fer_torch_std}")
endif()
message(STATUS "fer: LibTorch ${Torch_VERSION} (${Torch_DIR}), C++${CMAKE_CXX_STANDARD}")

add_library(fer_torch_pch OBJECT ${PROJECT_SOURCE_DIR}/cmake/torch_pch.cpp)
target_link_libraries(fer_torch_pch PUBLIC ${TORCH_LIBRARIES})
target_compile_options(fer_torch_pch PUBLIC ${TORCH_CXX_FLAGS})
target_precompile_headers(fer_torch_pch PUBLIC <torch/torch.h>)
# No POSITION_INDEPENDENT_CODE anywhere: GCC refuses a PCH built with -fPIC in a target compiled
# with -fPIE (executables). Debian's GCC defaults to PIE, which suits static libs and executables.

function(fer_use_torch target)
  target_link_libraries(${target} PUBLIC ${TORCH_LIBRARIES})
  target_compile_options(${target} PUBLIC ${TORCH_CXX_FLAGS})
  target_precompile_headers(${target} REUSE_FROM fer_torch_pch)
endfunction()
