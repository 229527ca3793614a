// The interface between the CUDA kernels (gelu_kernels.cu: no torch headers, so it compiles fast) and their
// registration with the dispatcher (gelu_cuda.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../gelu_math.h"

namespace gelu_ext::cuda {

enum class DType : int { kFloat32, kFloat64, kFloat16, kBFloat16 };

// y = gelu(x) over n elements in storage order. Returns the launch status.
cudaError_t launch_gelu_forward(const void* x, void* y, int64_t n, DType dtype, Approximate mode,
                                cudaStream_t stream);

// y = grad * gelu'(x) over n elements in storage order. Returns the launch status.
cudaError_t launch_gelu_backward(const void* grad, const void* x, void* y, int64_t n, DType dtype, Approximate mode,
                                 cudaStream_t stream);

}  // namespace gelu_ext::cuda
