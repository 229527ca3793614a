// What every op's CUDA registration (*_cuda.cpp) shares: the device guard and current stream of a call, the
// kernels' dtype, and launch errors turned into clear messages.
//
// These files and the kernels form a library of their own, gelu_ext/_cuda.abi3.so, which gelu_ext loads only when
// the installed torch is a CUDA build: the same wheel then imports on a CPU-only torch. Like the CPU library it
// uses only the stable ABI; the current stream comes from the AOTI C shim's CUDA part (USE_CUDA, set by setup.py
// for this library only).
#pragma once

#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include "../gelu_op_common.h"
#include "kernels.h"

namespace gelu_ext::cuda {

inline DType to_kernel_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Float:
      return DType::kFloat32;
    case ScalarType::Double:
      return DType::kFloat64;
    case ScalarType::Half:
      return DType::kFloat16;
    case ScalarType::BFloat16:
      return DType::kBFloat16;
    default:
      check(false, "gelu_ext: unsupported dtype ", t);
      return DType::kFloat32;  // unreachable
  }
}

inline void check_launch(cudaError_t status, const char* op) {
  if (status == cudaSuccess) return;
  if (status == cudaErrorNoKernelImageForDevice || status == cudaErrorInvalidDeviceFunction) {
    int device = 0;
    cudaDeviceProp props{};
    cudaGetDevice(&device);
    cudaGetDeviceProperties(&props, device);
    check(false, op, ": gelu_ext has no kernel for this GPU (", props.name, ", sm_", props.major, props.minor,
          "). Rebuild it for this architecture: TORCH_CUDA_ARCH_LIST=\"", props.major, ".", props.minor,
          "\" pip install --force-reinstall --no-deps <path to a gelu_ext checkout or sdist>");
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

inline RowsInput rows_input(const Rows& rows) { return {rows.tensor.const_data_ptr(), rows.row_stride}; }

}  // namespace gelu_ext::cuda
