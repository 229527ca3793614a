// Registers the CUDA kernels (gelu_kernels.cu) for gelu_ext::gelu and gelu_ext::gelu_backward: argument checks,
// output layout, device guard and current stream here; the arithmetic in the kernels.
//
// This file and the kernels form a library of their own, gelu_ext/_cuda.abi3.so, which gelu_ext loads only when
// the installed torch is a CUDA build: the same wheel then imports on a CPU-only torch. Like the CPU library it
// uses only the stable ABI; the current stream comes from the AOTI C shim's CUDA part (USE_CUDA, set by setup.py
// for this library only).
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "../gelu_op_common.h"
#include "gelu_cuda.h"

namespace gelu_ext {
namespace {

cuda::DType to_kernel_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Float:
      return cuda::DType::kFloat32;
    case ScalarType::Double:
      return cuda::DType::kFloat64;
    case ScalarType::Half:
      return cuda::DType::kFloat16;
    case ScalarType::BFloat16:
      return cuda::DType::kBFloat16;
    default:
      check(false, "gelu_ext: unsupported dtype ", t);
      return cuda::DType::kFloat32;  // unreachable
  }
}

void check_launch(cudaError_t status, const char* op) {
  if (status == cudaSuccess) return;
  if (status == cudaErrorNoKernelImageForDevice || status == cudaErrorInvalidDeviceFunction) {
    int device = 0;
    cudaDeviceProp props{};
    cudaGetDevice(&device);
    cudaGetDeviceProperties(&props, device);
    check(false, op, ": gelu_ext has no kernel for this GPU (", props.name, ", sm_", props.major,
                  props.minor, "). Rebuild it for this architecture: TORCH_CUDA_ARCH_LIST=\"", props.major, ".",
                  props.minor, "\" pip install --force-reinstall --no-deps <path to a gelu_ext checkout or sdist>");
  }
  check(false, op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

// The device guard and stream of one call on x's device.
struct OnDevice {
  torch::stable::accelerator::DeviceGuard guard;
  cudaStream_t stream;

  explicit OnDevice(const Tensor& x) : guard(x.get_device_index()), stream(current_stream(x)) {}

  static cudaStream_t current_stream(const Tensor& x) {
    void* stream = nullptr;
    const AOTITorchError status = aoti_torch_get_current_cuda_stream(x.get_device_index(), &stream);
    check(status == AOTI_TORCH_SUCCESS, "gelu_ext: could not get the current CUDA stream");
    return static_cast<cudaStream_t>(stream);
  }
};

Tensor gelu_cuda(const Tensor& x, std::string_view approximate) {
  const OnDevice on_device(x);
  const Operands ops = prepare_forward(x, approximate);
  check_launch(cuda::launch_gelu_forward(ops.x.const_data_ptr(), ops.out.mutable_data_ptr(), ops.out.numel(),
                                         to_kernel_dtype(x.scalar_type()), ops.mode, on_device.stream),
               "gelu_ext.gelu");
  return ops.out;
}

Tensor gelu_backward_cuda(const Tensor& grad, const Tensor& x, std::string_view approximate) {
  const OnDevice on_device(x);
  const Operands ops = prepare_backward(grad, x, approximate);
  check_launch(cuda::launch_gelu_backward(ops.grad.const_data_ptr(), ops.x.const_data_ptr(),
                                          ops.out.mutable_data_ptr(), ops.out.numel(),
                                          to_kernel_dtype(x.scalar_type()), ops.mode, on_device.stream),
               "gelu_ext.gelu_backward");
  return ops.out;
}

}  // namespace
}  // namespace gelu_ext

STABLE_TORCH_LIBRARY_IMPL(gelu_ext, CUDA, m) {
  m.impl("gelu", TORCH_BOX(&gelu_ext::gelu_cuda));
  m.impl("gelu_backward", TORCH_BOX(&gelu_ext::gelu_backward_cuda));
}
