// `gelu_ext._C`: loading this module registers the ops (the static initializers of the files linked into it); the
// module itself only reports and sets the CPU code path.
//
// It is written against the Python limited C API (Py_LIMITED_API, set by setup.py), so one binary serves every
// CPython from 3.10 on: the wheel is tagged cp310-abi3. No pybind11, no torch Python bindings.
#include <Python.h>

#include <exception>
#include <string>

namespace gelu_ext {
std::string cpu_capability();  // csrc/cpu/cpu_capability.cpp
void set_cpu_capability(const std::string& name);
}  // namespace gelu_ext

namespace {

PyObject* cpu_capability(PyObject* /*self*/, PyObject* /*args*/) {
  return PyUnicode_FromString(gelu_ext::cpu_capability().c_str());
}

PyObject* set_cpu_capability(PyObject* /*self*/, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "s:set_cpu_capability", &name)) return nullptr;
  try {
    gelu_ext::set_cpu_capability(name);
  } catch (const std::exception& error) {  // an unknown name, or one this CPU does not support
    PyErr_SetString(PyExc_ValueError, error.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"cpu_capability", cpu_capability, METH_NOARGS,
     "The instruction set the CPU kernels run with: avx512_bf16, avx512, avx2 or baseline"},
    {"set_cpu_capability", set_cpu_capability, METH_VARARGS,
     "Force the CPU kernels' instruction set (for tests and benchmarks); results are bit-identical"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "gelu_ext compiled core: registers torch.ops.gelu_ext.* (schemas and CPU kernels)",
    -1,
    methods,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
