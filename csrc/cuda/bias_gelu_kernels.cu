// CUDA kernels for bias_gelu and bias_gelu_backward: launch_rows over x's rows, the bias a row of stride 0 that each
// thread loads once for its columns.
//
// Bytes per element (float32; the bias is read once per thread, not per element): forward reads x and writes y,
// 8 bytes, against eager F.gelu(x + b)'s 16 (the sum written and read back): the fused op's ceiling is 2x eager on a
// memory-bound GPU. Backward reads grad and x and writes grad_x, 12 bytes, plus 4 bytes per column and row lane of
// partial sums (256 lanes at most: 0.1% at 2^16 rows); eager: 12 for gelu_backward + 4 for the sum over grad_x.
#include "elementwise_cuda.cuh"

namespace gelu_ext::cuda {

cudaError_t launch_bias_gelu_forward(RowsInput x, RowsInput bias, void* y, int64_t rows, int64_t cols, DType dtype,
                                     Approximate mode, cudaStream_t stream) {
  const RowsInput inputs[2] = {x, bias};
  return detail::dispatch_dtype(dtype, [&](auto* type_tag) {
    using scalar_t = std::remove_pointer_t<decltype(type_tag)>;
    return dispatch_mode(mode, [&](auto m) {
      return detail::launch_rows<BiasGeluForward<m()>, scalar_t>(inputs, y, nullptr, nullptr, nullptr, rows, cols,
                                                                 stream);
    });
  });
}

cudaError_t launch_bias_gelu_backward(RowsInput grad, RowsInput x, RowsInput bias, void* grad_x, void* grad_bias,
                                      void* partial, int64_t rows, int64_t cols, DType dtype, Approximate mode,
                                      cudaStream_t stream) {
  const RowsInput inputs[3] = {grad, x, bias};
  return detail::dispatch_dtype(dtype, [&](auto* type_tag) {
    using scalar_t = std::remove_pointer_t<decltype(type_tag)>;
    return dispatch_mode(mode, [&](auto m) {
      return detail::launch_rows<BiasGeluBackward<m()>, scalar_t, true>(inputs, grad_x, nullptr, partial, grad_bias,
                                                                        rows, cols, stream);
    });
  });
}

}  // namespace gelu_ext::cuda
