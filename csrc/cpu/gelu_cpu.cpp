// CPU kernels for gelu_ext::gelu and gelu_ext::gelu_backward.
//
// Each kernel is a plain loop over a flat span that calls the shared scalar math (csrc/gelu_math.h). The
// math is branch-free and call-free, so GCC/Clang vectorize the loop; it is compiled three times with
// different target attributes (AVX-512, AVX2+FMA, baseline x86-64) and the best one the CPU supports is
// picked at run time, like ATen's CPU_CAPABILITY. The build uses -ffp-contract=off, so every variant
// gives bit-identical results (tests/test_gelu.py checks this).
//
// Memory traffic per element: forward reads 1 and writes 1 (8 bytes for float32), backward reads 2 and
// writes 1 (12 bytes). The work is split across threads with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../gelu_op_common.h"

namespace gelu_ext {
namespace {

// float for float / half / bfloat16 (the half types are computed as float and rounded once), double for double.
template <typename scalar_t>
using compute_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <class Op, typename scalar_t>
inline __attribute__((always_inline)) void forward_loop(const scalar_t* __restrict x, scalar_t* __restrict y,
                                                        int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    y[i] = static_cast<scalar_t>(Op::apply(static_cast<compute_t<scalar_t>>(x[i])));
  }
}

template <class Op, typename scalar_t>
inline __attribute__((always_inline)) void backward_loop(const scalar_t* __restrict grad,
                                                         const scalar_t* __restrict x, scalar_t* __restrict y,
                                                         int64_t n) {
  using c_t = compute_t<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    y[i] = static_cast<scalar_t>(Op::apply(static_cast<c_t>(grad[i]), static_cast<c_t>(x[i])));
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
    TORCH_CHECK_VALUE(false, "gelu_ext: unknown CPU capability \"", name, "\"; use avx512, avx2 or baseline");
  }
  TORCH_CHECK_VALUE(static_cast<int>(wanted) <= static_cast<int>(best), "gelu_ext: this CPU does not support ",
                    name);
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

// A large output is fresh memory from mmap: the first write to each 4 KiB page faults, and for 2^24 float32
// elements those faults cost more than the kernel itself (~14 ms of F.gelu's ~18 ms on 2 cores). Asking the OS for
// transparent huge pages and touching each 2 MiB page once from one thread turns 16,384 faults into 32
// (measured: allocation + first touch of 64 MiB from ~16 ms to ~6 ms). Touching from several threads at once made
// some runs stall for 60+ ms, hence one thread. It is a hint: where the OS declines, nothing changes.
// GELU_EXT_HUGE_PAGES=0 turns it off.
constexpr int64_t kHugePage = int64_t{2} << 20;
constexpr int64_t kHugePageMinBytes = int64_t{8} << 20;

bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("GELU_EXT_HUGE_PAGES");
    return env == nullptr || std::string(env) != "0";
  }();
  return enabled;
}

void prefault_with_huge_pages(const at::Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = out.numel() * static_cast<int64_t>(out.element_size());
  if (bytes < kHugePageMinBytes || !huge_pages_enabled()) return;
  const auto begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~static_cast<uintptr_t>(kHugePage - 1);
  const uintptr_t last = (begin + bytes) & ~static_cast<uintptr_t>(kHugePage - 1);
  if (last <= first || madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE) != 0) return;
  for (uintptr_t page = first; page < last; page += kHugePage) {
    *reinterpret_cast<volatile char*>(page) = 0;  // the kernel overwrites it
  }
#else
  (void)out;
#endif
}

// ~100 floating-point operations per element: 16K elements is ~20 us of work, enough to amortize a task.
constexpr int64_t kGrainSize = 16384;

at::Tensor gelu_cpu(const at::Tensor& x, c10::string_view approximate) {
  const Operands ops = prepare_forward(x, approximate);
  prefault_with_huge_pages(ops.out);
  const int64_t n = ops.out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gelu_ext_gelu_cpu", [&] {
    const scalar_t* src = ops.x.const_data_ptr<scalar_t>();
    scalar_t* dst = ops.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
      if (ops.mode == Approximate::kTanh) {
        forward_span<GeluForward<Approximate::kTanh>>(src + begin, dst + begin, end - begin);
      } else {
        forward_span<GeluForward<Approximate::kNone>>(src + begin, dst + begin, end - begin);
      }
    });
  });
  return ops.out;
}

at::Tensor gelu_backward_cpu(const at::Tensor& grad, const at::Tensor& x, c10::string_view approximate) {
  const Operands ops = prepare_backward(grad, x, approximate);
  prefault_with_huge_pages(ops.out);
  const int64_t n = ops.out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gelu_ext_gelu_backward_cpu", [&] {
    const scalar_t* g = ops.grad.const_data_ptr<scalar_t>();
    const scalar_t* src = ops.x.const_data_ptr<scalar_t>();
    scalar_t* dst = ops.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
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

TORCH_LIBRARY_IMPL(gelu_ext, CPU, m) {
  m.impl("gelu", &gelu_ext::gelu_cpu);
  m.impl("gelu_backward", &gelu_ext::gelu_backward_cpu);
}
