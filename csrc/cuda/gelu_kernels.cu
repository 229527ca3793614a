// CUDA kernels for gelu and gelu_backward: one memory-bound elementwise pass over flat spans, with the math
// from csrc/gelu_math.h (the same code the CPU runs; built with --fmad=false it rounds identically).
//
// Bytes per element: forward reads 1 and writes 1 element (8 bytes in float32, 4 in bf16/fp16); backward reads
// 2 and writes 1 (12 bytes in float32). At 2^28 float32 elements forward moves 2 GiB: ~0.7 ms at 3 TB/s.
//
// Each thread moves 16-byte vectors (ld.global.v4 / st.global.v4), kVectorsPerThread of them loaded before any
// is used so that enough bytes are in flight; a scalar kernel covers misaligned pointers (a slice starting at an
// odd offset) and the tail. Indices are 64-bit: tensors above 2^31 elements work.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "gelu_cuda.h"

namespace gelu_ext::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kVectorsPerThread = 4;
constexpr int kVectorBytes = 16;

// Storage type <-> compute type: float for float/half/bfloat16 (rounded once on the way out), double for double.
__device__ __forceinline__ float to_compute(float v) { return v; }
__device__ __forceinline__ double to_compute(double v) { return v; }
__device__ __forceinline__ float to_compute(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_compute(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename scalar_t, typename compute_t>
__device__ __forceinline__ scalar_t from_compute(compute_t v) {
  if constexpr (std::is_same_v<scalar_t, __half>) {
    return __float2half_rn(v);
  } else if constexpr (std::is_same_v<scalar_t, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else {
    return v;
  }
}

template <typename scalar_t>
struct alignas(kVectorBytes) Vector {
  static constexpr int kSize = kVectorBytes / sizeof(scalar_t);
  scalar_t values[kSize];
};

// Applies Op elementwise: out[i] = Op::apply(in0[i], ..., inK[i]) for the K inputs.
template <class Op, typename scalar_t, typename... Inputs>
__device__ __forceinline__ scalar_t apply_op(Inputs... inputs) {
  return from_compute<scalar_t>(Op::apply(to_compute(inputs)...));
}

// Vectorized body: every pointer is 16-byte aligned. Covers the first n_vectors * kSize elements.
template <class Op, typename scalar_t, int kInputs>
__global__ void __launch_bounds__(kThreads) elementwise_vectorized(const scalar_t* __restrict__ in0,
                                                                     const scalar_t* __restrict__ in1,
                                                                     scalar_t* __restrict__ out, int64_t n_vectors) {
  using Vec = Vector<scalar_t>;
  const Vec* a = reinterpret_cast<const Vec*>(in0);
  const Vec* b = reinterpret_cast<const Vec*>(in1);
  Vec* y = reinterpret_cast<Vec*>(out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * kVectorsPerThread;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kVectorsPerThread + threadIdx.x;
       base < n_vectors; base += stride) {
    Vec va[kVectorsPerThread];
    Vec vb[kVectorsPerThread];
#pragma unroll
    for (int u = 0; u < kVectorsPerThread; ++u) {  // all loads first: 64 bytes in flight per operand
      const int64_t i = base + static_cast<int64_t>(u) * kThreads;
      if (i < n_vectors) {
        va[u] = a[i];
        if constexpr (kInputs == 2) vb[u] = b[i];
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
        y[i] = r;
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

int max_resident_blocks() {
  int device = 0;
  int sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return std::max(sms, 1) * (2048 / kThreads);  // a full wave; the grid-stride loops cover the rest
}

bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0; }

template <class Op, typename scalar_t, int kInputs>
cudaError_t launch(const void* in0_raw, const void* in1_raw, void* out_raw, int64_t n, cudaStream_t stream) {
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
      elementwise_vectorized<Op, scalar_t, kInputs>
          <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(in0, in1, out, n_vectors);
      done = n_vectors * kSize;
    }
  }
  if (done < n) {
    const int64_t rest = n - done;
    const int64_t blocks = std::min((rest + kThreads - 1) / kThreads, max_blocks);
    elementwise_scalar<Op, scalar_t, kInputs><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        in0 + done, kInputs == 2 ? in1 + done : nullptr, out + done, rest);
  }
  return cudaGetLastError();
}

template <class Op, int kInputs>
cudaError_t launch_for_dtype(const void* in0, const void* in1, void* out, int64_t n, DType dtype,
                             cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return launch<Op, float, kInputs>(in0, in1, out, n, stream);
    case DType::kFloat64:
      return launch<Op, double, kInputs>(in0, in1, out, n, stream);
    case DType::kFloat16:
      return launch<Op, __half, kInputs>(in0, in1, out, n, stream);
    case DType::kBFloat16:
      return launch<Op, __nv_bfloat16, kInputs>(in0, in1, out, n, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_gelu_forward(const void* x, void* y, int64_t n, DType dtype, Approximate mode,
                                cudaStream_t stream) {
  return mode == Approximate::kTanh
             ? launch_for_dtype<GeluForward<Approximate::kTanh>, 1>(x, nullptr, y, n, dtype, stream)
             : launch_for_dtype<GeluForward<Approximate::kNone>, 1>(x, nullptr, y, n, dtype, stream);
}

cudaError_t launch_gelu_backward(const void* grad, const void* x, void* y, int64_t n, DType dtype, Approximate mode,
                                 cudaStream_t stream) {
  return mode == Approximate::kTanh
             ? launch_for_dtype<GeluBackward<Approximate::kTanh>, 2>(grad, x, y, n, dtype, stream)
             : launch_for_dtype<GeluBackward<Approximate::kNone>, 2>(grad, x, y, n, dtype, stream);
}

}  // namespace gelu_ext::cuda
