# CTest driver: `sla demo --compare-rules` prints the rule comparison; `sla calibrate` without --qkv is a usage
# error naming the flag, and with a missing file an error naming it.
# Arguments: -DSLA_EXE=<path to sla> -DWORK_DIR=<scratch directory>
execute_process(COMMAND "${SLA_EXE}" demo --grid 2x8x16 --heads 3 --topk 0.25 --backend cpu --compare-rules
                        --png "${WORK_DIR}/cli_compare_rules.png"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "sla demo --compare-rules exited with ${rc}\nstdout:\n${out}\nstderr:\n${err}")
endif()
foreach(needle "Block-map rules at the same average density" "per-head topk" "per-head top_p" "crit.mass")
  string(FIND "${out}" "${needle}" pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "sla demo --compare-rules did not print '${needle}':\n${out}")
  endif()
endforeach()

execute_process(COMMAND "${SLA_EXE}" calibrate RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
string(FIND "${err}" "--qkv" pos)
if(NOT rc EQUAL 2 OR pos EQUAL -1)
  message(FATAL_ERROR "sla calibrate without --qkv: expected exit 2 naming --qkv, got ${rc}:\n${err}")
endif()
execute_process(COMMAND "${SLA_EXE}" calibrate --qkv "${WORK_DIR}/no_such_file.npz" --png "${WORK_DIR}/c.png"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
string(FIND "${err}" "no_such_file.npz" pos)
if(rc EQUAL 0 OR pos EQUAL -1)
  message(FATAL_ERROR "sla calibrate with a missing file: expected an error naming it, got ${rc}:\n${err}")
endif()
