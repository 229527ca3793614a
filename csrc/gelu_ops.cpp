// The op schemas, defined once, here. Backends register their kernels in their own files
// (csrc/cpu/*_cpu.cpp; csrc/cuda/*_cuda.cpp, a library of its own). Fake kernels and autograd are
// registered in Python: gelu_ext/ops.py.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(gelu_ext, m) {
  m.def("gelu(Tensor x, str approximate=\"none\") -> Tensor");
  m.def("gelu_backward(Tensor grad_output, Tensor x, str approximate=\"none\") -> Tensor");
  // gelu(x + bias), bias of shape [x.shape[-1]]; the backward returns (grad_x, grad_bias).
  m.def("bias_gelu(Tensor x, Tensor bias, str approximate=\"none\") -> Tensor");
  m.def("bias_gelu_backward(Tensor grad_output, Tensor x, Tensor bias, str approximate=\"none\") -> (Tensor, Tensor)");
  // gelu(gate) * up; the backward returns (grad_gate, grad_up).
  m.def("geglu(Tensor gate, Tensor up, str approximate=\"none\") -> Tensor");
  m.def("geglu_backward(Tensor grad_output, Tensor gate, Tensor up, str approximate=\"none\") -> (Tensor, Tensor)");
}
