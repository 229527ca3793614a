// The CPU elementwise machinery every op runs on: one loop, generic in the functor of csrc/gelu_math.h, over rows
// of operands that may each have their own row stride (csrc/gelu_op_common.h, Rows).
//
//   segment_loop   out[i] = Op::apply(in0[i], in1[i], ...) over one contiguous stretch of every operand: the loop
//                  GCC vectorizes (16 floats per AVX-512 instruction, 8 per AVX2 one). Compiled three times with
//                  different target attributes (AVX-512, AVX2+FMA, baseline x86-64), and a fourth time for bfloat16
//                  storage with AVX512-BF16's conversions; the best the CPU supports is picked at run time, like
//                  ATen's CPU_CAPABILITY (GELU_EXT_CPU_CAPABILITY overrides it).
//   run_rows       a rows x cols problem split over torch's intra-op threads into stretches of at most one row; a
//                  flat tensor is one row, so gelu's loop is exactly the segment loop over its span.
//   run_rows_with_column_sum
//                  the same, and the column sums of the first output (bias_gelu's grad_bias) in the same pass.
//
// The build uses -ffp-contract=off and the math spells out its fused multiply-adds, so every variant gives
// bit-identical results (tests/test_gelu.py checks this). Baseline x86-64 has no FMA instruction: there each fma is
// a library call, exact but slow (it exists for pre-2013 CPUs).
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../gelu_op_common.h"

namespace gelu_ext::cpu {

// float for float / half / bfloat16 (the half types are computed as float and rounded once), double for double.
template <typename scalar_t>
using compute_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The format results are rounded to, which the functors' math is chosen for (csrc/gelu_math.h, OutputFormat).
template <typename scalar_t>
constexpr OutputFormat kOutputFormat = std::is_same_v<scalar_t, c10::Half>       ? OutputFormat::kFloat16
                                       : std::is_same_v<scalar_t, c10::BFloat16> ? OutputFormat::kBFloat16
                                                                                 : OutputFormat::kFloat32;

// ---- The loop -----------------------------------------------------------------------------------------------------

// The loop asks for its inputs 2 KiB ahead of where it computes, a few lines at a time: every chunk of 256 bytes
// (4 lines of float, 64 elements: 4 AVX-512 or 8 AVX2 iterations) first prefetches the lines of each input that the
// chunk 2 KiB further on will read, and near the end of a segment, the first lines of the next one (the next row:
// `next` gives, per input, where it starts). Why: at ~1.5 cycles per element the math is slow enough that the
// hardware prefetcher alone falls behind on inputs that come from L3 or DRAM, more so on rows of a few KiB (it starts
// over at every row and every 4 KiB page), and the loads then stall the math instead of overlapping it. Measured with
// a standalone copy of this loop (bias_gelu erf forward, 2 threads, AVX-512, inputs rotating through more memory than
// L2 holds): no prefetch 0.235 / 1.250 / 7.95 ms at [256, 3072] / [1024, 4096] / 2^24 from DRAM; a burst of 64
// prefetches at the start of every 4 KiB block (this loop's earlier form) 0.296 / 1.415 / 8.29; prefetching as here
// within the row 0.252 / 1.216 / 6.44. One prefetch per 64-byte line costs 1/16 of an instruction per float.
constexpr int64_t kChunkBytes = 256;
constexpr int64_t kPrefetchAheadBytes = 2048;
constexpr int64_t kLineBytes = 64;

// Prefetches the kChunkBytes at in + offset (elements). The address is formed as an integer: it may lie past the
// tensor's end (after its last row), which a prefetch may touch but pointer arithmetic may not.
template <typename scalar_t>
inline __attribute__((always_inline)) void prefetch_chunk(const scalar_t* in, int64_t offset) {
  constexpr int64_t kStep = kLineBytes / sizeof(scalar_t);
  constexpr int64_t kChunk = kChunkBytes / sizeof(scalar_t);
  const uintptr_t base = reinterpret_cast<uintptr_t>(in) + static_cast<uintptr_t>(offset * sizeof(scalar_t));
  for (int64_t i = 0; i < kChunk; i += kStep) {
    __builtin_prefetch(reinterpret_cast<const void*>(base + i * sizeof(scalar_t)), 0);
  }
}

// Where each input's next segment starts, as an offset in elements from this segment's start.
template <size_t kInputs>
using NextSegment = std::array<int64_t, kInputs>;

// float16 storage on x86 is converted a chunk at a time with F16C (AVX2 and AVX-512 variants): vcvtph2ps and
// vcvtps2ph do in one instruction per 8 (AVX2) or 16 (AVX-512) values what c10::Half's portable conversions (this
// build has no global -mf16c) do in ~10 integer and float operations per value each way, which made float16 gelu
// ~1.8x float32's time per element (1.28 against 0.69 ns on one AVX-512 thread) and 0.74x F.gelu's speed. Both are
// IEEE conversions with round-to-nearest-even, subnormals included, so the bits are the baseline variant's
// (tests/test_gelu.py checks every instruction set against the others); only a NaN's payload may differ, as it does
// between CPU and GPU.
struct NoStaging {
  template <typename scalar_t>
  static constexpr bool kStages = false;
};

#if defined(__x86_64__)
// The conversions are as wide as the loop's vectors: the element loop reads the staged floats 8 (AVX2) or 16
// (AVX-512) at a time, and a 64-byte load of what two 32-byte stores just wrote cannot be forwarded from the store
// buffer on Intel cores (it waits for both stores to reach the cache). With 8-value conversions that stall took ~20%
// of the AVX-512 float16 erf forward's samples on an Intel Xeon (docs/performance.md). kWidth values per conversion.
#define GELU_EXT_DEFINE_HALF_STAGING(NAME, TARGET, WIDTH, TO_FLOAT, FROM_FLOAT)                                    \
  struct NAME {                                                                                                   \
    template <typename scalar_t>                                                                                  \
    static constexpr bool kStages = std::is_same_v<scalar_t, c10::Half>;                                          \
    template <int64_t kCount>                                                                                     \
    TARGET static void to_float(const c10::Half* in, float* out) {                                                \
      static_assert(kCount % WIDTH == 0, "a chunk is whole conversions");                                         \
      for (int64_t j = 0; j < kCount; j += WIDTH) TO_FLOAT(in + j, out + j);                                      \
    }                                                                                                             \
    template <int64_t kCount>                                                                                     \
    TARGET static void from_float(const float* in, c10::Half* out) {                                              \
      for (int64_t j = 0; j < kCount; j += WIDTH) FROM_FLOAT(in + j, out + j);                                    \
    }                                                                                                             \
  };
constexpr int kRoundToNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
#define GELU_EXT_CVT8_TO_FLOAT(in, out) \
  _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in))))
#define GELU_EXT_CVT8_FROM_FLOAT(in, out) \
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_cvtps_ph(_mm256_loadu_ps(in), kRoundToNearest))
// the zero-masked forms with a full mask: the plain 512-bit intrinsics pass an undefined operand that GCC 12 warns
// about falsely; the instruction is the same
#define GELU_EXT_CVT16_TO_FLOAT(in, out) \
  _mm512_storeu_ps(out, _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in))))
#define GELU_EXT_CVT16_FROM_FLOAT(in, out)                                \
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),                    \
                      _mm512_maskz_cvtps_ph(0xFFFF, _mm512_loadu_ps(in), kRoundToNearest))
GELU_EXT_DEFINE_HALF_STAGING(HalfStagingAvx2, __attribute__((target("avx2,fma,f16c"))), 8, GELU_EXT_CVT8_TO_FLOAT,
                             GELU_EXT_CVT8_FROM_FLOAT)
GELU_EXT_DEFINE_HALF_STAGING(HalfStagingAvx512, __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma,f16c"))),
                             16, GELU_EXT_CVT16_TO_FLOAT, GELU_EXT_CVT16_FROM_FLOAT)
#undef GELU_EXT_DEFINE_HALF_STAGING
#undef GELU_EXT_CVT8_TO_FLOAT
#undef GELU_EXT_CVT8_FROM_FLOAT
#undef GELU_EXT_CVT16_TO_FLOAT
#undef GELU_EXT_CVT16_FROM_FLOAT

// bfloat16 storage on CPUs with AVX512-BF16 (Sapphire Rapids and later Xeons, Zen 4 and later), staged like float16:
// vcvtne2ps2bf16 rounds 32 floats to bfloat16 in one instruction (round to nearest even, as c10::BFloat16's portable
// conversion), where the portable conversion vectorizes to ~7 integer and mask operations per 16 values (shift, add
// the rounding bias, a NaN test and blend, shift, pack), a sixth of the bfloat16 erf forward's vector instructions.
// The instruction treats a subnormal input as zero, and bfloat16 keeps float's subnormals (results below 2^-126: x
// beyond -13 in erf mode, and the far sides), so any 32 values with a subnormal among them (vfpclassps) take the
// portable conversion instead: same bits, at a cost only where such results are. A NaN comes out quiet with its
// payload's top bits, where the portable conversion returns the canonical NaN (payloads already differ from the GPU's).
// The load side is exact either way (a bfloat16 is a float's top half): a shift of zero-extended bits.
#define GELU_EXT_AVX512_BF16_TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,fma,f16c")))
struct BFloat16StagingAvx512 {
  template <typename scalar_t>
  static constexpr bool kStages = std::is_same_v<scalar_t, c10::BFloat16>;
  static constexpr int kSubnormal = 0x20;  // vfpclassps category: denormal
  template <int64_t kCount>
  GELU_EXT_AVX512_BF16_TARGET static void to_float(const c10::BFloat16* in, float* out) {
    static_assert(kCount % 16 == 0, "a chunk is whole conversions");
    for (int64_t j = 0; j < kCount; j += 16) {
      const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + j));
      // the zero-masked forms with a full mask, as for float16 above (GCC 12's false warning)
      _mm512_storeu_si512(out + j, _mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, bits), 16));
    }
  }
  template <int64_t kCount>
  GELU_EXT_AVX512_BF16_TARGET static void from_float(const float* in, c10::BFloat16* out) {
    static_assert(kCount % 32 == 0, "a chunk is whole conversions");
    for (int64_t j = 0; j < kCount; j += 32) {
      const __m512 low = _mm512_loadu_ps(in + j);
      const __m512 high = _mm512_loadu_ps(in + j + 16);
      if ((_mm512_fpclass_ps_mask(low, kSubnormal) | _mm512_fpclass_ps_mask(high, kSubnormal)) == 0) {
        _mm512_storeu_si512(out + j, (__m512i)_mm512_cvtne2ps_pbh(high, low));
      } else {
        for (int64_t k = j; k < j + 32; ++k) out[k] = static_cast<c10::BFloat16>(in[k]);
      }
    }
  }
};
#endif

// Whether the loop stages this element type through float buffers with Staging's conversions.
template <class Staging, typename scalar_t, typename... Inputs>
constexpr bool kStaged = Staging::template kStages<scalar_t> && (std::is_same_v<Inputs, scalar_t> && ...);

// out0[i] (and out1[i] for an Op returning a Pair) = Op::apply(in[i]...) for i < n, each result rounded once to
// scalar_t. With kColumnSum, column_sum[i] += the first result before that rounding (compute_t accumulation).
// Staged (float16 with F16C): each chunk's inputs are converted into float buffers on the stack, the same element
// loop runs on those, and its results are converted back; the tail after the last whole chunk is converted per element.
template <class Op, bool kColumnSum, class Staging, typename scalar_t, typename... Inputs, size_t... K>
inline __attribute__((always_inline)) void segment_loop(int64_t n, const NextSegment<sizeof...(Inputs)>& next,
                                                        scalar_t* __restrict out0, scalar_t* __restrict out1,
                                                        compute_t<scalar_t>* __restrict column_sum,
                                                        std::index_sequence<K...>, const Inputs* __restrict... in) {
  using c_t = compute_t<scalar_t>;
  constexpr bool kPair = std::is_same_v<std::decay_t<decltype(Op::apply(static_cast<c_t>(in[0])...))>, Pair<c_t>>;
  // One element from its inputs (as compute_t values) to where its results go (stored through `store`).
  const auto element = [&](auto store, int64_t i, auto... value) __attribute__((always_inline)) {
    const auto result = Op::template apply<kOutputFormat<scalar_t>>(static_cast<c_t>(value)...);
    if constexpr (kPair) {
      store(i, result.first, result.second);
      if constexpr (kColumnSum) column_sum[i] += result.first;
    } else {
      store(i, result, c_t(0));
      if constexpr (kColumnSum) column_sum[i] += result;
    }
  };
  const auto store_out = [&](int64_t i, c_t first, c_t second) __attribute__((always_inline)) {
    out0[i] = static_cast<scalar_t>(first);
    if constexpr (kPair) out1[i] = static_cast<scalar_t>(second);
  };
  constexpr int64_t kChunk = kChunkBytes / sizeof(scalar_t);
  constexpr int64_t kAhead = kPrefetchAheadBytes / sizeof(scalar_t);
  int64_t i = 0;
  for (; i + kChunk <= n; i += kChunk) {
    const int64_t ahead = i + kAhead;
    size_t k = 0;
    ((prefetch_chunk(in, ahead < n ? ahead : next[k] + (ahead - n)), ++k), ...);
    if constexpr (kStaged<Staging, scalar_t, Inputs...>) {
      float staged[sizeof...(Inputs)][kChunk];
      float first[kChunk];
      float second[kPair ? kChunk : 1];
      (Staging::template to_float<kChunk>(in + i, staged[K]), ...);
      const auto store_staged = [&](int64_t j, float a, float b) __attribute__((always_inline)) {
        first[j - i] = a;
        if constexpr (kPair) second[j - i] = b;
      };
      for (int64_t j = i; j < i + kChunk; ++j) element(store_staged, j, staged[K][j - i]...);
      Staging::template from_float<kChunk>(first, out0 + i);
      if constexpr (kPair) Staging::template from_float<kChunk>(second, out1 + i);
    } else {
      for (int64_t j = i; j < i + kChunk; ++j) element(store_out, j, in[j]...);
    }
  }
  for (; i < n; ++i) element(store_out, i, in[i]...);
}

// One copy of the loop per instruction set.
#define GELU_EXT_DEFINE_SEGMENT_VARIANT(SUFFIX, TARGET, STAGING)                                                  \
  template <class Op, bool kColumnSum, typename scalar_t, typename... Inputs>                                     \
  TARGET void segment_##SUFFIX(int64_t n, const NextSegment<sizeof...(Inputs)>& next, scalar_t* out0,             \
                               scalar_t* out1, compute_t<scalar_t>* column_sum, const Inputs*... in) {            \
    segment_loop<Op, kColumnSum, STAGING>(n, next, out0, out1, column_sum,                                        \
                                          std::index_sequence_for<Inputs...>{}, in...);                           \
  }

GELU_EXT_DEFINE_SEGMENT_VARIANT(baseline, , NoStaging)
#if defined(__x86_64__)
GELU_EXT_DEFINE_SEGMENT_VARIANT(avx2, __attribute__((target("avx2,fma,f16c"))), HalfStagingAvx2)
GELU_EXT_DEFINE_SEGMENT_VARIANT(avx512, __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma,f16c"))),
                                HalfStagingAvx512)
GELU_EXT_DEFINE_SEGMENT_VARIANT(avx512bf16, GELU_EXT_AVX512_BF16_TARGET, BFloat16StagingAvx512)  // bfloat16 only
#undef GELU_EXT_AVX512_BF16_TARGET
#endif
#undef GELU_EXT_DEFINE_SEGMENT_VARIANT

// kAvx512Bf16 is kAvx512 with AVX512-BF16's conversions for bfloat16 storage; every other type runs kAvx512's loops.
enum class CpuCapability { kBaseline, kAvx2, kAvx512, kAvx512Bf16 };

// The variant in use (csrc/cpu/cpu_capability.cpp): the best the CPU supports, or GELU_EXT_CPU_CAPABILITY.
CpuCapability capability();

template <class Op, bool kColumnSum, typename scalar_t, typename... Inputs>
void segment(int64_t n, const NextSegment<sizeof...(Inputs)>& next, scalar_t* out0, scalar_t* out1,
             compute_t<scalar_t>* column_sum, const Inputs*... in) {
  switch (capability()) {
#if defined(__x86_64__)
    case CpuCapability::kAvx512Bf16:
      if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
        return segment_avx512bf16<Op, kColumnSum>(n, next, out0, out1, column_sum, in...);
      }
      [[fallthrough]];
    case CpuCapability::kAvx512:
      return segment_avx512<Op, kColumnSum>(n, next, out0, out1, column_sum, in...);
    case CpuCapability::kAvx2:
      return segment_avx2<Op, kColumnSum>(n, next, out0, out1, column_sum, in...);
#endif
    default:
      return segment_baseline<Op, kColumnSum>(n, next, out0, out1, column_sum, in...);
  }
}

// ---- Rows and threads ---------------------------------------------------------------------------------------------

// An input of run_rows: element (r, c) at data[r * row_stride + c].
template <typename scalar_t>
struct RowsIn {
  const scalar_t* data;
  int64_t row_stride;
};

template <typename scalar_t>
RowsIn<scalar_t> rows_in(const Rows& rows) {
  return {static_cast<const scalar_t*>(rows.tensor.const_data_ptr()), rows.row_stride};
}

// ~40 float operations per element, ~0.4 ns per element and thread with AVX-512 (0.7 with AVX2): 16K elements are
// 6-11 us of work, enough to amortize handing a chunk to a thread (~1-2 us).
constexpr int64_t kGrainSize = 16384;

// out0 (and out1) are contiguous [rows, cols]: out[r * cols + c] = Op::apply(in[r, c]...). The split into threads
// is by element count, so a single long row (a flat tensor) is split as finely as many short ones.
template <class Op, typename scalar_t, typename... Inputs>
void run_rows(int64_t rows, int64_t cols, scalar_t* out0, scalar_t* out1, RowsIn<Inputs>... in) {
  if (rows == 0 || cols == 0) return;
  torch::stable::parallel_for(0, rows * cols, kGrainSize, [&](int64_t begin, int64_t end) {
    int64_t r = begin / cols;
    int64_t c = begin % cols;
    for (int64_t pos = begin; pos < end; ++r, c = 0) {
      const int64_t n = std::min(cols - c, end - pos);
      const NextSegment<sizeof...(Inputs)> next{(in.row_stride - c)...};  // the next row, from its first column
      segment<Op, false>(n, next, out0 + pos, out1 != nullptr ? out1 + pos : nullptr, nullptr,
                         (in.data + r * in.row_stride + c)...);
      pos += n;
    }
  });
}

// Column sums in the same pass, deterministically: the rows are cut into row blocks (a function of the shape only,
// not of the thread count) and the columns into blocks of kColumnBlock; each tile adds its rows into its row block's
// partial sums, and then, per column block, the partial sums are added in row-block order. So the result is
// bit-identical whatever the number of threads, and each column sum is a sequential sum of at most
// ceil(rows / row_blocks) terms plus a sum of row_blocks partials (gelu_ext.testing.column_sum_error_bound).
// A row block has at least kMinBlockRows rows (or all of them, when there are fewer), so the partial sums are at most
// 1/16 of the output: their extra traffic (zeroed, added into in L1, read once) is a few percent of the op's.
constexpr int64_t kColumnBlock = 1024;  // 4 KiB of float partial sums and of bias: both stay in L1 while a tile runs
constexpr int64_t kMaxRowBlocks = 64;
constexpr int64_t kMinBlockRows = 16;

inline int64_t column_sum_row_blocks(int64_t rows, int64_t cols) {
  const int64_t column_blocks = (cols + kColumnBlock - 1) / kColumnBlock;
  const int64_t wanted_tiles = std::max<int64_t>(1, rows * cols / kGrainSize);
  const int64_t row_blocks = (wanted_tiles + column_blocks - 1) / column_blocks;
  return std::max<int64_t>(1, std::min({row_blocks, rows / kMinBlockRows, kMaxRowBlocks}));
}

// As run_rows for an Op with one output, and column_sum[c] = sum over r of Op's result at (r, c), accumulated in
// compute_t and rounded once to scalar_t. rows == 0 gives zeros.
template <class Op, typename scalar_t, typename... Inputs>
void run_rows_with_column_sum(int64_t rows, int64_t cols, scalar_t* out, scalar_t* column_sum,
                              RowsIn<Inputs>... in) {
  using c_t = compute_t<scalar_t>;
  if (cols == 0) return;
  const int64_t row_blocks = column_sum_row_blocks(rows, cols);
  const int64_t rows_per_block = (rows + row_blocks - 1) / row_blocks;
  const int64_t column_blocks = (cols + kColumnBlock - 1) / kColumnBlock;
  std::unique_ptr<c_t[]> partial(new c_t[static_cast<size_t>(row_blocks * cols)]);  // each tile zeroes its own
  torch::stable::parallel_for(0, row_blocks * column_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t row_block = tile / column_blocks;
      const int64_t c = (tile % column_blocks) * kColumnBlock;
      const int64_t n = std::min(kColumnBlock, cols - c);
      c_t* sums = partial.get() + row_block * cols + c;
      std::fill(sums, sums + n, c_t(0));
      const int64_t row_end = std::min(rows, (row_block + 1) * rows_per_block);
      const NextSegment<sizeof...(Inputs)> next{in.row_stride...};  // the same columns of the next row
      for (int64_t r = row_block * rows_per_block; r < row_end; ++r) {
        segment<Op, true>(n, next, out + r * cols + c, static_cast<scalar_t*>(nullptr), sums,
                          (in.data + r * in.row_stride + c)...);
      }
    }
  });
  // Row block 0's partials take the later ones in row-block order, a row of partials at a time: each column's sum is
  // the same sequence of additions as column by column, but the inner loop runs along a row, where it vectorizes
  // (column by column it was a strided scalar loop: ~5% of bias_gelu_backward's time at [256, 1024], 1 thread).
  torch::stable::parallel_for(0, column_blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t c_begin = begin * kColumnBlock;
    const int64_t n = std::min(cols, end * kColumnBlock) - c_begin;
    c_t* __restrict total = partial.get() + c_begin;
    for (int64_t b = 1; b < row_blocks; ++b) {
      const c_t* __restrict later = partial.get() + b * cols + c_begin;
      for (int64_t c = 0; c < n; ++c) total[c] += later[c];
    }
    for (int64_t c = 0; c < n; ++c) column_sum[c_begin + c] = static_cast<scalar_t>(total[c]);
  });
}

// ---- Types --------------------------------------------------------------------------------------------------------

// Calls fn with a null pointer of the storage type of `dtype`, which the caller has checked is supported.
template <typename Fn>
void dispatch_floating(ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case ScalarType::Float:
      return fn(static_cast<float*>(nullptr));
    case ScalarType::Double:
      return fn(static_cast<double*>(nullptr));
    case ScalarType::Half:
      return fn(static_cast<c10::Half*>(nullptr));
    case ScalarType::BFloat16:
      return fn(static_cast<c10::BFloat16*>(nullptr));
    default:
      check(false, "gelu_ext: unsupported dtype ", dtype);
  }
}

template <typename scalar_t>
scalar_t* data_of(Tensor& t) {
  return static_cast<scalar_t*>(t.mutable_data_ptr());
}

}  // namespace gelu_ext::cpu
