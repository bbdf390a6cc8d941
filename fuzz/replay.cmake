# In the normal build: every fuzz/<module>_<what>_fuzz.cc linked with
# replay_main.cc (no libFuzzer, no sanitizers) and a CTest "fuzz_replay.<name>"
# (label unit) that runs it over fuzz/corpus/<name>/.
include(${CMAKE_CURRENT_LIST_DIR}/sources.cmake)
fhirward_fuzz_targets(_replay_names)
foreach(_name IN LISTS _replay_names)
  fhirward_fuzz_module(${_name} _module)
  add_executable(${_name}_replay ${CMAKE_CURRENT_LIST_DIR}/${_name}.cc
                                 ${CMAKE_CURRENT_LIST_DIR}/replay_main.cc)
  target_link_libraries(${_name}_replay PRIVATE fhirward_${_module})
  set_target_properties(${_name}_replay PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
  set(_corpus ${CMAKE_CURRENT_LIST_DIR}/corpus/${_name})
  if(NOT IS_DIRECTORY ${_corpus})
    message(FATAL_ERROR "fuzz/${_name}.cc has no seed corpus fuzz/corpus/${_name}/")
  endif()
  add_test(NAME fuzz_replay.${_name} COMMAND ${_name}_replay ${_corpus})
  set_tests_properties(fuzz_replay.${_name} PROPERTIES LABELS unit TIMEOUT 300)
endforeach()
