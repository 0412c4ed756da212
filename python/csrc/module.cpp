// The Python module sla._C. Importing it loads this shared library, whose static initialisers register the torch
// ops (ops_schema.cpp, ops_cpu.cpp, ops_cuda.cpp); the module itself only adds two informational functions. Plain
// CPython API: no pybind11 and no libtorch_python, so the extension depends on the C++ torch libraries alone.
#include <Python.h>

#include <string>

#include "sla/sla.h"

namespace {

PyObject* build_info(PyObject*, PyObject*) {
  const std::string info = sla::build_info();
  return PyUnicode_FromStringAndSize(info.data(), static_cast<Py_ssize_t>(info.size()));
}

PyObject* cuda_available(PyObject*, PyObject*) {
  if (sla::cuda_available()) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
}

PyMethodDef kMethods[] = {
    {"build_info", build_info, METH_NOARGS, "One line: version, backends, CUDA archs, head dims and dtypes built."},
    {"cuda_available", cuda_available, METH_NOARGS,
     "True when the library was built with its CUDA backend and a CUDA device is present."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_C", "SLA torch ops (torch.ops.sla.*).", -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&kModule); }
