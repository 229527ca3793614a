// The one place a kernel is launched (tests/test_cuda_emulation.py fails on a `<<<` anywhere else in csrc/cuda/).
//
// Under nvcc it is a plain triple-chevron launch. The host emulation (tests/cuda_emulation/emulation.h, force-included
// when the *_kernels.cu files are compiled as C++ for the tests) defines GELU_EXT_CUDA_EMULATION and runs every block
// and thread of the grid on the CPU instead, after checking the launch configuration as the driver does; a launch
// error is reported through cudaGetLastError in both builds, so the launchers' error path is the same code.
#pragma once

#include <cuda_runtime.h>

namespace gelu_ext::cuda::detail {

// The arguments convert to the kernel's parameter types (as with <<<>>>), rather than being deduced from the call.
template <typename T>
struct KernelParameter {
  using type = T;
};

// kernel<<<grid, block, 0, stream>>>(args...): no dynamic shared memory (no kernel here uses shared memory).
template <typename... Params>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                          typename KernelParameter<Params>::type... args) {
#if defined(GELU_EXT_CUDA_EMULATION)
  ::gelu_ext::emulation::launch(kernel, grid, block, stream, args...);
#else
  kernel<<<grid, block, 0, stream>>>(args...);
#endif
}

}  // namespace gelu_ext::cuda::detail
