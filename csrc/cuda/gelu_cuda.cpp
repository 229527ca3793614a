// Registers the CUDA kernels (gelu_kernels.cu) for gelu_ext::gelu and gelu_ext::gelu_backward: argument checks,
// output layout, device guard and current stream here; the arithmetic in the kernels.
#include <torch/csrc/stable/library.h>

#include "cuda_common.h"

namespace gelu_ext::cuda {
namespace {

Tensor gelu_cuda(const Tensor& x, std::string_view approximate) {
  const OnDevice on_device(x);
  Operands ops = prepare_forward(x, approximate);
  check_launch(launch_gelu_forward(ops.x.const_data_ptr(), ops.out.mutable_data_ptr(), ops.out.numel(),
                                   to_kernel_dtype(x.scalar_type()), ops.mode, on_device.stream),
               "gelu_ext.gelu");
  return ops.out;
}

Tensor gelu_backward_cuda(const Tensor& grad, const Tensor& x, std::string_view approximate) {
  const OnDevice on_device(x);
  Operands ops = prepare_backward(grad, x, approximate);
  check_launch(launch_gelu_backward(ops.grad.const_data_ptr(), ops.x.const_data_ptr(), ops.out.mutable_data_ptr(),
                                    ops.out.numel(), to_kernel_dtype(x.scalar_type()), ops.mode, on_device.stream),
               "gelu_ext.gelu_backward");
  return ops.out;
}

}  // namespace
}  // namespace gelu_ext::cuda

STABLE_TORCH_LIBRARY_IMPL(gelu_ext, CUDA, m) {
  m.impl("gelu", TORCH_BOX(&gelu_ext::cuda::gelu_cuda));
  m.impl("gelu_backward", TORCH_BOX(&gelu_ext::cuda::gelu_backward_cuda));
}
