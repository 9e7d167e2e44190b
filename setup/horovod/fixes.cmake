# fixes.cmake: build-time fixes that let Horovod 0.28.1 compile against today's torch and TF.
# CMake includes this file right after every project() call (CMAKE_PROJECT_INCLUDE, added by
# cmake-wrapper.sh). Each fix is one small block; none touches Horovod's sources.

# Fix 1 - C++ standard. Horovod asks for C++14 for its torch extension (CMAKE_CXX_STANDARD 14),
# but torch 2.13's headers need C++17 and torch 2.14's need C++20. CMake turns "standard 14"
# into a compiler flag through CMAKE_CXX14_STANDARD_COMPILE_OPTION; we point that flag at the
# standard torch needs. setup.sh exports HOROVOD_RECIPES_CXX_STD (17 or 20) from the torch
# version it installed.
if(DEFINED ENV{HOROVOD_RECIPES_CXX_STD})
  set(_hr_std "$ENV{HOROVOD_RECIPES_CXX_STD}")
  set(CMAKE_CXX14_STANDARD_COMPILE_OPTION "-std=c++${_hr_std}")
  set(CMAKE_CXX14_EXTENSION_COMPILE_OPTION "-std=gnu++${_hr_std}")
  message(STATUS "horovod-recipes: C++14 requests compile as C++${_hr_std}")
endif()

# Fix 2 - XLA ops. TF >= 2.16 no longer ships the XLA headers that
# horovod/tensorflow/xla_mpi_ops.cc includes. That file's body is compiled only for GPU builds,
# so on a CPU TF it contributes nothing; we drop it from the `tensorflow` target's sources once
# the directory that defines the target has been processed (DEFER runs at the end of it).
function(_hr_drop_xla_sources)
  if(TARGET tensorflow)
    get_target_property(_srcs tensorflow SOURCES)
    list(FILTER _srcs EXCLUDE REGEX "xla_mpi_ops\\.cc$")
    set_property(TARGET tensorflow PROPERTY SOURCES ${_srcs})
    message(STATUS "horovod-recipes: dropped xla_mpi_ops.cc from the tensorflow target")
  endif()
endfunction()
if(PROJECT_NAME STREQUAL "horovod")
  # The target is created in horovod/tensorflow/CMakeLists.txt, which the top directory adds
  # with add_subdirectory; a deferred call in the top directory runs after all of it.
  cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _hr_drop_xla_sources)
endif()

# Fix 3 - newer GCC. GCC 13+ no longer pulls <string>, <cstdint>, <stdexcept> and <limits> into other headers,
# and Horovod headers (group_table.h, common.h) rely on that. We force-include them
# in every C++ file; with older compilers this changes nothing.
if(PROJECT_NAME STREQUAL "horovod")
  string(APPEND CMAKE_CXX_FLAGS " -include string -include cstdint -include stdexcept -include limits")
endif()
