# Warnings and sanitizers applied to every scanline target through one interface library.
add_library(scanline_options INTERFACE)
target_compile_options(scanline_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-unused-parameter>)
if(SCANLINE_WERROR)
  target_compile_options(scanline_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
endif()
if(SCANLINE_SANITIZE)
  string(REPLACE ";" "," _san "${SCANLINE_SANITIZE}")
  target_compile_options(scanline_options INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${_san} -fno-omit-frame-pointer -fno-sanitize-recover=all>)
  target_link_options(scanline_options INTERFACE -fsanitize=${_san})
endif()

# Adds a library from every source file of the calling folder (one target per folder keeps the
# layering visible in the link graph).
function(scanline_folder_library name)
  file(GLOB _srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  add_library(${name} STATIC ${_srcs})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PRIVATE scanline_options)
endfunction()
