// The CUDA elementwise machinery every op's kernels are instances of, generic in the functor of csrc/gelu_math.h
// (no torch headers: each .cu file compiles in seconds per architecture).
//
//   launch_flat        out[i] = Op::apply(in0[i], in1[i]) over flat spans that share one layout (gelu, gelu_backward)
//   launch_rows        a rows x cols problem whose inputs each have their own row stride, 0 for a bias that every row
//                      repeats (bias_gelu, geglu and their backwards); one or two contiguous outputs, and optionally
//                      the column sums of the first (grad_bias) from the same pass.
//
// Both are memory-bound by design: each thread moves 16-byte vectors (ld.global.v4 / st.global.v4) where every
// pointer and row stride allows it, and a scalar instance covers the rest. Indices are 64-bit: tensors above 2^31
// elements work. The math runs in float for float / half / bfloat16 (rounded once on the way out), double for double.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kernels.h"
#include "launch.cuh"

namespace gelu_ext::cuda::detail {

constexpr int kThreads = 256;
constexpr int kVectorsPerThread = 4;
constexpr int kVectorBytes = 16;

// Storage type <-> compute type.
template <typename scalar_t>
using compute_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The format results are rounded to, which the functors' math is chosen for (csrc/gelu_math.h, OutputFormat).
template <typename scalar_t>
constexpr OutputFormat kOutputFormat = std::is_same_v<scalar_t, __half>          ? OutputFormat::kFloat16
                                       : std::is_same_v<scalar_t, __nv_bfloat16> ? OutputFormat::kBFloat16
                                                                                 : OutputFormat::kFloat32;

__device__ __forceinline__ float to_compute(float v) { return v; }
__device__ __forceinline__ double to_compute(double v) { return v; }
__device__ __forceinline__ float to_compute(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_compute(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename scalar_t, typename value_t>
__device__ __forceinline__ scalar_t from_compute(value_t v) {
  if constexpr (std::is_same_v<scalar_t, __half>) {
    return __float2half_rn(v);
  } else if constexpr (std::is_same_v<scalar_t, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else {
    return v;
  }
}

template <typename scalar_t, int kSize_ = kVectorBytes / sizeof(scalar_t)>
struct alignas(kSize_ * sizeof(scalar_t)) Vector {
  static constexpr int kSize = kSize_;
  scalar_t values[kSize];
};

// Every vector access goes through these two: a GPU faults on a misaligned one (cudaErrorMisalignedAddress, "misaligned
// address"), and GELU_EXT_CHECK_VECTOR_ACCESS lets the host emulation (tests/cuda_emulation/emulation.h) report that
// same error where the host would crash or, on x86, silently succeed. Under nvcc it is nothing: ld/st.global.v4.
#ifndef GELU_EXT_CHECK_VECTOR_ACCESS
#define GELU_EXT_CHECK_VECTOR_ACCESS(pointer, bytes)
#endif

template <typename Vec, typename scalar_t>
__device__ __forceinline__ Vec load_vector(const scalar_t* p) {
  GELU_EXT_CHECK_VECTOR_ACCESS(p, sizeof(Vec));
  return *reinterpret_cast<const Vec*>(p);
}

template <typename Vec, typename scalar_t>
__device__ __forceinline__ void store_vector(scalar_t* p, const Vec& v) {
  GELU_EXT_CHECK_VECTOR_ACCESS(p, sizeof(Vec));
  *reinterpret_cast<Vec*>(p) = v;
}

// Applies Op elementwise: out = Op::apply(in0, ..., inK) for the K inputs, rounded once.
template <class Op, typename scalar_t, typename... Inputs>
__device__ __forceinline__ scalar_t apply_op(Inputs... inputs) {
  return from_compute<scalar_t>(Op::template apply<kOutputFormat<scalar_t>>(to_compute(inputs)...));
}

inline bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0; }

inline int max_resident_blocks() {
  int device = 0;
  int sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return std::max(sms, 1) * (2048 / kThreads);  // a full wave; the grid-stride loops cover the rest
}

// ---- Flat spans ---------------------------------------------------------------------------------------------------

// Vectorized body: every pointer is 16-byte aligned. Covers the first n_vectors * kSize elements.
template <class Op, typename scalar_t, int kInputs>
__global__ void __launch_bounds__(kThreads) elementwise_vectorized(const scalar_t* __restrict__ in0,
                                                                     const scalar_t* __restrict__ in1,
                                                                     scalar_t* __restrict__ out, int64_t n_vectors) {
  using Vec = Vector<scalar_t>;
  constexpr int kSize = Vec::kSize;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * kVectorsPerThread;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kVectorsPerThread + threadIdx.x;
       base < n_vectors; base += stride) {
    Vec va[kVectorsPerThread];
    Vec vb[kVectorsPerThread];
#pragma unroll
    for (int u = 0; u < kVectorsPerThread; ++u) {  // all loads first: 64 bytes in flight per operand
      const int64_t i = base + static_cast<int64_t>(u) * kThreads;
      if (i < n_vectors) {
        va[u] = load_vector<Vec>(in0 + i * kSize);
        if constexpr (kInputs == 2) vb[u] = load_vector<Vec>(in1 + i * kSize);
      }
    }
#pragma unroll
    for (int u = 0; u < kVectorsPerThread; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * kThreads;
      if (i < n_vectors) {
        Vec r;
#pragma unroll
        for (int j = 0; j < Vec::kSize; ++j) {
          if constexpr (kInputs == 2) {
            r.values[j] = apply_op<Op, scalar_t>(va[u].values[j], vb[u].values[j]);
          } else {
            r.values[j] = apply_op<Op, scalar_t>(va[u].values[j]);
          }
        }
        store_vector(out + i * kSize, r);
      }
    }
  }
}

// Scalar body for misaligned pointers and for the tail after the vectorized part.
template <class Op, typename scalar_t, int kInputs>
__global__ void __launch_bounds__(kThreads) elementwise_scalar(const scalar_t* __restrict__ in0,
                                                                 const scalar_t* __restrict__ in1,
                                                                 scalar_t* __restrict__ out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    if constexpr (kInputs == 2) {
      out[i] = apply_op<Op, scalar_t>(in0[i], in1[i]);
    } else {
      out[i] = apply_op<Op, scalar_t>(in0[i]);
    }
  }
}

template <class Op, typename scalar_t, int kInputs>
cudaError_t launch_flat(const void* in0_raw, const void* in1_raw, void* out_raw, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const auto* in0 = static_cast<const scalar_t*>(in0_raw);
  const auto* in1 = static_cast<const scalar_t*>(in1_raw);
  auto* out = static_cast<scalar_t*>(out_raw);
  constexpr int kSize = Vector<scalar_t>::kSize;
  const int64_t max_blocks = max_resident_blocks();
  int64_t done = 0;
  if (aligned(in0) && aligned(out) && (kInputs == 1 || aligned(in1))) {
    const int64_t n_vectors = n / kSize;
    if (n_vectors > 0) {
      const int64_t per_block = static_cast<int64_t>(kThreads) * kVectorsPerThread;
      const int64_t blocks = std::min((n_vectors + per_block - 1) / per_block, max_blocks);
      launch_kernel(elementwise_vectorized<Op, scalar_t, kInputs>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                    stream, in0, in1, out, n_vectors);
      done = n_vectors * kSize;
    }
  }
  if (done < n) {
    const int64_t rest = n - done;
    const int64_t blocks = std::min((rest + kThreads - 1) / kThreads, max_blocks);
    launch_kernel(elementwise_scalar<Op, scalar_t, kInputs>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                  stream, in0 + done, kInputs == 2 ? in1 + done : nullptr, out + done, rest);
  }
  return cudaGetLastError();
}

// ---- Rows ---------------------------------------------------------------------------------------------------------

// The arguments of one rows launch. Outputs are contiguous [rows, cols]; `partial`, for column sums, is
// [gridDim.y * blockDim.y, cols] in compute_t: one row of partial sums per row lane, added up by column_sum_kernel.
template <typename scalar_t, int kInputs>
struct RowsArgs {
  const scalar_t* in[kInputs];
  int64_t in_row_stride[kInputs];
  scalar_t* out0;
  scalar_t* out1;
  compute_t<scalar_t>* partial;
  int64_t rows;
  int64_t cols;
  int64_t rows_per_block;
};

// Op at element j of the vectors v[0..kInputs).
template <class Op, int kInputs, typename Vec>
__device__ __forceinline__ auto apply_at(const Vec (&v)[kInputs], int j) {
  constexpr OutputFormat kFormat = kOutputFormat<std::remove_cv_t<std::remove_reference_t<decltype(v[0].values[0])>>>;
  if constexpr (kInputs == 3) {
    return Op::template apply<kFormat>(to_compute(v[0].values[j]), to_compute(v[1].values[j]),
                                       to_compute(v[2].values[j]));
  } else if constexpr (kInputs == 2) {
    return Op::template apply<kFormat>(to_compute(v[0].values[j]), to_compute(v[1].values[j]));
  } else {
    return Op::template apply<kFormat>(to_compute(v[0].values[j]));
  }
}

// Block (threadIdx.x, threadIdx.y): kVec consecutive columns per thread along x, row lanes along y, so that a short
// row still fills a block. Block (blockIdx.x, blockIdx.y): a strip of columns, a range of rows_per_block rows. A
// thread keeps its columns (and a bias's values) and walks its rows; with kColumnSum it adds up its first results
// in registers and writes one row of partial sums at the end.
template <class Op, typename scalar_t, int kVec, int kInputs, bool kColumnSum>
__global__ void __launch_bounds__(kThreads) rows_kernel(const RowsArgs<scalar_t, kInputs> args) {
  using Vec = Vector<scalar_t, kVec>;
  using c_t = compute_t<scalar_t>;
  using Result = decltype(apply_at<Op, kInputs>(std::declval<const Vec (&)[kInputs]>(), 0));
  constexpr bool kTwoOutputs = std::is_same_v<Result, Pair<c_t>>;
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (col >= args.cols) return;
  const int64_t row_begin = static_cast<int64_t>(blockIdx.y) * args.rows_per_block;
  const int64_t row_end = min(args.rows, row_begin + args.rows_per_block);
  c_t sums[kVec] = {};
  for (int64_t r = row_begin + threadIdx.y; r < row_end; r += blockDim.y) {
    Vec v[kInputs];
#pragma unroll
    for (int k = 0; k < kInputs; ++k) {
      v[k] = load_vector<Vec>(args.in[k] + r * args.in_row_stride[k] + col);
    }
    Vec y0;
    Vec y1;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const Result result = apply_at<Op, kInputs>(v, j);
      if constexpr (kTwoOutputs) {
        y0.values[j] = from_compute<scalar_t>(result.first);
        y1.values[j] = from_compute<scalar_t>(result.second);
        if constexpr (kColumnSum) sums[j] += result.first;
      } else {
        y0.values[j] = from_compute<scalar_t>(result);
        if constexpr (kColumnSum) sums[j] += result;
      }
    }
    store_vector(args.out0 + r * args.cols + col, y0);
    if constexpr (kTwoOutputs) store_vector(args.out1 + r * args.cols + col, y1);
  }
  if constexpr (kColumnSum) {
    const int64_t lane = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
#pragma unroll
    for (int j = 0; j < kVec; ++j) args.partial[lane * args.cols + col + j] = sums[j];
  }
}

// column_sum[c] = sum over lanes of partial[lane, c], in lane order (deterministic), rounded once.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) column_sum_kernel(const compute_t<scalar_t>* __restrict__ partial,
                                                                int64_t lanes, int64_t cols,
                                                                scalar_t* __restrict__ column_sum) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (col >= cols) return;
  compute_t<scalar_t> total = 0;
  for (int64_t lane = 0; lane < lanes; ++lane) total += partial[lane * cols + col];
  column_sum[col] = from_compute<scalar_t>(total);
}

struct RowsGeometry {
  dim3 grid;
  dim3 block;
  int64_t rows_per_block;
};

// Columns: as many threads along x as the row needs (32 to 256); rows: enough blocks for ~4 waves, or, with column
// sums, at most kColumnSumLanes row lanes in all (the partial-sum buffer's rows: column_sum_buffer_rows).
inline RowsGeometry rows_geometry(int64_t rows, int64_t cols, int vec, bool column_sum) {
  const int64_t col_threads = (cols + vec - 1) / vec;
  int bx = 32;
  while (bx < kThreads && bx < col_threads) bx *= 2;
  const int by = kThreads / bx;
  const int64_t grid_x = (col_threads + bx - 1) / bx;
  const int64_t row_blocks_needed = (rows + by - 1) / by;
  int64_t grid_y = column_sum ? kColumnSumLanes / by
                              : std::max<int64_t>(1, 4 * static_cast<int64_t>(max_resident_blocks()) / grid_x);
  grid_y = std::max<int64_t>(1, std::min({grid_y, row_blocks_needed, int64_t{65535}}));
  const int64_t rows_per_block = (rows + grid_y - 1) / grid_y;
  return {dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y)), dim3(bx, by), rows_per_block};
}

template <class Op, typename scalar_t, int kVec, int kInputs, bool kColumnSum>
cudaError_t launch_rows_with(RowsArgs<scalar_t, kInputs> args, scalar_t* column_sum, cudaStream_t stream) {
  const RowsGeometry g = rows_geometry(args.rows, args.cols, kVec, kColumnSum);
  args.rows_per_block = g.rows_per_block;
  if (args.rows > 0) launch_kernel(rows_kernel<Op, scalar_t, kVec, kInputs, kColumnSum>, g.grid, g.block, stream, args);
  if constexpr (kColumnSum) {
    const int64_t lanes = args.rows > 0 ? static_cast<int64_t>(g.grid.y) * g.block.y : 0;  // no rows: sums are 0
    const int64_t blocks = (args.cols + kThreads - 1) / kThreads;
    launch_kernel(column_sum_kernel<scalar_t>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), stream,
                  args.partial, lanes, args.cols, column_sum);
  }
  return cudaGetLastError();
}

// Runs Op over rows x cols: 16-byte vectors when every pointer is 16-byte aligned and every row stride and cols are
// multiples of the vector, one element per thread otherwise. partial / column_sum: see RowsArgs (kColumnSum only).
template <class Op, typename scalar_t, bool kColumnSum = false, int kInputs>
cudaError_t launch_rows(const RowsInput (&inputs)[kInputs], void* out0, void* out1, void* partial, void* column_sum,
                        int64_t rows, int64_t cols, cudaStream_t stream) {
  if (cols == 0) return cudaSuccess;
  constexpr int kSize = Vector<scalar_t>::kSize;
  RowsArgs<scalar_t, kInputs> args{};
  bool vectorizable = cols % kSize == 0 && aligned(out0) && (out1 == nullptr || aligned(out1));
  for (int k = 0; k < kInputs; ++k) {
    args.in[k] = static_cast<const scalar_t*>(inputs[k].data);
    args.in_row_stride[k] = inputs[k].row_stride;
    vectorizable = vectorizable && aligned(inputs[k].data) && inputs[k].row_stride % kSize == 0;
  }
  args.out0 = static_cast<scalar_t*>(out0);
  args.out1 = static_cast<scalar_t*>(out1);
  args.partial = static_cast<compute_t<scalar_t>*>(partial);
  args.rows = rows;
  args.cols = cols;
  auto* sums = static_cast<scalar_t*>(column_sum);
  return vectorizable ? launch_rows_with<Op, scalar_t, kSize, kInputs, kColumnSum>(args, sums, stream)
                      : launch_rows_with<Op, scalar_t, 1, kInputs, kColumnSum>(args, sums, stream);
}

// Calls fn with a null pointer of the CUDA storage type of dtype.
template <typename Fn>
cudaError_t dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      return fn(static_cast<float*>(nullptr));
    case DType::kFloat64:
      return fn(static_cast<double*>(nullptr));
    case DType::kFloat16:
      return fn(static_cast<__half*>(nullptr));
    case DType::kBFloat16:
      return fn(static_cast<__nv_bfloat16*>(nullptr));
  }
  return cudaErrorInvalidValue;
}

}  // namespace gelu_ext::cuda::detail
