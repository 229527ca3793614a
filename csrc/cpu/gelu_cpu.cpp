// CPU kernels for gelu_ext::gelu and gelu_ext::gelu_backward: the shared loop (elementwise_cpu.h) over the flat
// span of x in the output's layout (gelu_op_common.h), one row of numel() elements.
//
// Memory traffic per element: forward reads 1 and writes 1 (8 bytes for float32), backward reads 2 and writes 1
// (12 bytes).
#include <torch/csrc/stable/library.h>

#include <string_view>
#include <type_traits>

#include "elementwise_cpu.h"

namespace gelu_ext::cpu {
namespace {

Tensor gelu_cpu(const Tensor& x, std::string_view approximate) {
  Operands ops = prepare_forward(x, approximate);
  dispatch_floating(x.scalar_type(), [&](auto* type_tag) {
    using scalar_t = std::remove_pointer_t<decltype(type_tag)>;
    dispatch_mode(ops.mode, [&](auto mode) {
      run_rows<GeluForward<mode()>>(1, ops.out.numel(), data_of<scalar_t>(ops.out), static_cast<scalar_t*>(nullptr),
                                    RowsIn<scalar_t>{static_cast<const scalar_t*>(ops.x.const_data_ptr()), 0});
    });
  });
  return ops.out;
}

Tensor gelu_backward_cpu(const Tensor& grad, const Tensor& x, std::string_view approximate) {
  Operands ops = prepare_backward(grad, x, approximate);
  dispatch_floating(x.scalar_type(), [&](auto* type_tag) {
    using scalar_t = std::remove_pointer_t<decltype(type_tag)>;
    dispatch_mode(ops.mode, [&](auto mode) {
      run_rows<GeluBackward<mode()>>(1, ops.out.numel(), data_of<scalar_t>(ops.out), static_cast<scalar_t*>(nullptr),
                                     RowsIn<scalar_t>{static_cast<const scalar_t*>(ops.grad.const_data_ptr()), 0},
                                     RowsIn<scalar_t>{static_cast<const scalar_t*>(ops.x.const_data_ptr()), 0});
    });
  });
  return ops.out;
}

}  // namespace
}  // namespace gelu_ext::cpu

STABLE_TORCH_LIBRARY_IMPL(gelu_ext, CPU, m) {
  m.impl("gelu", TORCH_BOX(&gelu_ext::cpu::gelu_cpu));
  m.impl("gelu_backward", TORCH_BOX(&gelu_ext::cpu::gelu_backward_cpu));
}
