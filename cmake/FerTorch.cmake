# LibTorch (Debian's libtorch-dev) and a precompiled header shared by every target that includes
# torch: a file including torch/torch.h costs ~20 s to compile, the PCH makes that a one-time cost.
#   fer_use_torch(<target>)  links torch and reuses the shared PCH.
find_package(Torch REQUIRED)

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
