// CPU kernels for gelu_ext::bias_gelu and gelu_ext::bias_gelu_backward: the shared loop (elementwise_cpu.h) over x
// as rows of its last dimension, the bias read as a row repeated for every row.
//
// Memory traffic per element (float32): forward reads x and writes y, 8 bytes (eager F.gelu(x + b): 16, the sum
// written and read back); backward reads grad and x and writes grad_x, 12 bytes, and sums grad_x into grad_bias in
// the same pass (eager: 12 for gelu_backward + 4 for the sum over grad_x). The bias row stays in cache.
#include <torch/csrc/stable/library.h>

#include <string_view>
#include <tuple>
#include <type_traits>

#include "elementwise_cpu.h"

namespace gelu_ext::cpu {
namespace {

Tensor bias_gelu_cpu(const Tensor& x, const Tensor& bias, std::string_view approximate) {
  const RowOperands ops = prepare_bias_gelu(nullptr, x, bias, approximate);
  Tensor out = empty_contiguous_like(x);
  dispatch_floating(x.scalar_type(), [&](auto* type_tag) {
    using scalar_t = std::remove_pointer_t<decltype(type_tag)>;
    dispatch_mode(ops.mode, [&](auto mode) {
      run_rows<BiasGeluForward<mode()>>(ops.rows, ops.cols, data_of<scalar_t>(out), static_cast<scalar_t*>(nullptr),
                                        rows_in<scalar_t>(ops.inputs[0]), rows_in<scalar_t>(ops.inputs[1]));
    });
  });
  return out;
}

std::tuple<Tensor, Tensor> bias_gelu_backward_cpu(const Tensor& grad, const Tensor& x, const Tensor& bias,
                                                  std::string_view approximate) {
  const RowOperands ops = prepare_bias_gelu(&grad, x, bias, approximate);
  Tensor grad_x = empty_contiguous_like(x);
  Tensor grad_bias = empty_contiguous_like(bias);
  dispatch_floating(x.scalar_type(), [&](auto* type_tag) {
    using scalar_t = std::remove_pointer_t<decltype(type_tag)>;
    dispatch_mode(ops.mode, [&](auto mode) {
      run_rows_with_column_sum<BiasGeluBackward<mode()>>(
          ops.rows, ops.cols, data_of<scalar_t>(grad_x), data_of<scalar_t>(grad_bias), rows_in<scalar_t>(ops.inputs[0]),
          rows_in<scalar_t>(ops.inputs[1]), rows_in<scalar_t>(ops.inputs[2]));
    });
  });
  return {grad_x, grad_bias};
}

}  // namespace
}  // namespace gelu_ext::cpu

STABLE_TORCH_LIBRARY_IMPL(gelu_ext, CPU, m) {
  m.impl("bias_gelu", TORCH_BOX(&gelu_ext::cpu::bias_gelu_cpu));
  m.impl("bias_gelu_backward", TORCH_BOX(&gelu_ext::cpu::bias_gelu_backward_cpu));
}
