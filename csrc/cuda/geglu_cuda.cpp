// Registers the CUDA kernels (geglu_kernels.cu) for gelu_ext::geglu and gelu_ext::geglu_backward.
#include <torch/csrc/stable/library.h>

#include <tuple>

#include "cuda_common.h"

namespace gelu_ext::cuda {
namespace {

Tensor geglu_cuda(const Tensor& gate, const Tensor& up, std::string_view approximate) {
  const OnDevice on_device(gate);
  const RowOperands ops = prepare_geglu(nullptr, gate, up, approximate);
  Tensor out = empty_contiguous_like(gate);
  check_launch(launch_geglu_forward(rows_input(ops.inputs[0]), rows_input(ops.inputs[1]), out.mutable_data_ptr(),
                                    ops.rows, ops.cols, to_kernel_dtype(gate.scalar_type()), ops.mode,
                                    on_device.stream),
               "gelu_ext.geglu");
  return out;
}

std::tuple<Tensor, Tensor> geglu_backward_cuda(const Tensor& grad, const Tensor& gate, const Tensor& up,
                                               std::string_view approximate) {
  const OnDevice on_device(gate);
  const RowOperands ops = prepare_geglu(&grad, gate, up, approximate);
  Tensor grad_gate = empty_contiguous_like(gate);
  Tensor grad_up = empty_contiguous_like(up);
  check_launch(launch_geglu_backward(rows_input(ops.inputs[0]), rows_input(ops.inputs[1]), rows_input(ops.inputs[2]),
                                     grad_gate.mutable_data_ptr(), grad_up.mutable_data_ptr(), ops.rows, ops.cols,
                                     to_kernel_dtype(gate.scalar_type()), ops.mode, on_device.stream),
               "gelu_ext.geglu_backward");
  return {grad_gate, grad_up};
}

}  // namespace
}  // namespace gelu_ext::cuda

STABLE_TORCH_LIBRARY_IMPL(gelu_ext, CUDA, m) {
  m.impl("geglu", TORCH_BOX(&gelu_ext::cuda::geglu_cuda));
  m.impl("geglu_backward", TORCH_BOX(&gelu_ext::cuda::geglu_backward_cuda));
}
