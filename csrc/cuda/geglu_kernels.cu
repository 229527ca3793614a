// CUDA kernels for geglu and geglu_backward: launch_rows over gate's and up's rows, each with its own row stride, so
// the two halves of x.chunk(2, dim=-1) are read in place (row stride 2H: still 16-byte vectors when H allows).
//
// Bytes per element (float32): forward reads gate and up and writes y, 12 bytes, against eager
// F.gelu(gate) * up's 20 (gelu(gate) written and read back): ceiling 1.67x eager. Backward reads grad, gate and up
// and writes grad_gate and grad_up, 20 bytes; eager autograd: 36, in three passes.
#include "elementwise_cuda.cuh"

namespace gelu_ext::cuda {

cudaError_t launch_geglu_forward(RowsInput gate, RowsInput up, void* y, int64_t rows, int64_t cols, DType dtype,
                                 Approximate mode, cudaStream_t stream) {
  const RowsInput inputs[2] = {gate, up};
  return detail::dispatch_dtype(dtype, [&](auto* type_tag) {
    using scalar_t = std::remove_pointer_t<decltype(type_tag)>;
    return dispatch_mode(mode, [&](auto m) {
      return detail::launch_rows<GegluForward<m()>, scalar_t>(inputs, y, nullptr, nullptr, nullptr, rows, cols,
                                                              stream);
    });
  });
}

cudaError_t launch_geglu_backward(RowsInput grad, RowsInput gate, RowsInput up, void* grad_gate, void* grad_up,
                                  int64_t rows, int64_t cols, DType dtype, Approximate mode, cudaStream_t stream) {
  const RowsInput inputs[3] = {grad, gate, up};
  return detail::dispatch_dtype(dtype, [&](auto* type_tag) {
    using scalar_t = std::remove_pointer_t<decltype(type_tag)>;
    return dispatch_mode(mode, [&](auto m) {
      return detail::launch_rows<GegluBackward<m()>, scalar_t>(inputs, grad_gate, grad_up, nullptr, nullptr, rows,
                                                               cols, stream);
    });
  });
}

}  // namespace gelu_ext::cuda
