// Max error of the float32 GELU math (csrc/gelu_math.h) over every finite float32, against a double reference
// that shares nothing with the header: the C library's erfc/exp and the tanh constants written out here.
//
//   g++ -O2 -fopenmp -ffp-contract=off -march=native benchmarks/exhaustive_ulp.cpp -o /tmp/ulp && /tmp/ulp [stride]
//
// Errors are in ulp of float32 at the true value. The derivative is a sum of two terms (Phi(x) + x phi(x), or
// sigmoid(s) + x s' sigmoid(s)(1 - sigmoid(s))) that cancel next to its zero at x ~ -0.75, where no format keeps
// relative accuracy: its error is measured in ulp of the larger term instead, which equals the result's ulp
// everywhere else (and in the whole negative tail). Exits 1 if a bound is exceeded: forward 4 ulp, derivative 8.
// All 4.3 billion inputs (stride 1) take a few minutes on 2 cores.
//
//   /tmp/ulp --pairs bfloat16     (or float16)
//
// The 16-bit results as the kernels form them (the float math, then rounded once to the 16-bit type), both modes,
// against the exact value (the double reference, times grad or up): gelu on every finite 16-bit x; gelu_backward =
// grad * gelu'(x) on every finite (grad, x) pair and geglu = gelu(gate) * up on every finite (gate, up) pair, 2^32
// each; bias_gelu's GELU on every finite float32 sum. Counts the results that are not correctly rounded and not
// faithful (not one of the two 16-bit neighbours of the exact value), the worst error in units of the result's larger
// gap to its neighbours, and the range of x where results are not faithful. Exits 1 if any result is not faithful.
// Measured on 2 cores shared with other jobs (~1 core effective): 13 min (bfloat16), 21 min (float16).
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../csrc/gelu_math.h"

namespace m = gelu_ext::math;

// float32's ulp at |r| (the subnormal spacing below the normal range), from r's own binade: no rounding of r to
// float first, which would take the next binade's ulp just below a power of two.
static double ulp_of(double r) {
  const double a = std::fabs(r);
  if (a < 0x1p-126) return 0x1p-149;
  int e;
  std::frexp(a, &e);  // a in [2^(e-1), 2^e)
  return std::ldexp(1.0, e - 24);
}

static const double kC1 = 2.0 * std::sqrt(2.0 / M_PI);  // s = 2z = kC1 (x + 0.044715 x^3)
static const double kKappa = 0.044715;

struct Value {
  double value;
  double scale;  // the magnitude the error is measured against
};

static Value ref_erf(double x) {
  if (std::isinf(x)) return {x > 0 ? x : -0.0, x > 0 ? x : 0.0};
  const double v = 0.5 * x * std::erfc(-x * M_SQRT1_2);
  return {v, v};
}
static Value ref_erf_d(double x) {
  if (std::isinf(x)) return {x > 0 ? 1.0 : 0.0, x > 0 ? 1.0 : 0.0};
  const double cdf = 0.5 * std::erfc(-x * M_SQRT1_2);
  const double x_pdf = x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
  return {cdf + x_pdf, std::fmax(std::fabs(cdf), std::fabs(x_pdf))};
}
static double sigmoid(double s) { return s < 0 ? std::exp(s) / (1 + std::exp(s)) : 1 / (1 + std::exp(-s)); }
static Value ref_tanh(double x) {
  if (std::isinf(x)) return {x > 0 ? x : -0.0, x > 0 ? x : 0.0};
  const double v = x * sigmoid(kC1 * (x + kKappa * x * x * x));
  return {v, v};
}
static Value ref_tanh_d(double x) {
  if (std::isinf(x)) return {x > 0 ? 1.0 : 0.0, x > 0 ? 1.0 : 0.0};
  const double s = kC1 * (x + kKappa * x * x * x);
  const double sg = sigmoid(s);
  const double second = x * kC1 * (1 + 3 * kKappa * x * x) * sg * sigmoid(-s);
  return {sg + second, std::fmax(std::fabs(sg), std::fabs(second))};
}

// ---- 16-bit results ------------------------------------------------------------------------------------------

// A 16-bit format: its bits <-> a float, rounding to nearest even as the kernels do (c10::Half / c10::BFloat16 and
// __float2half_rn / __float2bfloat16_rn).
struct Format16 {
  const char* name;
  bool bfloat;
  float to_float(uint16_t bits) const {
    if (bfloat) {
      const uint32_t wide = static_cast<uint32_t>(bits) << 16;
      float f;
      std::memcpy(&f, &wide, 4);
      return f;
    }
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return static_cast<float>(h);
  }
  uint16_t from_float(float f) const {
    if (bfloat) {
      uint32_t u;
      std::memcpy(&u, &f, 4);
      if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);
      return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
    }
    const _Float16 h = static_cast<_Float16>(f);  // libgcc's conversion: round to nearest even
    uint16_t bits;
    std::memcpy(&bits, &h, 2);
    return bits;
  }
  uint16_t infinity() const { return bfloat ? 0x7f80 : 0x7c00; }
};

// The 16-bit values in order: position p in [-inf, +inf] as p + infinity (both zeros at 0). Neighbours are p -+ 1.
static int ordinal(uint16_t bits) {
  const int magnitude = bits & 0x7fff;
  return (bits & 0x8000) ? -magnitude : magnitude;
}
static uint16_t from_ordinal(int p) { return p < 0 ? static_cast<uint16_t>(0x8000 | -p) : static_cast<uint16_t>(p); }

struct RoundingCount {
  long inputs = 0, not_nearest = 0, not_faithful = 0;
  double worst = 0;
  float worst_a = 0, worst_b = 0;
  float unfaithful_low = INFINITY, unfaithful_high = -INFINITY;  // the range of x where results are not faithful
  void merge(const RoundingCount& o) {
    inputs += o.inputs, not_nearest += o.not_nearest, not_faithful += o.not_faithful;
    if (o.worst > worst) worst = o.worst, worst_a = o.worst_a, worst_b = o.worst_b;
    unfaithful_low = std::fmin(unfaithful_low, o.unfaithful_low);
    unfaithful_high = std::fmax(unfaithful_high, o.unfaithful_high);
  }
  void unfaithful_at(float a) {
    ++not_faithful;
    unfaithful_low = std::fmin(unfaithful_low, a), unfaithful_high = std::fmax(unfaithful_high, a);
  }
};

// Is `result` (16-bit bits) the nearest 16-bit value to `exact`, one of its two brackets, and how far is it?
static void judge(const Format16& f, uint16_t result, double exact, float a, float b, RoundingCount& count) {
  ++count.inputs;
  const int p = ordinal(result);
  const int top = f.infinity();
  const double value = f.to_float(result);
  if (value == exact) return;
  const double up = p + 1 <= top ? f.to_float(from_ordinal(p + 1)) : INFINITY;
  const double down = p - 1 >= -top ? f.to_float(from_ordinal(p - 1)) : -INFINITY;
  const double error = std::fabs(value - exact);
  double spacing = std::fmax(up - value, value - down);
  if (std::isinf(value)) {  // overflow: the largest finite value's gap decides
    const double largest = f.to_float(from_ordinal(value > 0 ? top - 1 : -top + 1));
    spacing = std::fabs(largest - f.to_float(from_ordinal(value > 0 ? top - 2 : -top + 2)));
    const bool nearest = std::fabs(exact) >= std::fabs(largest) + spacing / 2;
    const bool faithful = std::fabs(exact) > std::fabs(largest);
    count.not_nearest += !nearest;
    if (!faithful) count.unfaithful_at(a);
    return;
  }
  const bool nearest = error <= std::fabs(up - exact) && error <= std::fabs(down - exact);
  const bool faithful = exact > down && exact < up;
  count.not_nearest += !nearest;
  if (!faithful) count.unfaithful_at(a);
  if (error / spacing > count.worst) count.worst = error / spacing, count.worst_a = a, count.worst_b = b;
}

// The kernels' functors for a result rounded to kFormat (csrc/gelu_math.h): the erf mode's 16-bit math, the tanh mode's
// float math.
template <gelu_ext::OutputFormat kFormat>
static int pairs_16bit(const Format16& f) {
  using gelu_ext::Approximate;
  using Erf = std::integral_constant<Approximate, Approximate::kNone>;
  using Tanh = std::integral_constant<Approximate, Approximate::kTanh>;
  const auto gelu = [](auto mode, float x) { return gelu_ext::GeluForward<mode()>::template apply<kFormat>(x); };
  const auto backward = [](auto mode, float grad, float x) {
    return gelu_ext::GeluBackward<mode()>::template apply<kFormat>(grad, x);
  };
  const auto geglu = [](auto mode, float gate, float up) {
    return gelu_ext::GegluForward<mode()>::template apply<kFormat>(gate, up);
  };
  std::vector<uint16_t> finite;
  for (uint32_t b = 0; b < 0x10000; ++b) {
    if (std::isfinite(f.to_float(static_cast<uint16_t>(b)))) finite.push_back(static_cast<uint16_t>(b));
  }
  constexpr int kCounts = 8;
  const char* names[kCounts] = {"gelu (erf)", "gelu (tanh)", "gelu_backward (erf)", "gelu_backward (tanh)",
                                "geglu (erf)", "geglu (tanh)", "bias_gelu (erf)", "bias_gelu (tanh)"};
  RoundingCount total[kCounts];
  const long n = static_cast<long>(finite.size());
#pragma omp parallel
  {
    RoundingCount local[kCounts];
#pragma omp for schedule(dynamic, 64)
    for (long i = 0; i < n; ++i) {
      const float x = f.to_float(finite[i]);
      judge(f, f.from_float(gelu(Erf{}, x)), ref_erf(x).value, x, 0, local[0]);
      judge(f, f.from_float(gelu(Tanh{}, x)), ref_tanh(x).value, x, 0, local[1]);
      const double exact[2] = {ref_erf_d(x).value, ref_tanh_d(x).value};
      for (long j = 0; j < n; ++j) {
        const float grad = f.to_float(finite[j]);  // GeluBackward: grad * gelu'(x), rounded once to the 16-bit type
        judge(f, f.from_float(backward(Erf{}, grad, x)), grad * exact[0], x, grad, local[2]);
        judge(f, f.from_float(backward(Tanh{}, grad, x)), grad * exact[1], x, grad, local[3]);
        const float up = grad;  // geglu: gelu(gate) * up, gate = x, over the same pairs
        judge(f, f.from_float(geglu(Erf{}, x, up)), ref_erf(x).value * up, x, up, local[4]);
        judge(f, f.from_float(geglu(Tanh{}, x, up)), ref_tanh(x).value * up, x, up, local[5]);
      }
    }
    // bias_gelu: GELU of the float32 sum x + bias (never rounded to the 16-bit type), so every finite float32 sum
#pragma omp for schedule(static)
    for (long i = 0; i < (1L << 32); ++i) {
      const uint32_t bits = static_cast<uint32_t>(i);
      float sum;
      std::memcpy(&sum, &bits, 4);
      if (!std::isfinite(sum)) continue;
      judge(f, f.from_float(gelu(Erf{}, sum)), ref_erf(sum).value, sum, 0, local[6]);
      judge(f, f.from_float(gelu(Tanh{}, sum)), ref_tanh(sum).value, sum, 0, local[7]);
    }
#pragma omp critical
    for (int k = 0; k < kCounts; ++k) total[k].merge(local[k]);
  }
  bool faithful = true;
  std::printf("%s: every finite x; every finite (grad, x) and (gate, up) pair; every finite float32 sum\n", f.name);
  for (int k = 0; k < kCounts; ++k) {
    std::printf("%-21s %11ld results: %9ld not correctly rounded, %ld not faithful, worst %.3f ulp at x = %.6g"
                " grad = %.6g\n", names[k], total[k].inputs, total[k].not_nearest, total[k].not_faithful,
                total[k].worst, total[k].worst_a, total[k].worst_b);
    if (total[k].not_faithful) {
      std::printf("%21s not faithful only for x in [%.6g, %.6g]\n", "", total[k].unfaithful_low,
                  total[k].unfaithful_high);
    }
    faithful = faithful && total[k].not_faithful == 0;
  }
  std::printf("%s\n", faithful ? "faithful everywhere" : "NOT FAITHFUL");
  return faithful ? 0 : 1;
}

int main(int argc, char** argv) {
  if (argc > 2 && std::strcmp(argv[1], "--pairs") == 0) {
    if (std::strcmp(argv[2], "bfloat16") == 0) return pairs_16bit<gelu_ext::OutputFormat::kBFloat16>({"bfloat16", true});
    if (std::strcmp(argv[2], "float16") == 0) return pairs_16bit<gelu_ext::OutputFormat::kFloat16>({"float16", false});
    std::fprintf(stderr, "--pairs takes bfloat16 or float16, not %s\n", argv[2]);
    return 2;
  }
  const long stride = argc > 1 ? std::atol(argv[1]) : 1;
  const char* names[4] = {"gelu (erf)", "gelu (tanh)", "gelu' (erf)", "gelu' (tanh)"};
  double worst[4] = {0, 0, 0, 0};
  float where[4] = {0, 0, 0, 0};
#pragma omp parallel
  {
    double w[4] = {0, 0, 0, 0};
    float at[4] = {0, 0, 0, 0};
#pragma omp for schedule(static)
    for (long i = 0; i < (1L << 32); i += stride) {
      const uint32_t bits = static_cast<uint32_t>(i);
      float x;
      std::memcpy(&x, &bits, 4);
      if (std::isnan(x)) {
        const float got[4] = {m::gelu_erf(x), m::gelu_tanh(x), m::gelu_erf_derivative(x), m::gelu_tanh_derivative(x)};
        for (int k = 0; k < 4; ++k) {
          if (!std::isnan(got[k])) w[k] = INFINITY, at[k] = x;  // NaN must propagate
        }
        continue;
      }
      const float got[4] = {m::gelu_erf(x), m::gelu_tanh(x), m::gelu_erf_derivative(x), m::gelu_tanh_derivative(x)};
      const Value want[4] = {ref_erf(x), ref_tanh(x), ref_erf_d(x), ref_tanh_d(x)};
      for (int k = 0; k < 4; ++k) {
        double err;
        if (std::isnan(got[k]) || std::isinf(got[k]) || std::isinf(want[k].value)) {
          err = (got[k] == want[k].value) ? 0.0 : INFINITY;
        } else {
          err = std::fabs(static_cast<double>(got[k]) - want[k].value) / ulp_of(want[k].scale);
        }
        if (err > w[k]) {
          w[k] = err;
          at[k] = x;
        }
      }
    }
#pragma omp critical
    for (int k = 0; k < 4; ++k) {
      if (w[k] > worst[k]) {
        worst[k] = w[k];
        where[k] = at[k];
      }
    }
  }
  for (int k = 0; k < 4; ++k) std::printf("%-13s max %.3f ulp at x = %.9g\n", names[k], worst[k], where[k]);
  const bool ok = worst[0] <= 4 && worst[1] <= 4 && worst[2] <= 8 && worst[3] <= 8;
  std::printf("%s\n", ok ? "within the bounds (forward <= 4 ulp, derivative <= 8 ulp of its larger term)"
                         : "BOUND EXCEEDED");
  return ok ? 0 : 1;
}
