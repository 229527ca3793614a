// Registers the CUDA kernels (gelu_kernels.cu) for gelu_ext::gelu and gelu_ext::gelu_backward: argument checks,
// output layout, device guard and current stream here; the arithmetic in the kernels.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../gelu_op_common.h"
#include "gelu_cuda.h"

namespace gelu_ext {
namespace {

cuda::DType to_kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return cuda::DType::kFloat32;
    case at::kDouble:
      return cuda::DType::kFloat64;
    case at::kHalf:
      return cuda::DType::kFloat16;
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "gelu_ext: unsupported dtype ", t);
  }
}

void check_launch(cudaError_t status, const char* op) {
  if (status == cudaSuccess) return;
  if (status == cudaErrorNoKernelImageForDevice || status == cudaErrorInvalidDeviceFunction) {
    int device = 0;
    cudaDeviceProp props{};
    cudaGetDevice(&device);
    cudaGetDeviceProperties(&props, device);
    TORCH_CHECK(false, op, ": gelu_ext has no kernel for this GPU (", props.name, ", sm_", props.major, props.minor,
                "). Rebuild it for this architecture: TORCH_CUDA_ARCH_LIST=\"", props.major, ".", props.minor,
                "\" pip install --no-build-isolation --force-reinstall --no-deps <path to a gelu_ext checkout or sdist>");
  }
  TORCH_CHECK(false, op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

at::Tensor gelu_cuda(const at::Tensor& x, c10::string_view approximate) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Operands ops = prepare_forward(x, approximate);
  check_launch(cuda::launch_gelu_forward(ops.x.const_data_ptr(), ops.out.mutable_data_ptr(), ops.out.numel(),
                                         to_kernel_dtype(x.scalar_type()), ops.mode,
                                         c10::cuda::getCurrentCUDAStream()),
               "gelu_ext.gelu");
  return ops.out;
}

at::Tensor gelu_backward_cuda(const at::Tensor& grad, const at::Tensor& x, c10::string_view approximate) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Operands ops = prepare_backward(grad, x, approximate);
  check_launch(cuda::launch_gelu_backward(ops.grad.const_data_ptr(), ops.x.const_data_ptr(),
                                          ops.out.mutable_data_ptr(), ops.out.numel(),
                                          to_kernel_dtype(x.scalar_type()), ops.mode,
                                          c10::cuda::getCurrentCUDAStream()),
               "gelu_ext.gelu_backward");
  return ops.out;
}

}  // namespace
}  // namespace gelu_ext

TORCH_LIBRARY_IMPL(gelu_ext, CUDA, m) {
  m.impl("gelu", &gelu_ext::gelu_cuda);
  m.impl("gelu_backward", &gelu_ext::gelu_backward_cuda);
}
