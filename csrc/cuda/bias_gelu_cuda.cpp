// Registers the CUDA kernels (bias_gelu_kernels.cu) for gelu_ext::bias_gelu and gelu_ext::bias_gelu_backward.
#include <torch/csrc/stable/library.h>

#include <tuple>

#include "cuda_common.h"

namespace gelu_ext::cuda {
namespace {

Tensor bias_gelu_cuda(const Tensor& x, const Tensor& bias, std::string_view approximate) {
  const OnDevice on_device(x);
  const RowOperands ops = prepare_bias_gelu(nullptr, x, bias, approximate);
  Tensor out = empty_contiguous_like(x);
  check_launch(launch_bias_gelu_forward(rows_input(ops.inputs[0]), rows_input(ops.inputs[1]), out.mutable_data_ptr(),
                                        ops.rows, ops.cols, to_kernel_dtype(x.scalar_type()), ops.mode,
                                        on_device.stream),
               "gelu_ext.bias_gelu");
  return out;
}

std::tuple<Tensor, Tensor> bias_gelu_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& bias,
                                                   std::string_view approximate) {
  const OnDevice on_device(x);
  const RowOperands ops = prepare_bias_gelu(&grad, x, bias, approximate);
  Tensor grad_x = empty_contiguous_like(x);
  Tensor grad_bias = empty_contiguous_like(bias);
  // The partial column sums, in the kernels' compute type (from the caching allocator, like every output).
  const std::vector<int64_t> partial_sizes = {column_sum_buffer_rows(ops.rows), ops.cols};
  const ScalarType partial_dtype = x.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  Tensor partial = empty_strided_like(x, partial_sizes, contiguous_strides(partial_sizes), partial_dtype);
  check_launch(launch_bias_gelu_backward(rows_input(ops.inputs[0]), rows_input(ops.inputs[1]),
                                         rows_input(ops.inputs[2]), grad_x.mutable_data_ptr(),
                                         grad_bias.mutable_data_ptr(), partial.mutable_data_ptr(), ops.rows, ops.cols,
                                         to_kernel_dtype(x.scalar_type()), ops.mode, on_device.stream),
               "gelu_ext.bias_gelu_backward");
  return {grad_x, grad_bias};
}

}  // namespace
}  // namespace gelu_ext::cuda

STABLE_TORCH_LIBRARY_IMPL(gelu_ext, CUDA, m) {
  m.impl("bias_gelu", TORCH_BOX(&gelu_ext::cuda::bias_gelu_cuda));
  m.impl("bias_gelu_backward", TORCH_BOX(&gelu_ext::cuda::bias_gelu_backward_cuda));
}
