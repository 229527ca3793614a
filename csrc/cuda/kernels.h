// The interface between the CUDA kernels (*_kernels.cu, built on elementwise_cuda.cuh: no torch headers, so they
// compile fast) and their registration with the dispatcher (*_cuda.cpp). Each launcher returns the launch status.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../gelu_math.h"

namespace gelu_ext::cuda {

enum class DType : int { kFloat32, kFloat64, kFloat16, kBFloat16 };

// An input of a row op: element (r, c) at data[r * row_stride + c] (csrc/gelu_op_common.h, Rows).
struct RowsInput {
  const void* data;
  int64_t row_stride;
};

// bias_gelu_backward's grad_bias is summed in the same pass as grad_x, in at most this many partial sums per column
// (one per row lane of the launch), then added up in order by a second small kernel: deterministic.
constexpr int64_t kColumnSumLanes = 256;

// Rows of the partial-sum buffer (compute type: float, double for float64; x cols) bias_gelu_backward needs.
inline int64_t column_sum_buffer_rows(int64_t rows) { return std::min<int64_t>(kColumnSumLanes, rows + 8); }

// y = gelu(x) over n elements in storage order.
cudaError_t launch_gelu_forward(const void* x, void* y, int64_t n, DType dtype, Approximate mode,
                                cudaStream_t stream);

// y = grad * gelu'(x) over n elements in storage order.
cudaError_t launch_gelu_backward(const void* grad, const void* x, void* y, int64_t n, DType dtype, Approximate mode,
                                 cudaStream_t stream);

// y[r, c] = gelu(x[r, c] + bias[c]); y contiguous [rows, cols].
cudaError_t launch_bias_gelu_forward(RowsInput x, RowsInput bias, void* y, int64_t rows, int64_t cols, DType dtype,
                                     Approximate mode, cudaStream_t stream);

// grad_x[r, c] = grad[r, c] * gelu'(x[r, c] + bias[c]) and grad_bias[c] = sum over r of grad_x[r, c] (before
// rounding), through `partial` (column_sum_buffer_rows(rows) x cols of the compute type).
cudaError_t launch_bias_gelu_backward(RowsInput grad, RowsInput x, RowsInput bias, void* grad_x, void* grad_bias,
                                      void* partial, int64_t rows, int64_t cols, DType dtype, Approximate mode,
                                      cudaStream_t stream);

// y = gelu(gate) * up; y contiguous [rows, cols].
cudaError_t launch_geglu_forward(RowsInput gate, RowsInput up, void* y, int64_t rows, int64_t cols, DType dtype,
                                 Approximate mode, cudaStream_t stream);

// grad_gate = grad * up * gelu'(gate), grad_up = grad * gelu(gate); both contiguous [rows, cols].
cudaError_t launch_geglu_backward(RowsInput grad, RowsInput gate, RowsInput up, void* grad_gate, void* grad_up,
                                  int64_t rows, int64_t cols, DType dtype, Approximate mode, cudaStream_t stream);

}  // namespace gelu_ext::cuda
