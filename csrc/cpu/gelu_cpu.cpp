// CPU kernels for gelu_ext::gelu and gelu_ext::gelu_backward.
//
// Each kernel is a plain loop over a flat span that calls the shared scalar math (csrc/gelu_math.h). The
// math is branch-free and call-free float arithmetic, so GCC/Clang vectorize the loop (16 floats per AVX-512
// instruction, 8 per AVX2 one); it is compiled three times with different target attributes (AVX-512, AVX2+FMA,
// baseline x86-64) and the best one the CPU supports is picked at run time, like ATen's CPU_CAPABILITY. The build
// uses -ffp-contract=off and the math spells out its fused multiply-adds, so every variant gives bit-identical
// results (tests/test_gelu.py checks this). Baseline x86-64 has no FMA instruction: there each fma is a library
// call, exact but slow (it exists for pre-2013 CPUs).
//
// Memory traffic per element: forward reads 1 and writes 1 (8 bytes for float32), backward reads 2 and
// writes 1 (12 bytes). The work is split across torch's intra-op threads (torch::stable::parallel_for).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "../gelu_op_common.h"

namespace gelu_ext {
namespace {

// float for float / half / bfloat16 (the half types are computed as float and rounded once), double for double.
template <typename scalar_t>
using compute_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The loops run over blocks of 4 KiB and ask for the next block's inputs before computing this one. Why: at ~1
// cycle per element the math is slow enough that the hardware prefetcher falls behind on inputs that come from
// DRAM; measured at 2^22 float32 elements with inputs rotating through DRAM, the forward took 2.7 ms without it
// (F.gelu 1.5 ms, a plain x * 2 0.66 ms). One prefetch per 64-byte line costs 1/16 of an instruction per float.
// (Prefetching the output lines for writing as well made it slower.)
constexpr int64_t kBlockBytes = 4096;
constexpr int64_t kLineBytes = 64;

template <typename scalar_t>
inline __attribute__((always_inline)) void prefetch_inputs(const scalar_t* __restrict in0,
                                                           const scalar_t* __restrict in1, int64_t begin, int64_t end) {
  constexpr int64_t kStep = kLineBytes / sizeof(scalar_t);
  for (int64_t i = begin; i < end; i += kStep) {
    __builtin_prefetch(in0 + i, 0);
    if (in1 != nullptr) __builtin_prefetch(in1 + i, 0);
  }
}

template <class Op, typename scalar_t>
inline __attribute__((always_inline)) void forward_loop(const scalar_t* __restrict x, scalar_t* __restrict y,
                                                        int64_t n) {
  constexpr int64_t kBlock = kBlockBytes / sizeof(scalar_t);
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    const int64_t end = std::min(n, begin + kBlock);
    prefetch_inputs<scalar_t>(x, nullptr, end, std::min(n, end + kBlock));
    for (int64_t i = begin; i < end; ++i) {
      y[i] = static_cast<scalar_t>(Op::apply(static_cast<compute_t<scalar_t>>(x[i])));
    }
  }
}

template <class Op, typename scalar_t>
inline __attribute__((always_inline)) void backward_loop(const scalar_t* __restrict grad,
                                                         const scalar_t* __restrict x, scalar_t* __restrict y,
                                                         int64_t n) {
  using c_t = compute_t<scalar_t>;
  constexpr int64_t kBlock = kBlockBytes / sizeof(scalar_t);
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    const int64_t end = std::min(n, begin + kBlock);
    prefetch_inputs<scalar_t>(grad, x, end, std::min(n, end + kBlock));
    for (int64_t i = begin; i < end; ++i) {
      y[i] = static_cast<scalar_t>(Op::apply(static_cast<c_t>(grad[i]), static_cast<c_t>(x[i])));
    }
  }
}

// One copy of both loops per instruction set.
#define GELU_DEFINE_CPU_VARIANT(SUFFIX, TARGET)                                                       \
  template <class Op, typename scalar_t>                                                              \
  TARGET void forward_##SUFFIX(const scalar_t* x, scalar_t* y, int64_t n) {                           \
    forward_loop<Op>(x, y, n);                                                                        \
  }                                                                                                   \
  template <class Op, typename scalar_t>                                                              \
  TARGET void backward_##SUFFIX(const scalar_t* grad, const scalar_t* x, scalar_t* y, int64_t n) {    \
    backward_loop<Op>(grad, x, y, n);                                                                 \
  }

GELU_DEFINE_CPU_VARIANT(baseline, )
#if defined(__x86_64__)
GELU_DEFINE_CPU_VARIANT(avx2, __attribute__((target("avx2,fma,f16c"))))
GELU_DEFINE_CPU_VARIANT(avx512, __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma,f16c"))))
#endif
#undef GELU_DEFINE_CPU_VARIANT

enum class CpuCapability { kBaseline, kAvx2, kAvx512 };

CpuCapability best_supported() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
    return CpuCapability::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuCapability::kAvx2;
#endif
  return CpuCapability::kBaseline;
}

CpuCapability parse_capability(const std::string& name) {
  const CpuCapability best = best_supported();
  CpuCapability wanted;
  if (name == "baseline" || name == "default") {
    wanted = CpuCapability::kBaseline;
  } else if (name == "avx2") {
    wanted = CpuCapability::kAvx2;
  } else if (name == "avx512") {
    wanted = CpuCapability::kAvx512;
  } else {
    check(false, "gelu_ext: unknown CPU capability \"", name, "\"; use avx512, avx2 or baseline");
  }
  check(static_cast<int>(wanted) <= static_cast<int>(best), "gelu_ext: this CPU does not support ", name);
  return wanted;
}

// Chosen once: the best the CPU supports, or GELU_EXT_CPU_CAPABILITY (like ATEN_CPU_CAPABILITY).
CpuCapability& capability() {
  static CpuCapability value = [] {
    const char* env = std::getenv("GELU_EXT_CPU_CAPABILITY");
    return env != nullptr && *env != '\0' ? parse_capability(env) : best_supported();
  }();
  return value;
}

template <class Op, typename scalar_t>
void forward_span(const scalar_t* x, scalar_t* y, int64_t n) {
  switch (capability()) {
#if defined(__x86_64__)
    case CpuCapability::kAvx512:
      return forward_avx512<Op>(x, y, n);
    case CpuCapability::kAvx2:
      return forward_avx2<Op>(x, y, n);
#endif
    default:
      return forward_baseline<Op>(x, y, n);
  }
}

template <class Op, typename scalar_t>
void backward_span(const scalar_t* grad, const scalar_t* x, scalar_t* y, int64_t n) {
  switch (capability()) {
#if defined(__x86_64__)
    case CpuCapability::kAvx512:
      return backward_avx512<Op>(grad, x, y, n);
    case CpuCapability::kAvx2:
      return backward_avx2<Op>(grad, x, y, n);
#endif
    default:
      return backward_baseline<Op>(grad, x, y, n);
  }
}

// ~40 float operations per element, ~0.4 ns per element and thread with AVX-512 (0.7 with AVX2): 16K elements are
// 6-11 us of work, enough to amortize handing a chunk to a thread (~1-2 us).
constexpr int64_t kGrainSize = 16384;

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

Tensor gelu_cpu(const Tensor& x, std::string_view approximate) {
  const Operands ops = prepare_forward(x, approximate);
  const int64_t n = ops.out.numel();
  dispatch_floating(x.scalar_type(), [&](auto* type_tag) {
    using scalar_t = std::remove_pointer_t<decltype(type_tag)>;
    const auto* src = static_cast<const scalar_t*>(ops.x.const_data_ptr());
    auto* dst = static_cast<scalar_t*>(ops.out.mutable_data_ptr());
    torch::stable::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
      if (ops.mode == Approximate::kTanh) {
        forward_span<GeluForward<Approximate::kTanh>>(src + begin, dst + begin, end - begin);
      } else {
        forward_span<GeluForward<Approximate::kNone>>(src + begin, dst + begin, end - begin);
      }
    });
  });
  return ops.out;
}

Tensor gelu_backward_cpu(const Tensor& grad, const Tensor& x, std::string_view approximate) {
  const Operands ops = prepare_backward(grad, x, approximate);
  const int64_t n = ops.out.numel();
  dispatch_floating(x.scalar_type(), [&](auto* type_tag) {
    using scalar_t = std::remove_pointer_t<decltype(type_tag)>;
    const auto* g = static_cast<const scalar_t*>(ops.grad.const_data_ptr());
    const auto* src = static_cast<const scalar_t*>(ops.x.const_data_ptr());
    auto* dst = static_cast<scalar_t*>(ops.out.mutable_data_ptr());
    torch::stable::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
      if (ops.mode == Approximate::kTanh) {
        backward_span<GeluBackward<Approximate::kTanh>>(g + begin, src + begin, dst + begin, end - begin);
      } else {
        backward_span<GeluBackward<Approximate::kNone>>(g + begin, src + begin, dst + begin, end - begin);
      }
    });
  });
  return ops.out;
}

}  // namespace

std::string cpu_capability() {
  switch (capability()) {
    case CpuCapability::kAvx512:
      return "avx512";
    case CpuCapability::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

void set_cpu_capability(const std::string& name) { capability() = parse_capability(name); }

}  // namespace gelu_ext

STABLE_TORCH_LIBRARY_IMPL(gelu_ext, CPU, m) {
  m.impl("gelu", TORCH_BOX(&gelu_ext::gelu_cpu));
  m.impl("gelu_backward", TORCH_BOX(&gelu_ext::gelu_backward_cpu));
}
