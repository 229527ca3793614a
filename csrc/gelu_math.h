// GELU and its derivative, both modes, as scalar functions shared by the CPU and CUDA kernels.
//
// This is the only place the math lives: both backends include it, so they cannot drift. Built with
// -ffp-contract=off on the host and --fmad=false on the device, every operation rounds as written (the fused
// multiply-adds are explicit), so float results are bit-identical across CPU instruction sets and between CPU and
// CUDA (tests/test_gelu.py, tests/test_gelu_cuda.py).
//
// float, float16 and bfloat16 inputs run in float arithmetic only (no double anywhere: FP64 runs at 1/64 of the
// FP32 rate on consumer and inference GPUs). A float16 or bfloat16 result is computed in float by math made for a
// 16-bit result (gelu_erf16, gelu_tanh16 below: no division, fits of 16-bit accuracy) and rounded once; the kernels
// pass the storage type's OutputFormat to the functors, which pick the math.
//
// Why not 0.5 x (1 + erf(x / sqrt 2)) as in ATen? For x < 0, 1 + erf cancels: F.gelu has no correct bit below
// x = -5 and is hundreds to thousands of ulp off in [-3, 3]. Instead, with a = |x| and g(a) = gelu(-a):
//   erf mode:  g(a) = -a Phi(-a) = -a exp(-a^2/2) R(a),   1/R(a) = sqrt(2 pi) a + Pg(a)/Qg(a)
//   tanh mode: g(a) = -a e / (1 + e),   e = exp(-|s|),   s = 2 sqrt(2/pi) (a + 0.044715 a^3)
//   gelu(x) = g(a) for x < 0 and x + g(a) for x >= 0 (gelu(x) - gelu(-x) = x: no cancellation anywhere), and
//   gelu'(x) = g'(a) for x < 0 and 1 - g'(a) for x >= 0, with g'(a) = gelu'(-a).
// What keeps that accurate in float:
//   * exp's argument is never rounded as a whole: -a^2/2 is an exact product that one FMA reduces, s is built in
//     double-float (2 sqrt(2/pi) and 0.044715 as float pairs too). exp(y) turns an absolute error of y into the
//     same relative error, and |y| reaches 113, so a plainly rounded argument would cost ~100 ulp in the tails.
//   * The fits are float-accurate: Pg/Qg to 2.5e-9 of 1/R on a in [0, 15], exp's polynomial to 4e-9
//     (scripts/fit_gelu_math.py derives both). A rounded quotient 1/(1 + e) is corrected by its exact residual.
//   * Tiny results: every intermediate is kept 2^64 times larger and scaled down by the last multiply, so a
//     subnormal result is rounded into the subnormals once, not built from a subnormal intermediate.
//   * |x| is clamped to 15 (erf) or 11 (tanh), where g(a) rounds to -0 and x + g(a) to x: no inf * 0, no overflow;
//     NaN passes through every clamp and comparison.
// Measured over every finite float (benchmarks/exhaustive_ulp.cpp, gelu_ext.testing.MEASURED_MAX_ULP): forward
// 3.83 ulp (erf) and 2.43 (tanh), derivative 4.18 and 4.60 ulp of its larger term. Contract: 4 and 8.
//
// Cost per 16 floats with AVX-512, as GCC vectorizes it (the loop's vector instructions, moves excluded, one of them
// a division): gelu_erf 32, its derivative with the grad multiply 36; gelu_tanh 43, its derivative 49. With AVX2,
// per 8 floats: 33, 38, 44, 51. F.gelu's erf forward on CPU is oneDNN's JIT kernel (its own 5-term erf and exp, no
// accuracy in the tail); ATen's vectorized erf is 13 operations + 1 division + Sleef's expf, and its tanh mode calls
// Sleef's tanhf.
// On CUDA (benchmarks/kernel_ops.py --roofline, sm_90 SASS per element of the vectorized loops): float32 48 (erf) and
// 62 (tanh) forward, 53 and 70 backward; bfloat16 27 and 29 forward, 36 and 42 backward (float16 within 1.5). No
// FP64 instruction in any float kernel, and none of the 16-bit ones uses MUFU. An H200 streaming bf16 at 4.3 TB/s has
// ~31 instructions per element to spare in the forward, ~46 in the backward.
//
// double inputs use the C library's (host) or CUDA's (device) erfc and exp with the same formulas.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define GELU_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GELU_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace gelu_ext {

// The `approximate` argument of the ops, parsed once on the host.
enum class Approximate : int { kNone = 0, kTanh = 1 };

// The format a result is rounded to after the math (the tensor's dtype): the erf mode's math for a 16-bit result is
// cheaper than float's (math::gelu_erf16 below), since it only has to hold a 16-bit result's bits.
enum class OutputFormat : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Calls fn with std::integral_constant<Approximate, mode> and returns its result: the kernels (CPU and CUDA) are
// compiled once per mode.
template <typename Fn>
decltype(auto) dispatch_mode(Approximate mode, Fn&& fn) {
  if (mode == Approximate::kTanh) return fn(std::integral_constant<Approximate, Approximate::kTanh>{});
  return fn(std::integral_constant<Approximate, Approximate::kNone>{});
}

namespace math {

// The formulas' constants in double: the double path, the reference implementations and autograd's gelu''.
constexpr double kSqrtHalf = 0.70710678118654752;    // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143268;  // 1 / sqrt(2 pi)
constexpr double kTanhC1 = 1.5957691216057308;       // 2 sqrt(2 / pi)
constexpr double kTanhC2 = 0.071354816272600250;     // 2 sqrt(2 / pi) * 0.044715
constexpr double kClamp = 1.0e4;                     // |x| beyond this behaves like +-inf (double path)

// ---------------------------------------------------------------------------------------------------------
// float: arithmetic, fma, min/max and bit operations only -- no calls, no branches -- so the host compiler
// vectorizes the loops that use these and the device compiler inlines them.
// ---------------------------------------------------------------------------------------------------------
GELU_HOST_DEVICE float fma_f(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}

// The bits of a float as an int32, or back (std::bit_cast, which device code lacks; memcpy compiles to a move).
template <typename To, typename From>
GELU_HOST_DEVICE To bit_cast(From value) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
#if defined(__CUDA_ARCH__)
  To result;
  memcpy(&result, &value, sizeof(To));
  return result;
#else
  return __builtin_bit_cast(To, value);
#endif
}

// Results are assembled at 2^64 times their size and multiplied by this last (see the header comment).
constexpr float kScaleDown = 0x1p-64f;

// exp(y) for y in [-113, 0], as
//   exp(y) = (1 + r u) * scale * 2^-64        scale = 2^(k + 64), |r| <= ln2/2 + 2^-14, u = 1 + r/2 + ...
// (or, for the Gaussian, a power-of-two multiple of r and the matching u: only the product r u is ever used).
// Cody-Waite reduction y = k ln2 + r: k comes from rounding y * log2(e) to an integer by adding 1.5 * 2^23 + 191 (the
// integer lands in the low mantissa bits, so the float's low 9 bits are k + 64 + 127, the biased exponent of
// 2^(k + 64), and one shift by 23 makes them the exponent field: the bits above them shift out). exp(r) =
// 1 + r (1 + r Q(r)), Q of degree 4: 4e-9 relative error, below float's 6e-8.
// 2^(k + 64) is a normal float for every k >= -163. The last step, 1 + r u, is left to the caller: folded into its
// final product as fma(A, r u, A), it rounds once instead of twice, and a caller's own small relative correction c
// joins it as fma(A, fma(r, u, c), A) = A (1 + r u) (1 + c) to first order.
// exp turns an absolute error of y into the same relative error, and |y| reaches 113, so y is never rounded as a
// whole: the two entry points below take it as an exact square or as a double-float pair.
struct ExpParts {
  float r;      // the reduced argument, or a power-of-two multiple of it
  float u;      // with r u = exp(reduced argument) - 1
  float scale;  // 2^(k + 64)
};

constexpr float kLog2e = 1.44269502f;
constexpr float kLn2Hi = 0x1.62e4p-1f;    // 0.693145751953125: 16 significant bits, so k * kLn2Hi is exact
constexpr float kLn2Lo = 1.42860677e-6f;  // ln 2 - kLn2Hi
constexpr float kRoundToInt = 12582912.0f;  // 1.5 * 2^23

// k from an approximation of y, given as y_part * y_factor (y_factor * log2(e) a constant); returns k as a float and
// sets scale = 2^(k + 64). 3 operations.
// shifted = 1.5 * 2^23 + (k + 191) has the bits 0x4b400000 + (k + 191), and 0 < k + 191 < 2^9 for every y in
// [-113, 0] (k >= -163): shifted left by 23 (unsigned, so the bits above bit 8 leave without overflow), they are
// (k + 191) << 23, the bits of 2^(k + 64). One integer subtraction fewer than taking 0x4b400000 off first.
GELU_HOST_DEVICE float exp_reduce(float y_part, float y_factor, float& scale) {
  constexpr float kShifter = kRoundToInt + 191;  // 191 = 127 (exponent bias) + 64 (the 2^64 prescale)
  const float shifted = fma_f(y_part, y_factor * kLog2e, kShifter);
  scale = bit_cast<float>(bit_cast<uint32_t>(shifted) << 23);
  return shifted - kShifter;
}

// exp(r) - 1 = r u, u = 1 + c1 r + ... + c5 r^5 by Horner, for r = s z with s a power of two (1 or -1/2): the
// polynomial in z has the coefficients c_i s^(i+1) (constants, folded at compile time), so every Horner step is the
// s = 1 evaluation's times a power of two and rounds identically, and z (s u) = r u exactly. 5 operations.
GELU_HOST_DEVICE float exp_poly(float z, float s) {
  float q = 1.38142228e-3f * (s * s * s * s * s * s);
  q = fma_f(q, z, 8.36889911e-3f * (s * s * s * s * s));
  q = fma_f(q, z, 4.16684039e-2f * (s * s * s * s));
  q = fma_f(q, z, 1.66665196e-1f * (s * s * s));
  q = fma_f(q, z, 4.99999940e-1f * (s * s));
  return fma_f(q, z, s);
}

// exp(-a^2 / 2), the Gaussian of erf mode, for a in [0, 15]. k from the rounded a^2 (only k depends on it), then the
// reduced argument r = -a^2/2 - k ln2 carried as t = -2 r = a^2 + 2 k ln2: a^2 + 2 k ln2_hi in one FMA of the exact
// square (2 k ln2_hi is exact), one rounding of a number below 0.7, so < 2^-25 absolute, then + 2 k ln2_lo; and the
// polynomial in t (s = -1/2). The same results, bit for bit, as r = fma(-a/2, a, -k ln2_hi) - k ln2_lo and the
// polynomial in r: each value is that form's times -2 or -1/2, which rounds alike (where a^2 is subnormal the two can
// differ in r's last bit, and 1 + r u rounds to 1 either way), without forming -a/2. Cost: 12 operations.
GELU_HOST_DEVICE ExpParts exp_minus_half_square(float a) {
  float scale;
  const float k = exp_reduce(a * a, -0.5f, scale);
  float t = fma_f(a, a, k * (2.0f * kLn2Hi));
  t = fma_f(k, 2.0f * kLn2Lo, t);
  return {t, exp_poly(t, -0.5f), scale};
}

// exp(hi + lo) for a double-float argument, |lo| <= 2^-14: k * ln2_hi is exact, and so is hi - k ln2_hi
// (Sterbenz), so r = (hi - k ln2_hi) - k ln2_lo + lo loses nothing to cancellation. Cost: 11 operations.
GELU_HOST_DEVICE ExpParts exp_parts(float hi, float lo) {
  float scale;
  const float k = exp_reduce(hi, 1.0f, scale);
  float r = fma_f(k, -kLn2Hi, hi);
  r = fma_f(k, -kLn2Lo, r);
  r = r + lo;
  return {r, exp_poly(r, 1.0f), scale};
}

// A * (1 + r u) * (1 + c) * 2^-64 * sign for A = (the caller's product) * scale: the one rounding into the subnormal
// range happens in the last multiply, which also applies the sign (+-2^-64). Cost: 3.
GELU_HOST_DEVICE float times_exp(float scaled, float r, float u, float correction, float signed_scale_down) {
  return fma_f(scaled, fma_f(r, u, correction), scaled) * signed_scale_down;
}

// |x| clamped to `limit`, as an integer minimum of the bit patterns (ordered like the values for non-negative
// floats): one instruction, where a float select lets GCC split every later use of the result into a select of its
// own (measured: 10-20% of the AVX2 loops). NaN becomes `limit`: callers propagate NaN through x itself. On the
// device, fminf(|x|, limit) is one FMNMX (the integer form is two instructions there) with the same value.
GELU_HOST_DEVICE float abs_clamped(float x, float limit) {
#if defined(__CUDA_ARCH__)
  return fminf(fabsf(x), limit);  // one FMNMX with an |x| operand; the same value (fminf returns limit for NaN)
#endif
  const int32_t a_bits = bit_cast<int32_t>(x) & 0x7fffffff;
  const int32_t limit_bits = bit_cast<int32_t>(limit);
  return bit_cast<float>(a_bits < limit_bits ? a_bits : limit_bits);
}

// |x| clamped to `negative_limit` for x < 0 and to `positive_limit` for x >= 0 (bfloat16's far side in
// gelu_erf16_derivative_times: its exponents reach further on the negative side than 2^(k + 64) can on the positive
// one). NaN becomes positive_limit. One instruction more than abs_clamped on the device, three on the host.
GELU_HOST_DEVICE float magnitude_clamped(float x, float negative_limit, float positive_limit) {
#if defined(__CUDA_ARCH__)
  return fabsf(fmaxf(fminf(x, positive_limit), -negative_limit));
#endif
  const int32_t x_bits = bit_cast<int32_t>(x);
  const int32_t a_bits = x_bits & 0x7fffffff;
  const int32_t positive_bits = bit_cast<int32_t>(positive_limit);
  const int32_t limit_bits = positive_bits + ((x_bits >> 31) & (bit_cast<int32_t>(negative_limit) - positive_bits));
  const int32_t nan_safe = a_bits > 0x7f800000 ? positive_bits : a_bits;
  return bit_cast<float>(nan_safe < limit_bits ? nan_safe : limit_bits);
}

// Both modes compute g(a) = gelu(-a) (or g(a) = gelu'(-a)) for a = |x| and map it to x's side by symmetry:
// gelu(x) - gelu(-x) = x and gelu'(x) + gelu'(-x) = 1.
GELU_HOST_DEVICE float gelu_from_negative_side(float x, float g) {
  return x < 0.0f ? g : x + g;  // -0 -> -0; NaN x takes the second: NaN
}

GELU_HOST_DEVICE float derivative_from_negative_side(float x, float g) {
  const float derivative = x < 0.0f ? g : 1.0f - g;
  return x == x ? derivative : x;  // NaN x: abs_clamped made a finite, so g is not NaN
}

// gelu(x) * m (geglu's product) from g(a) * 2^48: for x < 0 the product is g(a) * m, formed as
// (g(a) 2^48) (m 2^-48), both factors exact and normal (g(a) >= 5.5e-50 = 2^-164 above the clamp, and |m| >= 2^-78,
// else see kSmallFactor), so it rounds once, even where g(a) alone would be subnormal and a large m would scale up its lost bits (gelu(-14)
// is -1.09e-43, a subnormal with 7 significant bits: gelu(-14) * 300 in two steps is 41 ulp off, geglu 0.05). At the
// clamp g is taken as -0, exact as long as |g(clamp) m| is below the smallest subnormal (|m| < 2.5e4 in erf mode, 875
// in tanh mode); gelu(x) rounds to -0 there by itself.
// Below |m| = 2^-78, m 2^-48 would be subnormal and lose m's bits, so the scale goes on g instead: (g(a) 2^48 2^-48) m,
// g(a) then normal wherever the product can be (|g(a) m| >= 2^-149 needs |g(a)| > 2^-71).
constexpr float kProductScaleDown = 0x1p-16f;  // kScaleDown * 2^48: times_exp then leaves g(a) * 2^48
constexpr float kProductUnscale = 0x1p-48f;
constexpr float kSmallFactor = 0x1p-78f;

// `unscale` undoes g_scaled's scale: 2^-48, or bfloat16's far side's 2^-126 (gelu_erf16_times).
GELU_HOST_DEVICE float product_from_negative_side(float x, float g_scaled, float m,
                                                  float unscale = kProductUnscale) {
  const float negative_side = fabsf(m) >= kSmallFactor ? g_scaled * (m * unscale) : (g_scaled * unscale) * m;
  return x < 0.0f ? negative_side : (x + g_scaled * unscale) * m;  // NaN x: NaN
}

// The erf mode's parts at a = |x| <= 15:  Phi(-a) = exp(-a^2/2) R(a),  R(a) = erfcx(a/sqrt 2) / 2.
// 1/R(a) = sqrt(2 pi) a + G(a), and G (2 at a = 0, ~sqrt(2 pi)/a for large a) is a rational function of degree
// (4, 5) with positive coefficients, fitted to 2.5e-9 of 1/R (Pg(0) = 2 exactly, so R(0) = 1/2 exactly):
//   R(a) = Qg / den,   a R(a) = a Qg / den,   den = sqrt(2 pi) (a Qg) + Pg
// Why this shape: Horner on positive coefficients and a >= 0 never cancels, and a enters unrounded. For large a,
// where Horner's roundings would all count, Qg's error cancels between numerator and denominator and Pg's is
// damped by Pg / den ~ 1/a^2; for small a, each polynomial is its constant term plus small corrections. The
// forward's a R(a) is one division of a Qg, which both sides share.
// Cost: 11 + 12 (exp) = 23 operations + div.
struct NormalParts {
  float a_qg, a_q1, den;  // a R(a) = a_qg / den, R(a) = (1 + a_q1) / den
  float r, u, scale;      // exp(-a^2/2) as ExpParts (a nested struct would keep GCC from vectorizing)
};

constexpr float kErfClamp = 15.0f;  // 15 Phi(-15) = 5.5e-50: gelu(-15) rounds to -0, gelu(15) to 15
constexpr float kSqrt2PiF = 2.50662827f;
constexpr float kInvSqrt2PiF = 0.398942292f;

GELU_HOST_DEVICE NormalParts normal_parts(float a) {
  float pg = 6.26864750e-3f;
  pg = fma_f(pg, a, 7.49369189e-2f);
  pg = fma_f(pg, a, 4.16967601e-1f);
  pg = fma_f(pg, a, 1.26176131f);
  pg = fma_f(pg, a, 2.0f);
  float q1 = 2.50059133e-3f;  // Qg = 1 + a q1: never formed as 1 + small (which would round at 1's ulp)
  q1 = fma_f(q1, a, 2.99075693e-2f);
  q1 = fma_f(q1, a, 1.71081156e-1f);
  q1 = fma_f(q1, a, 5.66601217e-1f);
  q1 = fma_f(q1, a, 1.08631027f);
  const float a_q1 = a * q1;
  const float a_qg = fma_f(a_q1, a, a);
  const ExpParts gauss = exp_minus_half_square(a);
  return {a_qg, a_q1, fma_f(kSqrt2PiF, a_qg, pg), gauss.r, gauss.u, gauss.scale};
}

// gelu(x) = x Phi(x). With g(a) = -a Phi(-a) = gelu(-a): gelu(x) = g(a) for x < 0, and x + g(a) for x >= 0
// (a = x below the clamp, and beyond it g(a) rounds to -0).
GELU_HOST_DEVICE float gelu_erf(float x) {
  const float a = abs_clamped(x, kErfClamp);
  const NormalParts n = normal_parts(a);
  return gelu_from_negative_side(x, times_exp((n.a_qg / n.den) * n.scale, n.r, n.u, 0.0f, -kScaleDown));
}

// Small gates. gelu's own relative error peaks near 0 (4.5 * 2^-24 at |x| ~ 0.002 in erf mode), and a product can
// count a relative error twice in ulp, so below |x| = 1/8 erf mode uses the series instead:
//   gelu(x) m = x m (1/2 + x t),  t = (Phi(x) - 1/2) / x = (1 - x^2/6 + x^4/40) / sqrt(2 pi)  (next term: 1e-9)
// as fma(x m, x t, (x m) / 2): x m rounds once, the sum once, and x t is at most 0.05, a tenth of 1/2, so the result is
// within ~1.1 * 2^-24 relative. In tanh mode (max 2.9 ulp without it) only x m / 2 below |x| = 2^-40, where the general
// path would start from a subnormal x (or g(a)) and lose its bits to m.
constexpr float kSmallGate = 0.125f;
constexpr float kPhiC3 = -6.64903801e-2f;  // -1 / (6 sqrt(2 pi))
constexpr float kPhiC5 = 9.97355701e-3f;   // 1 / (40 sqrt(2 pi))
constexpr float kTinyGate = 0x1p-40f;

GELU_HOST_DEVICE float gelu_erf_small_times(float x, float m) {
  const float x2 = x * x;
  const float t = fma_f(fma_f(kPhiC5, x2, kPhiC3), x2, kInvSqrt2PiF);
  const float xm = x * m;
  // gelu(x) m = x m (1/2 + x t) has x m's sign, 1/2 + x t being positive; the sum below can lose it where its terms
  // underflow: x m = +-0 (a zero gate, or a tiny gate times a tiny m: (-0)(-0) + (-0) = +0), or x m = -2^-149,
  // whose half rounds to -0 and leaves the positive x m x t, far below the smallest subnormal, to round to +0. So
  // the result takes x m's sign: only a zero can have the wrong one (|x t| < 0.05), and copysign gives it back.
  return copysignf(fma_f(xm, x * t, 0.5f * xm), xm);
}

// gelu(x) * m, rounded once where gelu(x) is tiny (product_from_negative_side).
GELU_HOST_DEVICE float gelu_erf_times(float x, float m) {
  const float a = abs_clamped(x, kErfClamp);
  const NormalParts n = normal_parts(a);
  const float g_scaled = times_exp((n.a_qg / n.den) * n.scale, n.r, n.u, 0.0f, -kProductScaleDown);
  const float product = product_from_negative_side(x, a < kErfClamp ? g_scaled : -0.0f, m);
  return a < kSmallGate ? gelu_erf_small_times(x, m) : product;  // NaN x: a is the clamp, product is NaN
}

// gelu'(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi). With g(a) = gelu'(-a) = exp(-a^2/2) v,
// v = R(a) - a / sqrt(2 pi) (cancels only next to the zero at a ~ 0.75): gelu'(x) = g(a) for x < 0, 1 - g(a) for
// x >= 0.
GELU_HOST_DEVICE float gelu_erf_derivative(float x) {
  const float a = abs_clamped(x, kErfClamp);
  const NormalParts n = normal_parts(a);
  const float v = fma_f(-a, kInvSqrt2PiF, (1.0f + n.a_q1) / n.den);
  return derivative_from_negative_side(x, times_exp(v * n.scale, n.r, n.u, 0.0f, kScaleDown));
}

// The tanh mode's e = exp(-|s|), s = C1 x (1 + kappa x^2), C1 = 2 sqrt(2/pi), kappa = 0.044715, and
// inv = 1 / (1 + e). |s| = s_hi + s_lo in double-float: a^2 = h + l (one FMA), 1 + kappa a^2 = v + v_lo (v - 1 is
// exact for v >= 1, so its rounding error is one more FMA), C1 a = w + w_lo, w v = s_hi + rounding error. exp turns
// an absolute error of s into the same relative error, and |s| reaches 113. inv's two roundings (1 + e, then 1/.)
// are measured exactly: correction = 1 - inv (1 + e) (the rounding error of 1 + e by Fast2Sum, then the reciprocal's
// residual by one FMA), so inv_exact = inv (1 + correction) to first order.
struct TanhParts {
  float r, u, scale;  // exp(-|s|) as ExpParts (a nested struct would keep GCC from vectorizing)
  float inv;          // 1 / (1 + exp(-|s|)), rounded
  float correction;   // its relative error
};

constexpr float kTanhClamp = 11.0f;  // gelu_tanh(-11) = -1.6e-48 rounds to -0; |s| <= 112.6
constexpr float kC1Hi = 1.59576917f;
constexpr float kC1Lo = -4.53406805e-8f;
constexpr float kKappaHi = 4.47149985e-2f;
constexpr float kKappaLo = 1.54614443e-9f;
constexpr float k3C2 = 2.14064449e-1f;  // 3 C1 kappa: ds/dx = C1 + 3 C1 kappa x^2

GELU_HOST_DEVICE TanhParts tanh_parts(float a) {
  const float h = a * a;
  const float l = fma_f(a, a, -h);
  const float v = fma_f(kKappaHi, h, 1.0f);
  float v_lo = fma_f(kKappaHi, h, 1.0f - v);
  v_lo = fma_f(kKappaHi, l, fma_f(kKappaLo, h, v_lo));
  const float w = kC1Hi * a;
  const float w_lo = fma_f(kC1Lo, a, fma_f(kC1Hi, a, -w));
  const float s = w * v;
  const float s_lo = fma_f(w_lo, v, fma_f(w, v_lo, fma_f(w, v, -s)));
  const ExpParts e = exp_parts(-s, -s_lo);
  const float exp_s = (fma_f(e.r, e.u, 1.0f) * e.scale) * kScaleDown;
  const float d = 1.0f + exp_s;
  const float d_error = exp_s - (d - 1.0f);  // exact: d - 1 is exact for d >= 1, and |exp_s| <= 1
  const float inv = 1.0f / d;
  const float correction = fma_f(-inv, d_error, fma_f(-inv, d, 1.0f));
  return {e.r, e.u, e.scale, inv, correction};
}

// gelu_tanh(x) = 0.5 x (1 + tanh(z)) = x sigmoid(s). With g(a) = -a e / (1 + e) = gelu_tanh(-a): g(a) for x < 0,
// x + g(a) for x >= 0.
GELU_HOST_DEVICE float gelu_tanh(float x) {
  const float a = abs_clamped(x, kTanhClamp);
  const TanhParts p = tanh_parts(a);
  return gelu_from_negative_side(x, times_exp((a * p.inv) * p.scale, p.r, p.u, p.correction, -kScaleDown));
}

GELU_HOST_DEVICE float gelu_tanh_times(float x, float m) {
  const float a = abs_clamped(x, kTanhClamp);
  const TanhParts p = tanh_parts(a);
  const float g_scaled = times_exp((a * p.inv) * p.scale, p.r, p.u, p.correction, -kProductScaleDown);
  const float product = product_from_negative_side(x, a < kTanhClamp ? g_scaled : -0.0f, m);
  return a < kTinyGate ? x * (m * 0.5f) : product;
}

// d/dx [x sigmoid(s)] = sigmoid(s) (1 + x s' (1 - sigmoid(s))). At x = -a: sigmoid = e inv, 1 - sigmoid = inv,
// g(a) = e inv (1 - a s' inv), s' = C1 + 3 C1 kappa a^2. gelu_tanh'(x) = g(a) for x < 0, 1 - g(a) for x >= 0.
GELU_HOST_DEVICE float gelu_tanh_derivative(float x) {
  const float a = abs_clamped(x, kTanhClamp);
  const TanhParts p = tanh_parts(a);
  const float inv = fma_f(p.inv, p.correction, p.inv);
  const float a_ds = a * fma_f(k3C2, a * a, kC1Hi);
  const float g = times_exp((fma_f(-a_ds, inv, 1.0f) * inv) * p.scale, p.r, p.u, 0.0f, kScaleDown);
  return derivative_from_negative_side(x, g);
}

// ---------------------------------------------------------------------------------------------------------
// Erf mode for results that are rounded to float16 or bfloat16 afterwards. A 16-bit result needs 11 (float16) or 8
// (bfloat16) significant bits, not float's 24, so the float path's care (a double-float exp argument, a rational
// fit to 2.5e-9, a division) is more than the result can hold, and on an H200 more than a bfloat16 stream leaves
// time for (~31 instructions per element at 4.3 TB/s; the float path's forward is 49). Instead, with a = |x|:
//   gelu(-a) = -a 2^E(a),    E(a) = log2 Phi(-a)                          (E(0) = -1 exactly: Phi(0) = 1/2)
//   gelu'(-a) = (a0 - a) 2^D(a),   D(a) = log2(gelu'(-a) / (a0 - a))      (a0 = 0.75179...: gelu'(-a0) = 0)
// E and D are single polynomials in a (log2 of Phi(-a) exp(a^2/2) is analytic up to that function's nearest zeros,
// at a = -1.9 +- 2.8i, far enough from [0, 15] for degree 10 to 12; a rational fit would need a division), and a
// 2^f of 16-bit accuracy finishes it. The fits are weighted towards a = 0, where most 16-bit inputs are. gelu' changes sign at -a0, so its
// factor (a0 - a) is split out and formed exactly (a0 as a float pair, Sterbenz), which keeps the derivative's
// relative accuracy right next to its zero, where the float path's Phi - x phi has to cancel.
// What it keeps from the float path: no cancellation (the same symmetry, gelu(x) = x + gelu(-a) for x >= 0); a
// subnormal result rounded once (the 2^64 prescale, folded into 2^f's coefficients); the clamps, signed zeros and
// NaN. IEEE float operations and explicit FMAs only (no hardware exp2 approximation), so the host reproduces the GPU.
// Proven over every input (benchmarks/exhaustive_ulp.cpp --pairs, tests/test_rounding16.py): every float16 and
// bfloat16 gelu and gelu' result faithful, almost all correctly rounded (docs/accuracy.md has the counts).
// Cost: the clamp + E's degree + 2^f's degree + 5 (+ 3 for gelu'), against the float path's 23 + a division. The
// fits come from scripts/fit_gelu_math.py; the float16 ones were then tuned by a few ulps (scripts/tune_fit16.cpp)
// so that as many results as possible are correctly rounded.
// ---------------------------------------------------------------------------------------------------------

// c0 a^n + c1 a^(n-1) + ... + cn by Horner, one FMA per degree (the coefficients as arguments, which device code can
// take from a host constexpr where an array it could not).
GELU_HOST_DEVICE float horner(float, float c) { return c; }
template <typename... Rest>
GELU_HOST_DEVICE float horner(float a, float c0, float c1, Rest... rest) {
  return horner(a, fma_f(c0, a, c1), rest...);
}

// 2^f * s for |f| <= 1/2 and s a power of two: s (1 + f u(f)), u of degree kDegree - 1 (degree 4: 2^-18.4 relative,
// 5: 2^-23.4). The coefficients carry s (folded at compile time), so every Horner step is the s = 1 evaluation's times
// a power of two and rounds alike. kDegree operations.
template <int kDegree>
GELU_HOST_DEVICE float exp2_poly(float f, float s) {
  static_assert(kDegree == 4 || kDegree == 5, "2^f has fits of degree 4 and 5");
  if constexpr (kDegree == 4) {
    return horner(f, 9.58285201e-3f * s, 5.59064336e-2f * s, 2.40240991e-1f * s, 6.93124175e-1f * s, s);
  } else {
    return horner(f, 1.32647250e-3f * s, 9.67151392e-3f * s, 5.55073358e-2f * s, 2.40222424e-1f * s,
                  6.93147004e-1f * s, s);
  }
}

// 2^(k + 64) from shifted = (k + 191) + 1.5 * 2^23, as exp_reduce forms it: one shift.
constexpr float kExp2Shifter = kRoundToInt + 191;  // 191 = 127 (exponent bias) + 64 (the 2^64 prescale)
GELU_HOST_DEVICE float exp2_scale(float shifted) { return bit_cast<float>(bit_cast<uint32_t>(shifted) << 23); }

// factor * 2^e * signed_scale_down * 2^64, for e in [-190, 0] and a normal factor: e = k + f with k = round(e) by
// the shifter, |f| <= 1/2 exactly (Sterbenz), and 2^f's polynomial carries signed_scale_down, so factor * 2^(k+64)
// is exact and the last multiply rounds the result once, into the subnormals if it is that small. kDegree + 5.
// A shifter of kExp2Shifter + kFarExponent gives 2^(k + 64 + kFarExponent) instead (bfloat16's far side, below).
template <int kDegree>
GELU_HOST_DEVICE float exp2_times(float e, float factor, float signed_scale_down, float shifter = kExp2Shifter) {
  const float shifted = e + shifter;
  const float f = e - (shifted - shifter);
  return (factor * exp2_scale(shifted)) * exp2_poly<kDegree>(f, signed_scale_down);
}

// The fits, per output format: the clamp (beyond it gelu(-a) and gelu'(-a) round to -0 in the format, for every
// factor a format can multiply them by: float16's largest grad or up, 65504, times gelu'(-8) = -4e-14 is below half
// its smallest subnormal; bfloat16 clamps where float does), E and D on [0, clamp] (minimax, errors in log2 units),
// and 2^f's degree for the derivative.
constexpr float kA0Hi = 0.751791537f;    // the zero of gelu' is at -0.75179152469356446
constexpr float kA0Lo = -1.21144499e-8f;  // a0 - kA0Hi

struct Float16Fit {
  static constexpr float kClamp = 8.0f;
  static constexpr bool kFarSide = false;  // 65504 times gelu'(-8) is below float16's range: no far side
  static constexpr float kDerivativeClamp = kClamp;  // the far side's clamp: the same without one
  static constexpr int kForwardExpDegree = 5;
  static constexpr int kDerivativeExpDegree = 5;
  GELU_HOST_DEVICE static float forward_exponent(float a) {  // degree 11
    return fma_f(a,
                 horner(a,
                        6.64977018e-10f, -3.15742881e-8f, 6.51626863e-7f, -7.56867303e-6f, 5.2301657e-5f,
                        -0.000184801305f, -0.000216935514f, 0.00723030465f, -0.0526353009f, -0.459164828f,
                        -1.15110731f),
                 -1.0f);
  }
  GELU_HOST_DEVICE static float derivative_exponent(float a) {  // degree 11
    return horner(a,
                  -4.48271177e-11f, 6.90891744e-9f, -2.73561824e-7f, 5.45093735e-6f, -6.68668072e-5f,
                  0.000557379099f, -0.00335991173f, 0.0153505523f, -0.0552202016f, -0.560554802f, -0.38320303f,
                  -0.588404655f);
  }
};

struct BFloat16Fit {
  static constexpr float kClamp = 15.0f;
  static constexpr float kDerivativeClamp = 19.5f;  // x < 0: gelu'(-19.5) = -2^-271.3, times 2^128 below 2^-134
  static constexpr bool kFarSide = true;            // gelu_erf16_derivative_times
  static constexpr float kFarSideStart = 13.0f;     // gelu'(-13) = -2^-119.5
  static constexpr int kForwardExpDegree = 4;
  static constexpr int kDerivativeExpDegree = 4;
  GELU_HOST_DEVICE static float forward_exponent(float a) {  // degree 10
    return fma_f(a,
                 horner(a,
                        6.29860122e-11f, -5.98123062e-9f, 2.51410455e-7f, -6.18706326e-6f, 9.95690571e-5f,
                        -0.00111234246f, 0.00898879021f, -0.0546169989f, -0.458083004f, -1.15129685f),
                 -1.0f);
  }
  // degree 13 in a - 9.75 on [0, kDerivativeClamp]: D reaches -275 there, and in a the terms of D would cancel by
  // thousands, their float coefficients then 2^-8 off at a = 18 (scripts/fit_gelu_math.py, centered)
  GELU_HOST_DEVICE static float derivative_exponent(float a) {
    return horner(a - 9.75f,
                  -4.39601765e-14f, 2.89449725e-13f, 9.83787357e-12f, -4.20884404e-11f, -1.06058407e-09f,
                  3.55096819e-09f, 4.6973625e-08f, -4.42509354e-08f, -1.93346023e-06f, 8.34428556e-06f,
                  -6.28553753e-05f, -0.720503986f, -14.0756025f, -69.7981796f);
  }
  // geglu's E on [0, kDerivativeClamp] (its far side, gelu_erf16_times): degree 11, Q = (E + 1) / a in a - 9.75 as
  // D above. gelu alone keeps forward_exponent: beyond a = 15 it rounds to -0, and the shorter fit is 2 cheaper.
  GELU_HOST_DEVICE static float product_exponent(float a) {
    return fma_f(a,
                 horner(a - 9.75f,
                        -1.4689904e-12f, 4.03460633e-11f, -3.86319254e-10f, 2.59266653e-09f, -4.32294129e-08f,
                        7.19987838e-07f, -9.40480095e-06f, 0.000122094352f, -0.00165173609f, -0.698076963f,
                        -7.40503263f),
                 -1.0f);
  }
};

template <OutputFormat kFormat>
struct Fit16;
template <>
struct Fit16<OutputFormat::kFloat16> : Float16Fit {};
template <>
struct Fit16<OutputFormat::kBFloat16> : BFloat16Fit {};

template <class Fit>
GELU_HOST_DEVICE float gelu_erf16(float x) {
  const float a = abs_clamped(x, Fit::kClamp);
  return gelu_from_negative_side(x, exp2_times<Fit::kForwardExpDegree>(Fit::forward_exponent(a), a, -kScaleDown));
}

// grad * gelu'(x) (gelu_backward). bfloat16 shares float's exponent range, so a grad up to 2^128 times a gelu' down
// to 2^-262 (x = -19.1) is a bfloat16 result, where gelu' alone is below float's range. On that far side (x below
// -kFarSideStart, where gelu' < 2^-119) g is formed times 2^kFarExponent (the shifter's offset: the 2^(k + 64)
// factor would underflow) and grad times 2^-kFarExponent, so their product rounds once. That costs grad's low bits
// below 2^-149, an absolute error under |g| 2^-24 <= 2^-143, below half of bfloat16's smallest subnormal (2^-134).
// float16's largest grad times gelu'(-8) is below its range, so it has no far side. Cost: 4, and 2 for D's longer
// fit.
constexpr int kFarExponent = 126;  // g(a) < 2^-2, so g 2^126 stays finite
constexpr float kFarUnscale = 0x1p-126f;

// geglu's backward: grad_gate = (grad up) gelu'(gate), where grad up leaves float's range before the product does
// (bfloat16 and float32 factors reach 2^128 each: grad = up = 2^100 at gate = -5 is 2^200 gelu'(-5) = -2^180.6,
// beyond float, but at gate = -12 it is -2^99.7, which grad up formed first would make -inf). Where
// |grad up| >= 2^120 (infinity included), the factor is carried as grad up 2^-128 instead, formed as
// (grad 2^-64) (up 2^-64): each is >= 2^-8 there (the other is <= 2^128), so for 16-bit factors both steps are exact
// and the product (16 bits) is exact and normal, below 2^128. times_derivative puts the 2^128 back after the product
// with gelu'. Not for float16 (|grad up| < 2^32).
constexpr float kLargeFactor = 0x1p120f;

// condition ? value * scale : value, for a power-of-two scale. SIMD code computes both arms of a select and blends
// them, so value * scale is formed in every lane, also where the lane discards it; where that product is subnormal,
// each one costs an x86 core a microcode assist (bfloat16's far side, value 2^-126, made the bfloat16 backward 3-4x
// slower on Intel AVX-512 for grads below 1). So the host selects the scale, and multiplies once: with integer
// operations, since GCC moves a multiply into the arms of a float select (value * 1 is value) and is back where it
// started. The device has no lanes to blend and keeps the plain select (2 SASS instructions fewer). Same value.
GELU_HOST_DEVICE float times_scale_if(float value, bool condition, float scale) {
#if defined(__CUDA_ARCH__)
  return condition ? value * scale : value;
#else
  const uint32_t mask = 0u - static_cast<uint32_t>(condition);
  const uint32_t one = bit_cast<uint32_t>(1.0f);
  return value * bit_cast<float>(one ^ (mask & (bit_cast<uint32_t>(scale) ^ one)));
#endif
}

struct Factor {
  float value;  // grad up, or grad up 2^-128 where large
  bool large;
};

// kLift (bfloat16's host loops): SIMD code forms the large arm in every lane, where grad up 2^-128 would be
// subnormal for any |grad up| < 4, so the lanes that discard it form grad up 2^-28 instead (times_scale_if); the
// large ones are unchanged. Without it GCC also left geglu's bfloat16 tanh backward scalar, 10x slower
// (tests/test_no_fp64.py checks that every CPU loop is vectorized). float32's geglu backward showed no such cost, and
// the lift made it 6-10% slower (Intel Xeon, AVX-512); the device has no lanes.
template <bool kLift = false>
GELU_HOST_DEVICE Factor factor_of(float grad, float up) {
  const float product = grad * up;
  const bool large = fabsf(product) >= kLargeFactor;  // NaN: not large, and NaN propagates
#if defined(__CUDA_ARCH__)
  const float lifted = grad;
#else
  const float lifted = kLift ? times_scale_if(grad, !large, 0x1p100f) : grad;
#endif
  return {large ? (lifted * 0x1p-64f) * (up * 0x1p-64f) : product, large};
}

// gelu' times a factor, each with its scale: the derivative is gelu' 2^126 on bfloat16's far side (`far`), and a
// large factor is 2^-128 of its value (factor_of). Not large: as gelu_backward, derivative (factor 2^-126) on the far
// side, one rounding. Large, near side: gelu' >= 2^-119.5 (else it is far) and the factor >= 2^-8, so their product is
// >= 2^-127.5 (21 bits) before 2^64 2^64 restores it, finite exactly where the result is. Large, far side:
// ((gelu' 2^126) (factor 2^-128)) 4, whose product is subnormal only where the result is below 2^-132 (12 or more
// bits left: a bfloat16 subnormal has at most 2). With large = false (a constant) it folds to gelu_backward's form.
GELU_HOST_DEVICE float times_derivative(float derivative, bool far, float factor, bool large) {
  // factor 2^-126 is subnormal for |factor| < 1, so it is formed only where it is used (times_scale_if)
  const float product = derivative * times_scale_if(factor, far && !large, kFarUnscale);
  return large ? (product * (far ? 4.0f : 0x1p64f)) * (far ? 1.0f : 0x1p64f) : product;
}

// gelu(x) * m, the product rounded once where gelu(x) is tiny (product_from_negative_side), and from the series below
// |x| = 1/8 as in float (gelu_erf_small_times): there the product's scaled factor m 2^-48 would lose the bits of a
// tiny m (|m| < 2^-78), which the series, with no scaling, keeps.
// bfloat16's far side: an up as large as 2^128 times a gelu(gate) down to 2^-262 (gate = -19.0) is a bfloat16
// result, where g(a) 2^48 would underflow (2^-164 at a = 15). Below gate = -kFarSideStart, g is formed times
// 2^kFarExponent instead (the shifter's offset, as in gelu_erf16_derivative_times, and from the longer fit
// product_exponent) and m times 2^-kFarExponent: the lost bits of m are an absolute error below |g| 2^(126-150) 2^-126
// <= 2^-147, under half of bfloat16's smallest subnormal. The scale 2^48 of the near side moves into the shifter
// too (2^(k + 64 + 48) a is exact and normal for a <= 15), so both sides share one exp2_times. Cost: 8.
template <class Fit, bool kFarSide = Fit::kFarSide>
GELU_HOST_DEVICE float gelu_erf16_times(float x, float m) {
  if constexpr (kFarSide) {
    const float a = magnitude_clamped(x, Fit::kDerivativeClamp, Fit::kClamp);
    const bool far = x < -Fit::kFarSideStart;  // NaN: not far
    const float g_scaled = exp2_times<Fit::kForwardExpDegree>(
        Fit::product_exponent(a), a, -kScaleDown, kExp2Shifter + (far ? kFarExponent : 48));
    const float product = product_from_negative_side(x, a < Fit::kDerivativeClamp ? g_scaled : -0.0f, m,
                                                     far ? kFarUnscale : kProductUnscale);
    return a < kSmallGate ? gelu_erf_small_times(x, m) : product;
  } else {
    const float a = abs_clamped(x, Fit::kClamp);
    const float g_scaled = exp2_times<Fit::kForwardExpDegree>(Fit::forward_exponent(a), a, -kProductScaleDown);
    const float product = product_from_negative_side(x, a < Fit::kClamp ? g_scaled : -0.0f, m);
    return a < kSmallGate ? gelu_erf_small_times(x, m) : product;  // NaN x: a is the clamp, product is NaN
  }
}

// `grad` may be geglu's large factor (`large`: factor_of, times_derivative). From the clamp on (x <= -19.5), gelu' is
// then -0: the clamp's value times a factor up to 2^256 would give up to 2^-15.3 at any x below, where the exact
// value falls to 0 (2^-15.3 at x = -19.5 itself, 2^-29 at -20: docs/accuracy.md). A grad alone, up to 2^128, gives a
// result that rounds to 0 at the clamp's value.
template <class Fit, bool kFarSide = Fit::kFarSide>
GELU_HOST_DEVICE float gelu_erf16_derivative_times(float x, float grad, bool large = false) {
  const float a = kFarSide ? magnitude_clamped(x, Fit::kDerivativeClamp, Fit::kClamp) : abs_clamped(x, Fit::kClamp);
  const float to_zero = (kA0Hi - a) + kA0Lo;  // a0 - a: the first difference is exact for a in [a0/2, 2 a0]
  const float e = Fit::derivative_exponent(a);
  if constexpr (kFarSide) {
    const bool far = x < -Fit::kFarSideStart;  // NaN: not far (a is the clamp, NaN propagates through x)
    const float g = exp2_times<Fit::kDerivativeExpDegree>(e, to_zero, kScaleDown,
                                                          far ? kExp2Shifter + kFarExponent : kExp2Shifter);
    const float g_in_range = large && !(a < Fit::kDerivativeClamp) ? -0.0f : g;
    return times_derivative(derivative_from_negative_side(x, g_in_range), far, grad, large);
  } else {
    const float g = exp2_times<Fit::kDerivativeExpDegree>(e, to_zero, kScaleDown);
    return times_derivative(derivative_from_negative_side(x, g), false, grad, large);
  }
}

// The tanh mode for 16-bit results: the float path's formulas, g(a) = -a e / (1 + e) and its derivative
// e inv (1 - a s' inv), inv = 1 / (1 + e), e = exp(-s), with what a 16-bit result can do without:
//   * e = 2^y, y = -s log2(e) = a t, t = -C1 log2(e) (1 + kappa a^2) in one FMA: y is rounded only inside the
//     reduction (k = round(a t) by the shifter, f = a t - k in one FMA), so its error is t's, ~2^-23 of |y| <= 163,
//     where the float path builds s in double-float (11 operations);
//   * inv by Newton's method from a linear seed (1 + e is in [1, 2]), without a division: 6 FMAs, 2^-24 relative;
//   * 2^f of degree 5 (2^-23.4). Degree 4 would leave one bfloat16 result misrounded; this leaves none (0 of
//     65,280 bfloat16 gelu and gelu' results misrounded, 5 and 4 of 63,488 in float16, as the float path's 5 and 1).
// One evaluation serves both 16-bit formats: the float path's clamp (11) covers bfloat16's range, and float16
// results beyond |x| = 7 round to 0 or x anyway. Cost: forward 21 + the clamp, against the float path's 36 + a
// division; float16's derivative 7 more for its zero (gelu_tanh16_derivative_times).
constexpr float kTanhY1 = -2.30220819f;   // -C1 log2(e)
constexpr float kTanhY3 = -0.102943242f;  // -C1 kappa log2(e)

// 1 / d for d in [1, 2]: the seed 24/17 - 8/17 d is within 1/17 (the minimax line), a cubic step y (1 + r + r^2)
// takes the relative error r to r^3, a Newton step to r^6 (~2^-24.5, below the roundings). 6 FMAs.
GELU_HOST_DEVICE float reciprocal_1_to_2(float d) {
  float y = fma_f(d, -0.470588237f, 1.41176474f);
  float r = fma_f(-d, y, 1.0f);
  y = fma_f(y, fma_f(r, r, r), y);
  r = fma_f(-d, y, 1.0f);
  return fma_f(y, r, y);
}

struct Tanh16Parts {
  float scale;  // 2^(k + 64)
  float p;      // 2^f 2^-64: e = 2^y = p scale
  float inv;    // 1 / (1 + e)
};

GELU_HOST_DEVICE Tanh16Parts tanh16_parts(float a, float shifter = kExp2Shifter) {
  const float t = fma_f(a * a, kTanhY3, kTanhY1);
  const float shifted = fma_f(a, t, shifter);
  const float scale = exp2_scale(shifted);
  const float p = exp2_poly<5>(fma_f(a, t, -(shifted - shifter)), kScaleDown);
  return {scale, p, reciprocal_1_to_2(fma_f(p, scale, 1.0f))};
}

// g(a) = -(a 2^(k+64) inv) 2^f 2^-64: the first product is normal, the last rounds once (into the subnormals).
GELU_HOST_DEVICE float gelu_tanh16(float x) {
  const float a = abs_clamped(x, kTanhClamp);
  const Tanh16Parts t = tanh16_parts(a);
  return gelu_from_negative_side(x, ((a * t.scale) * -t.inv) * t.p);
}

// The derivative's factor h(a) = 1 - a s' inv vanishes at a0 = 0.75246 (gelu_tanh'(-a0) = 0), where 1 - a s' inv
// cancels: its absolute error, ~2^-23, is relative to h, which is 3.8e-5 at float16's input nearest to a0 (-0.752441)
// and made that result unfaithful for large grads (2.8 ulp at grad 14). Within |a - a0| < 1/16, h is its cubic
// Taylor polynomial in delta = a - a0 (delta exact: a0 as a float pair, Sterbenz; the series' relative error is below
// 2.1e-7 there); beyond, |h| > 0.11 and the FMA form is accurate. 7 operations more than the plain form.
constexpr float kTanhA0Hi = 0.752461433f;
constexpr float kTanhA0Lo = -1.13396279e-8f;
constexpr float kTanhNearZero = 0.0625f;

// grad * gelu'(x), with bfloat16's far side as in gelu_erf16_derivative_times (kFarSide): below x = -10, where
// gelu' < 2^-118, e = 2^y < 2^-126 leaves 1 / (1 + e) = 1, and 2^(k + 64) would underflow (y reaches -277 at the
// clamp 13.375, where gelu' = -2^-268 and a grad of 2^128 leaves a product below 2^-134). Cost: 5 on the far side.
constexpr float kTanh16DerivativeClamp = 13.375f;
constexpr float kTanhFarSideStart = 10.0f;

// bfloat16's far side as in gelu_erf16_times, below gate = -kTanhFarSideStart (g(10) = -2^-122.6), to the
// derivative's clamp (g(-13.375) = -2^-273): there e < 2^-122 leaves 1 / (1 + e) = 1. Cost: 5.
template <OutputFormat kFormat, bool kFarSide = Fit16<kFormat>::kFarSide>
GELU_HOST_DEVICE float gelu_tanh16_times(float x, float m) {
  const float clamp = kFarSide ? kTanh16DerivativeClamp : kTanhClamp;
  const float a = kFarSide ? magnitude_clamped(x, kTanh16DerivativeClamp, kTanhClamp) : abs_clamped(x, kTanhClamp);
  const bool far = kFarSide && x < -kTanhFarSideStart;  // NaN: not far
  const Tanh16Parts t = tanh16_parts(a, far ? kExp2Shifter + kFarExponent : kExp2Shifter);
  // g(a) 2^48 (product_from_negative_side), or g(a) 2^126 on the far side
  const float g_scaled = ((a * t.scale) * -(far ? 1.0f : t.inv)) * (t.p * (far ? 1.0f : 0x1p48f));
  const float product =
      product_from_negative_side(x, a < clamp ? g_scaled : -0.0f, m, far ? kFarUnscale : kProductUnscale);
  return a < kTinyGate ? x * (m * 0.5f) : product;
}

// The zero's series is float16's: bfloat16's inputs nearest to a0 (0.75, 0.753906) have |h| >= 0.0047, where the
// plain form's 2^-23 is 2^-15 of h, and every bfloat16 gelu' is correctly rounded without it.
template <OutputFormat kFormat, bool kFarSide = Fit16<kFormat>::kFarSide>
GELU_HOST_DEVICE float gelu_tanh16_derivative_times(float x, float grad, bool large = false) {
  const float a = kFarSide ? magnitude_clamped(x, kTanh16DerivativeClamp, kTanhClamp) : abs_clamped(x, kTanhClamp);
  const bool far = kFarSide && x < -kTanhFarSideStart;  // NaN: not far
  const Tanh16Parts t = tanh16_parts(a, far ? kExp2Shifter + kFarExponent : kExp2Shifter);
  const float inv = far ? 1.0f : t.inv;  // t.inv is 1 / (1 + e 2^126) there
  const float a_ds = a * fma_f(k3C2, a * a, kC1Hi);
  float h = fma_f(-a_ds, inv, 1.0f);  // 1 - a s' inv
  if constexpr (kFormat == OutputFormat::kFloat16) {
    const float delta = (a - kTanhA0Hi) - kTanhA0Lo;
    const float series = delta * fma_f(fma_f(-6.16051361e-2f, delta, -8.16318497e-1f), delta, -1.90459912f);
    h = fabsf(delta) < kTanhNearZero ? series : h;
  }
  const float g = ((inv * h) * t.scale) * t.p;
  const float g_in_range = large && !(a < kTanh16DerivativeClamp) ? -0.0f : g;  // as gelu_erf16_derivative_times
  return times_derivative(derivative_from_negative_side(x, g_in_range), far, grad, large);
}

// ---------------------------------------------------------------------------------------------------------
// double: the C library's (host) or CUDA's (device) erfc and exp; same formulas, no cancellation.
// ---------------------------------------------------------------------------------------------------------
// NaN-preserving clamp of x to [-limit, limit] (comparisons with NaN are false, so NaN passes through).
GELU_HOST_DEVICE double clamp_abs(double x, double limit) {
  return x > limit ? limit : (x < -limit ? -limit : x);
}

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

// double has the range for the plain product.
GELU_HOST_DEVICE double gelu_erf_times(double x, double m) { return gelu_erf(x) * m; }
GELU_HOST_DEVICE double gelu_tanh_times(double x, double m) { return gelu_tanh(x) * m; }

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

// The elementwise functors the kernels map over tensors (csrc/cpu/elementwise_cpu.h, csrc/cuda/elementwise_cuda.cuh).
// `compute_t` is the type the math runs in: float for float / half / bfloat16, double for double; kFormat is the
// format the result is rounded to afterwards, which picks the erf mode's 16-bit math for float16 and bfloat16 (the
// kernels pass their storage type's; the default is float's math). Each takes its inputs in the op's argument order
// and returns one value, or a Pair for an op with two outputs. A new op is one more functor here plus its
// registration: the kernels are generic in the functor.
template <typename T>
struct Pair {
  T first;
  T second;
};

// Whether a functor runs the 16-bit math (math::gelu_erf16, math::gelu_tanh16 and their relatives): float arithmetic
// and a 16-bit result.
template <OutputFormat kFormat, typename compute_t>
constexpr bool kUses16BitMath = kFormat != OutputFormat::kFloat32 && std::is_same_v<compute_t, float>;

template <Approximate kMode>
struct GeluForward {
  template <OutputFormat kFormat = OutputFormat::kFloat32, typename compute_t>
  GELU_HOST_DEVICE static compute_t apply(compute_t x) {
    if constexpr (kUses16BitMath<kFormat, compute_t>) {
      return kMode == Approximate::kTanh ? math::gelu_tanh16(x) : math::gelu_erf16<math::Fit16<kFormat>>(x);
    } else {
      return kMode == Approximate::kTanh ? math::gelu_tanh(x) : math::gelu_erf(x);
    }
  }
};

template <Approximate kMode>
struct GeluBackward {
  template <OutputFormat kFormat = OutputFormat::kFloat32, typename compute_t>
  GELU_HOST_DEVICE static compute_t apply(compute_t grad, compute_t x) {
    if constexpr (kUses16BitMath<kFormat, compute_t>) {
      return kMode == Approximate::kTanh ? math::gelu_tanh16_derivative_times<kFormat>(x, grad)
                                         : math::gelu_erf16_derivative_times<math::Fit16<kFormat>>(x, grad);
    } else {
      return grad * derivative(x);
    }
  }

  // geglu's factor grad up, large or not (math::factor_of), times gelu'(x), in float arithmetic.
  template <OutputFormat kFormat>
  GELU_HOST_DEVICE static float apply(math::Factor factor, float x) {
    if constexpr (kFormat != OutputFormat::kFloat32) {
      return kMode == Approximate::kTanh
                 ? math::gelu_tanh16_derivative_times<kFormat>(x, factor.value, factor.large)
                 : math::gelu_erf16_derivative_times<math::Fit16<kFormat>>(x, factor.value, factor.large);
    } else {
      return math::times_derivative(derivative(x), false, factor.value, factor.large);
    }
  }

  template <typename compute_t>
  GELU_HOST_DEVICE static compute_t derivative(compute_t x) {
    return kMode == Approximate::kTanh ? math::gelu_tanh_derivative(x) : math::gelu_erf_derivative(x);
  }
};

// bias_gelu: gelu(x + bias), the sum rounded once to compute_t (float32 for the float types: for float16 and
// bfloat16 the sum is not rounded to the half type first, unlike eager F.gelu(x + b)). The backward evaluates the
// derivative at that same rounded sum, recomputed from x and bias, so nothing but the inputs is saved. 1 add more
// than gelu per element.
template <Approximate kMode>
struct BiasGeluForward {
  template <OutputFormat kFormat = OutputFormat::kFloat32, typename compute_t>
  GELU_HOST_DEVICE static compute_t apply(compute_t x, compute_t bias) {
    return GeluForward<kMode>::template apply<kFormat>(x + bias);
  }
};

// grad_x = grad * gelu'(x + bias). grad_bias, the sum of grad_x over the rows, is accumulated by the kernels from
// these values in compute_t, before they are rounded to the storage type.
template <Approximate kMode>
struct BiasGeluBackward {
  template <OutputFormat kFormat = OutputFormat::kFloat32, typename compute_t>
  GELU_HOST_DEVICE static compute_t apply(compute_t grad, compute_t x, compute_t bias) {
    return GeluBackward<kMode>::template apply<kFormat>(grad, x + bias);
  }
};

// geglu: gelu(gate) * up (gelu_*_times: the product formed without a subnormal intermediate, and in erf mode's float
// math from the series near 0), rounded once to the storage type. 4 (tanh) to 11 (erf) operations more than gelu.
template <Approximate kMode>
struct GegluForward {
  template <OutputFormat kFormat = OutputFormat::kFloat32, typename compute_t>
  GELU_HOST_DEVICE static compute_t apply(compute_t gate, compute_t up) {
    if constexpr (kUses16BitMath<kFormat, compute_t>) {
      return kMode == Approximate::kTanh ? math::gelu_tanh16_times<kFormat>(gate, up)
                                         : math::gelu_erf16_times<math::Fit16<kFormat>>(gate, up);
    } else {
      return kMode == Approximate::kTanh ? math::gelu_tanh_times(gate, up) : math::gelu_erf_times(gate, up);
    }
  }
};

// (grad_gate, grad_up) = (grad * up * gelu'(gate), grad * gelu(gate)): both from one read of the three inputs, with
// bfloat16's far side in both (they share its clamp and test, which the device compiler then computes once). grad up
// is formed as math::factor_of does, so that a grad_gate in float's range is not lost to an overflow of grad up
// (bfloat16 and float32; float16's factors stay below 2^32, and double has the range).
template <Approximate kMode>
struct GegluBackward {
  template <OutputFormat kFormat = OutputFormat::kFloat32, typename compute_t>
  GELU_HOST_DEVICE static Pair<compute_t> apply(compute_t grad, compute_t gate, compute_t up) {
    const compute_t grad_up = GegluForward<kMode>::template apply<kFormat>(gate, grad);
    if constexpr (std::is_same_v<compute_t, float> && kFormat != OutputFormat::kFloat16) {
      constexpr bool kLift = kFormat == OutputFormat::kBFloat16;
      return {GeluBackward<kMode>::template apply<kFormat>(math::factor_of<kLift>(grad, up), gate), grad_up};
    } else {
      return {GeluBackward<kMode>::template apply<kFormat>(grad * up, gate), grad_up};
    }
  }
};

}  // namespace gelu_ext
