// The op schemas, defined once, here. Backends register their kernels in their own files
// (csrc/cpu/gelu_cpu.cpp; csrc/cuda/gelu_cuda.cpp, a library of its own). Fake kernels and autograd are
// registered in Python: gelu_ext/ops.py.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(gelu_ext, m) {
  m.def("gelu(Tensor x, str approximate=\"none\") -> Tensor");
  m.def("gelu_backward(Tensor grad_output, Tensor x, str approximate=\"none\") -> Tensor");
}
