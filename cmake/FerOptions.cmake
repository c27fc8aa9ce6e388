# Build-wide options: compiler cache, warnings, sanitizers.
find_program(FER_CCACHE ccache)
if(FER_CCACHE)
  set(CMAKE_C_COMPILER_LAUNCHER ${FER_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${FER_CCACHE})
  message(STATUS "fer: using ccache ${FER_CCACHE}")
endif()

add_library(fer_warnings INTERFACE)
target_compile_options(fer_warnings INTERFACE -Wall -Wextra -Wno-unused-parameter)

if(FER_SANITIZE)
  string(REPLACE ";" "," _fer_san "${FER_SANITIZE}")
  add_compile_options(-fsanitize=${_fer_san} -fno-omit-frame-pointer)
  add_link_options(-fsanitize=${_fer_san})
  message(STATUS "fer: sanitizers ${_fer_san}")
endif()

# Link only the shared libraries a binary really uses: HDF5 and OpenCV drag in dozens that the
# tools never call, and each one costs start-up time (symbol lookup) on every run.
add_link_options(LINKER:--as-needed)
