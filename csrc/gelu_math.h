// GELU and its derivative, both modes, as scalar functions shared by the CPU and CUDA kernels.
//
// This is the only place the math lives. Both backends include it, so they cannot drift. Built with
// -ffp-contract=off on the host and --fmad=false on the device, every operation rounds the same way, so the
// float results are bit-identical across CPU instruction sets (tests/test_gelu.py) and are meant to be between
// CPU and CUDA (tests/test_gelu_cuda.py checks it on a GPU).
//
// Why not 0.5 * x * (1 + erf(x / sqrt(2))) as in ATen?
//   * For x < 0, 1 + erf(.) cancels: F.gelu has no correct bits below x = -5 and is ~2,000 ulp off in [-3, 3].
//   * Even erfc(-x / sqrt(2)) in float is not enough: the rounding of x / sqrt(2) (relative 2^-24) is
//     amplified by 2 t^2 in erfc(t), i.e. ~100 ulp in the tail.
// What we do instead, for float inputs (and the half types, computed as float and rounded once):
//   Phi(x) = 0.5 * exp(-x^2 / 2) * erfcx(|x| / sqrt(2))       for x < 0   (erfcx(t) = exp(t^2) erfc(t))
//   Phi(x) = 1 - 0.5 * exp(-x^2 / 2) * erfcx(x / sqrt(2))     for x >= 0
//   with erfcx a polynomial in q = (t - 2) / (t + 2) and exp a Cody-Waite + Taylor evaluation, both fitted to
//   float accuracy and evaluated in double, so every rounding but the last is ~2^-29 below float's.
// The tanh mode uses 0.5 * (1 + tanh(z)) = sigmoid(2z): gelu = x * sigmoid(s), s = 2 sqrt(2/pi)(x + 0.044715 x^3),
// with sigmoid built from exp(-|s|), which never overflows, so the negative tail keeps its relative accuracy.
// Measured over every finite float (bench: benchmarks/exhaustive_ulp.cpp): forward and derivative, both modes,
// <= 0.68 ulp from a float64 reference; subnormal results included.
//
// double inputs use the C library's (host) or CUDA's (device) erfc and exp with the same formulas.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GELU_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GELU_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace gelu_ext {

// The `approximate` argument of the ops, parsed once on the host.
enum class Approximate : int { kNone = 0, kTanh = 1 };

namespace math {

// ---------------------------------------------------------------------------------------------------------
// float inputs: float-accurate approximations evaluated in double, rounded to float once.
// Only arithmetic, fma and bit operations: no calls and no branches, so the host compiler vectorizes the
// loops that use these, and the device compiler inlines them.
// ---------------------------------------------------------------------------------------------------------
GELU_HOST_DEVICE double bits_to_double(int64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(bits);
#else
  return __builtin_bit_cast(double, bits);
#endif
}

GELU_HOST_DEVICE int64_t double_to_bits(double value) {
#if defined(__CUDA_ARCH__)
  return __double_as_longlong(value);
#else
  return __builtin_bit_cast(int64_t, value);
#endif
}

// NaN-preserving clamp of x to [-limit, limit] (comparisons with NaN are false, so NaN passes through).
GELU_HOST_DEVICE double clamp_abs(double x, double limit) {
  return x > limit ? limit : (x < -limit ? -limit : x);
}

// exp(a) for a <= 0 with relative error < 2^-30, far below float's 2^-24. a is clamped at -150:
// everything this header multiplies by exp() is below float's smallest subnormal there. Cody-Waite
// reduction a = k ln2 + r, |r| <= ln2/2, then a degree-8 Taylor polynomial (truncation r^9/9! < 2^-32).
GELU_HOST_DEVICE double exp_nonpositive(double a) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2 = 0.6931471805599453;
  constexpr double kRoundMagic = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const double a_clamped = a < -150.0 ? -150.0 : a;   // NaN passes (and poisons r, so the result)
  const double shifted = fma(a_clamped, kLog2e, kRoundMagic);
  const double k = shifted - kRoundMagic;
  // The integer k also sits in the low bits of `shifted`: no float-to-int conversion (AVX2 has none).
  const int64_t k_int = double_to_bits(shifted) - double_to_bits(kRoundMagic);
  const double r = fma(k, -kLn2, a_clamped);
  double p = 2.48015873015873016e-05;
  p = fma(p, r, 1.98412698412698413e-04);
  p = fma(p, r, 1.38888888888888889e-03);
  p = fma(p, r, 8.33333333333333333e-03);
  p = fma(p, r, 4.16666666666666667e-02);
  p = fma(p, r, 1.66666666666666667e-01);
  p = fma(p, r, 0.5);
  p = fma(p, r, 1.0);
  p = fma(p, r, 1.0);
  return p * bits_to_double((k_int + 1023) << 52);  // * 2^k, exact
}

// erfcx(t) = exp(t^2) erfc(t) for t >= 0 (finite). (1 + 2t) erfcx(t) is a smooth function of
// q = (t - 2) / (t + 2) on [-1, 1]; its degree-12 least-squares fit (Chebyshev nodes, relative weight)
// has 0.2 float ulp of error. erfcx varies slowly and is insensitive to the rounding of t, unlike erfc.
// One division serves both quotients: 1 / ((t + 2)(1 + 2t)).
GELU_HOST_DEVICE double erfcx_nonneg(double t) {
  const double d1 = t + 2.0;
  const double d2 = fma(2.0, t, 1.0);
  const double inv = 1.0 / (d1 * d2);
  const double q = (t - 2.0) * (inv * d2);
  double p = -2.0055469576618634e-05;
  p = fma(p, q, 6.29450150881894e-05);
  p = fma(p, q, 2.210450329585001e-04);
  p = fma(p, q, -3.567557723727077e-04);
  p = fma(p, q, -1.4635828556492925e-03);
  p = fma(p, q, 1.2162493076175451e-03);
  p = fma(p, q, 8.724423125386238e-03);
  p = fma(p, q, -8.01845733076334e-03);
  p = fma(p, q, -5.422024428844452e-02);
  p = fma(p, q, 1.6404935717582703e-01);
  p = fma(p, q, -1.660303771495819e-01);
  p = fma(p, q, -9.27637591958046e-02);
  p = fma(p, q, 1.2769783735275269);
  return p * (inv * d1);
}

constexpr double kSqrtHalf = 0.70710678118654752;    // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143268;  // 1 / sqrt(2 pi)
constexpr double kTanhC1 = 1.5957691216057308;       // 2 sqrt(2 / pi)
constexpr double kTanhC2 = 0.071354816272600250;     // 2 sqrt(2 / pi) * 0.044715
constexpr double kClamp = 1.0e4;                     // |x| beyond this behaves like +-inf

// exp(-x^2/2), and the normal tail 0.5 exp(-x^2/2) erfcx(|x|/sqrt(2)): Phi(x) for x < 0, 1 - Phi(x) for x >= 0.
// No cancellation anywhere.
struct NormalParts {
  double gauss;
  double tail;
};

GELU_HOST_DEVICE NormalParts normal_parts(double xc) {
  const double ax = xc < 0.0 ? -xc : xc;
  const double gauss = exp_nonpositive(-0.5 * xc * xc);
  return {gauss, 0.5 * gauss * erfcx_nonneg(ax * kSqrtHalf)};
}

// gelu(x) = x Phi(x)
GELU_HOST_DEVICE float gelu_erf(float x) {
  const double xd = x;
  const double xc = clamp_abs(xd, kClamp);
  const double tail = normal_parts(xc).tail;
  return static_cast<float>(xd < 0.0 ? xc * tail : xd * (1.0 - tail));
}

// d/dx gelu(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi). Cancels only next to its zero at
// x ~ -0.75, where the absolute error is ~1e-17.
GELU_HOST_DEVICE float gelu_erf_derivative(float x) {
  const double xc = clamp_abs(static_cast<double>(x), kClamp);
  const NormalParts n = normal_parts(xc);
  const double x_phi = xc * kInvSqrt2Pi * n.gauss;
  return static_cast<float>((xc < 0.0 ? n.tail : 1.0 - n.tail) + x_phi);
}

// s = 2z and e = exp(-|s|) for the tanh mode: 0.5 (1 + tanh(z)) = sigmoid(s); e never overflows.
struct TanhModeParts {
  double s;
  double e;
};

GELU_HOST_DEVICE TanhModeParts tanh_mode_parts(double xc) {
  const double s = xc * fma(kTanhC2, xc * xc, kTanhC1);
  return {s, exp_nonpositive(s < 0.0 ? s : -s)};
}

// gelu_tanh(x) = 0.5 x (1 + tanh(z)) = x sigmoid(s)
GELU_HOST_DEVICE float gelu_tanh(float x) {
  const double xd = x;
  const double xc = clamp_abs(xd, kClamp);
  const TanhModeParts m = tanh_mode_parts(xc);
  const double inv = 1.0 / (1.0 + m.e);
  return static_cast<float>(m.s < 0.0 ? xc * m.e * inv : xd * inv);
}

// d/dx [x sigmoid(s)] = sigmoid(s) (1 + x s' (1 - sigmoid(s)))
GELU_HOST_DEVICE float gelu_tanh_derivative(float x) {
  const double xc = clamp_abs(static_cast<double>(x), kClamp);
  const TanhModeParts m = tanh_mode_parts(xc);
  const double x_ds = xc * fma(3.0 * kTanhC2, xc * xc, kTanhC1);
  const double inv = 1.0 / (1.0 + m.e);
  const double sigmoid = m.s < 0.0 ? m.e * inv : inv;
  const double one_minus_sigmoid = m.s < 0.0 ? inv : m.e * inv;
  return static_cast<float>(sigmoid * fma(x_ds, one_minus_sigmoid, 1.0));
}

// ---------------------------------------------------------------------------------------------------------
// double: the C library's (host) or CUDA's (device) erfc and exp; same formulas, no cancellation.
// ---------------------------------------------------------------------------------------------------------
// erfc(-t) = 2 - erfc(t) has no cancellation for t > 0, and for t < 0 erfc is accurate by itself.
GELU_HOST_DEVICE double gelu_erf(double x) {
  const double xc = clamp_abs(x, kClamp);
  const double phi = 0.5 * ::erfc(-xc * kSqrtHalf);
  return x < 0.0 ? xc * phi : x * phi;
}

GELU_HOST_DEVICE double gelu_erf_derivative(double x) {
  const double xc = clamp_abs(x, kClamp);
  return 0.5 * ::erfc(-xc * kSqrtHalf) + xc * kInvSqrt2Pi * ::exp(-0.5 * xc * xc);
}

GELU_HOST_DEVICE double gelu_tanh(double x) {
  const double xc = clamp_abs(x, kClamp);
  const double s = xc * fma(kTanhC2, xc * xc, kTanhC1);
  const double e = ::exp(s < 0.0 ? s : -s);
  const double inv = 1.0 / (1.0 + e);
  return x < 0.0 ? xc * (s < 0.0 ? e * inv : inv) : x * (s < 0.0 ? e * inv : inv);
}

GELU_HOST_DEVICE double gelu_tanh_derivative(double x) {
  const double xc = clamp_abs(x, kClamp);
  const double s = xc * fma(kTanhC2, xc * xc, kTanhC1);
  const double x_ds = xc * fma(3.0 * kTanhC2, xc * xc, kTanhC1);
  const double e = ::exp(s < 0.0 ? s : -s);
  const double inv = 1.0 / (1.0 + e);
  const double sigmoid = s < 0.0 ? e * inv : inv;
  return sigmoid * fma(x_ds, s < 0.0 ? inv : e * inv, 1.0);
}

}  // namespace math

// The four elementwise functors the kernels map over a tensor. `compute_t` is the type the math runs in:
// float for float / half / bfloat16, double for double.
template <Approximate kMode>
struct GeluForward {
  template <typename compute_t>
  GELU_HOST_DEVICE static compute_t apply(compute_t x) {
    return kMode == Approximate::kTanh ? math::gelu_tanh(x) : math::gelu_erf(x);
  }
};

template <Approximate kMode>
struct GeluBackward {
  template <typename compute_t>
  GELU_HOST_DEVICE static compute_t apply(compute_t grad, compute_t x) {
    return grad * (kMode == Approximate::kTanh ? math::gelu_tanh_derivative(x) : math::gelu_erf_derivative(x));
  }
};

}  // namespace gelu_ext
