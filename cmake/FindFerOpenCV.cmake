# Finds the few OpenCV modules fer-dist uses (core, imgproc, imgcodecs, objdetect) from Debian's
# per-module -dev packages, which ship no OpenCVConfig.cmake. Defines FerOpenCV::opencv.
find_path(FerOpenCV_INCLUDE_DIR opencv2/core.hpp PATH_SUFFIXES opencv4)
set(_fer_cv_libs)
foreach(_m core imgproc imgcodecs objdetect)
  find_library(FerOpenCV_${_m}_LIBRARY NAMES opencv_${_m})
  list(APPEND _fer_cv_libs FerOpenCV_${_m}_LIBRARY)
endforeach()
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(FerOpenCV REQUIRED_VARS FerOpenCV_INCLUDE_DIR ${_fer_cv_libs})
if(FerOpenCV_FOUND AND NOT TARGET FerOpenCV::opencv)
  add_library(FerOpenCV::opencv INTERFACE IMPORTED)
  set_target_properties(FerOpenCV::opencv PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${FerOpenCV_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${FerOpenCV_objdetect_LIBRARY};${FerOpenCV_imgcodecs_LIBRARY};${FerOpenCV_imgproc_LIBRARY};${FerOpenCV_core_LIBRARY}")
endif()
