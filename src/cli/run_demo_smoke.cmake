# CTest driver: runs a tiny `sla demo`, then checks the exit code and that a real PNG was written.
# Arguments: -DSLA_EXE=<path to sla> -DPNG_OUT=<png path to write>
file(REMOVE "${PNG_OUT}")
execute_process(COMMAND "${SLA_EXE}" demo --grid 2x8x16 --heads 3 --topk 0.25 --png "${PNG_OUT}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "sla demo exited with ${rc}\nstdout:\n${out}\nstderr:\n${err}")
endif()
if(NOT EXISTS "${PNG_OUT}")
  message(FATAL_ERROR "sla demo did not write ${PNG_OUT}\nstdout:\n${out}")
endif()
file(READ "${PNG_OUT}" signature LIMIT 8 HEX)
if(NOT signature STREQUAL "89504e470d0a1a0a")
  message(FATAL_ERROR "${PNG_OUT} does not start with the PNG signature (got ${signature})")
endif()

# A bad flag value must be a usage error: exit code 2 and a message naming the flag.
execute_process(COMMAND "${SLA_EXE}" demo --topk 2.5 RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2)
  message(FATAL_ERROR "sla demo --topk 2.5 exited with ${rc}, expected 2\nstderr:\n${err}")
endif()
string(FIND "${err}" "--topk" pos)
if(pos EQUAL -1)
  message(FATAL_ERROR "the error for --topk 2.5 does not name the flag:\n${err}")
endif()
