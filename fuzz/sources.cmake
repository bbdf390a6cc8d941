# fhirward_fuzz_targets(<out>): the names of fuzz/<module>_<what>_fuzz.cc, each
# checked to have its module library fhirward_<module>.
function(fhirward_fuzz_targets out)
  file(GLOB _sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/*_fuzz.cc)
  set(_names)
  foreach(_src IN LISTS _sources)
    get_filename_component(_name ${_src} NAME_WE)
    string(REGEX MATCH "^[a-z0-9]+" _module ${_name})
    if(NOT TARGET fhirward_${_module})
      message(FATAL_ERROR "fuzz/${_name}.cc: no module library fhirward_${_module}")
    endif()
    list(APPEND _names ${_name})
  endforeach()
  set(${out} ${_names} PARENT_SCOPE)
endfunction()

# The module a target belongs to ("server" for server_request_fuzz).
function(fhirward_fuzz_module name out)
  string(REGEX MATCH "^[a-z0-9]+" _module ${name})
  set(${out} ${_module} PARENT_SCOPE)
endfunction()
