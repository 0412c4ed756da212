# CTest driver: command lines that used to end in "internal error" or in a misleading message must exit with the
# right code and a message that names the flag and what is wrong. Arguments: -DSLA_EXE=<sla> -DWORK_DIR=<dir>
function(expect_error expected_rc expected_text)
  execute_process(COMMAND "${SLA_EXE}" ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  string(REPLACE ";" " " cmd "${ARGN}")
  if(NOT rc EQUAL ${expected_rc})
    message(FATAL_ERROR "sla ${cmd} exited with ${rc}, expected ${expected_rc}\nstdout:\n${out}\nstderr:\n${err}")
  endif()
  string(FIND "${err}" "${expected_text}" pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "sla ${cmd}: expected '${expected_text}' in the error, got:\n${err}")
  endif()
  string(FIND "${err}" "internal error" pos)
  if(NOT pos EQUAL -1)
    message(FATAL_ERROR "sla ${cmd}: an input error is reported as an internal error:\n${err}")
  endif()
endfunction()

# A directory is not a file (the stream library would report "basic_filebuf::underflow").
file(MAKE_DIRECTORY "${WORK_DIR}/cli_errors_dir")
expect_error(1 "is a directory" demo --qkv "${WORK_DIR}/cli_errors_dir" --png "${WORK_DIR}/cli_errors.png")
# Sizes past the memory are refused before anything is allocated, naming the flag and the limit.
expect_error(2 "of host memory; this machine has" demo --grid 1000x1000x1000 --png "${WORK_DIR}/cli_errors.png")
expect_error(2 "--grid 1000x1000x1000" demo --grid 1000x1000x1000 --png "${WORK_DIR}/cli_errors.png")
expect_error(2 "of host memory; this machine has" bench --shape 100000,100000,100000,64)
expect_error(2 "--shape: expected a head dim D in [1, 1024]" bench --shape 100000,100000,100000,100000)
# A flag where a value belongs is the missing value of the flag before it, not a stray argument.
expect_error(2 "--topk: missing its value (FRACTION)" demo --topk --heads 2)
expect_error(2 "--topk: missing its value (FRACTION)" demo --topk)
expect_error(2 "unknown command 'frob'" frob)

# Output paths are refused before any work, and the files already there stay as they were.
file(WRITE "${WORK_DIR}/cli_errors_qkv.npz" "captured tensors stand-in")
file(SHA256 "${WORK_DIR}/cli_errors_qkv.npz" qkv_before)
expect_error(2 "--out ${WORK_DIR}/cli_errors_qkv.npz: is the same file as --qkv ${WORK_DIR}/cli_errors_qkv.npz"
             calibrate --qkv "${WORK_DIR}/cli_errors_qkv.npz" --out "${WORK_DIR}/cli_errors_qkv.npz")
expect_error(2 "--png ${WORK_DIR}/cli_errors_qkv.npz: is the same file as --qkv"
             demo --qkv "${WORK_DIR}/cli_errors_qkv.npz" --png "${WORK_DIR}/cli_errors_qkv.npz")
file(SHA256 "${WORK_DIR}/cli_errors_qkv.npz" qkv_after)
if(NOT qkv_before STREQUAL qkv_after)
  message(FATAL_ERROR "a refused run changed the --qkv file")
endif()
expect_error(1 "--png ${WORK_DIR}/cli_errors_dir: is a directory; expected a file path"
             demo --grid 1x8x8 --png "${WORK_DIR}/cli_errors_dir")
expect_error(1 "--out ${WORK_DIR}/cli_errors_dir: is a directory; expected a file path"
             calibrate --qkv "${WORK_DIR}/cli_errors_qkv.npz" --out "${WORK_DIR}/cli_errors_dir")
expect_error(1 "--out ${WORK_DIR}/no_such_dir/r.json: cannot write: folder ${WORK_DIR}/no_such_dir does not exist"
             calibrate --qkv "${WORK_DIR}/cli_errors_qkv.npz" --out "${WORK_DIR}/no_such_dir/r.json")

execute_process(COMMAND "${SLA_EXE}" --version RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "^sla [0-9]+\\.[0-9]+\\.[0-9]+")
  message(FATAL_ERROR "sla --version exited with ${rc} and printed:\n${out}${err}")
endif()
