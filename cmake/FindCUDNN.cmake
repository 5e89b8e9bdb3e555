# Finds cuDNN 9 (cudnn_graph.h, cudnn_version.h, libcudnn) in CUDNN_ROOT (variable or environment),
# the CUDA toolkit or the system folders (/usr/include/x86_64-linux-gnu for Debian's packages);
# defines CUDNN::cudnn and CUDNN_VERSION ("9.14.0"). The backend graph API is all scanline uses.
set(_cudnn_hints $ENV{CUDNN_ROOT} ${CUDNN_ROOT} $ENV{CUDNN_PATH} ${CUDAToolkit_INCLUDE_DIRS}
                 ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT})
find_path(CUDNN_INCLUDE_DIR NAMES cudnn_version.h cudnn_version_v9.h
  HINTS ${_cudnn_hints}
  PATH_SUFFIXES include include/x86_64-linux-gnu x86_64-linux-gnu)
find_library(CUDNN_LIBRARY NAMES cudnn
  HINTS ${_cudnn_hints}
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu)

set(CUDNN_VERSION "")
set(_cudnn_version_h "${CUDNN_INCLUDE_DIR}/cudnn_version.h")
if(NOT EXISTS "${_cudnn_version_h}")
  set(_cudnn_version_h "${CUDNN_INCLUDE_DIR}/cudnn_version_v9.h")
endif()
if(CUDNN_INCLUDE_DIR AND EXISTS "${_cudnn_version_h}")
  file(STRINGS "${_cudnn_version_h}" _cudnn_defines REGEX "^#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) ")
  foreach(_part MAJOR MINOR PATCHLEVEL)
    string(REGEX MATCH "CUDNN_${_part} +([0-9]+)" _match "${_cudnn_defines}")
    set(_cudnn_${_part} "${CMAKE_MATCH_1}")
  endforeach()
  set(CUDNN_VERSION "${_cudnn_MAJOR}.${_cudnn_MINOR}.${_cudnn_PATCHLEVEL}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(CUDNN REQUIRED_VARS CUDNN_LIBRARY CUDNN_INCLUDE_DIR VERSION_VAR CUDNN_VERSION)
if(CUDNN_FOUND AND CUDNN_VERSION VERSION_LESS 9)
  message(STATUS "cuDNN ${CUDNN_VERSION} at ${CUDNN_INCLUDE_DIR} is older than 9: not used")
  set(CUDNN_FOUND FALSE)
endif()
if(CUDNN_FOUND AND NOT TARGET CUDNN::cudnn)
  add_library(CUDNN::cudnn UNKNOWN IMPORTED)
  set_target_properties(CUDNN::cudnn PROPERTIES
    IMPORTED_LOCATION ${CUDNN_LIBRARY}
    INTERFACE_INCLUDE_DIRECTORIES ${CUDNN_INCLUDE_DIR})
endif()
mark_as_advanced(CUDNN_INCLUDE_DIR CUDNN_LIBRARY)
