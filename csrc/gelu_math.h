// GELU and its derivative, both modes, as scalar functions shared by the CPU and CUDA kernels.
//
// This is the only place the math lives: both backends include it, so they cannot drift. Built with
// -ffp-contract=off on the host and --fmad=false on the device, every operation rounds as written (the fused
// multiply-adds are explicit), so float results are bit-identical across CPU instruction sets and between CPU and
// CUDA (tests/test_gelu.py, tests/test_gelu_cuda.py).
//
// float, float16 and bfloat16 inputs run in float arithmetic only (no double anywhere: FP64 runs at 1/64 of the
// FP32 rate on consumer and inference GPUs); the half types are computed in float and rounded once.
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
// On CUDA (benchmarks/kernel_ops.py, sm_90, .f32 PTX instructions per element, a division counted once): float32
// 36 (erf) and 49 (tanh) forward, 42.5 and 58 backward; bfloat16/float16 33 and 47 forward, 39 and 55 backward. No FP64
// instruction in any float kernel. An H100 streaming bf16 at 3 TB/s has ~44 FP32 operations per element to spare.
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
// own (measured: 10-20% of the AVX2 loops). NaN becomes `limit`: callers propagate NaN through x itself.
GELU_HOST_DEVICE float abs_clamped(float x, float limit) {
  const int32_t a_bits = bit_cast<int32_t>(x) & 0x7fffffff;
  const int32_t limit_bits = bit_cast<int32_t>(limit);
  return bit_cast<float>(a_bits < limit_bits ? a_bits : limit_bits);
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
// (g(a) 2^48) (m 2^-48), both factors exact and normal (g(a) >= 5.5e-50 = 2^-164 above the clamp, and |m| >= 2^-78),
// so it rounds once, even where g(a) alone would be subnormal and a large m would scale up its lost bits (gelu(-14)
// is -1.09e-43, a subnormal with 7 significant bits: gelu(-14) * 300 in two steps is 41 ulp off, geglu 0.05). At the
// clamp g is taken as -0, exact as long as |g(clamp) m| is below the smallest subnormal (|m| < 2.5e4 in erf mode, 875
// in tanh mode); gelu(x) rounds to -0 there by itself.
constexpr float kProductScaleDown = 0x1p-16f;  // kScaleDown * 2^48: times_exp then leaves g(a) * 2^48
constexpr float kProductUnscale = 0x1p-48f;

GELU_HOST_DEVICE float product_from_negative_side(float x, float g_scaled, float m) {
  return x < 0.0f ? g_scaled * (m * kProductUnscale) : (x + g_scaled * kProductUnscale) * m;  // NaN x: NaN
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
  // fma(x, t, +0) is x * t rounded once, the same bits, except for a zero gate: -0 * t + 0 = +0. The product term
  // then has x m's sign at zero, and so has the sum: gelu(-0) m = -0 m, as for a nonzero gate (x * t kept -0, and
  // (-0)(-0) + (-0) = +0 lost the sign). Same operation count (an FMA for the multiply).
  return fma_f(xm, fma_f(x, t, 0.0f), 0.5f * xm);
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
// `compute_t` is the type the math runs in: float for float / half / bfloat16, double for double. Each takes its
// inputs in the op's argument order and returns one value, or a Pair for an op with two outputs. A new op is one
// more functor here plus its registration: the kernels are generic in the functor.
template <typename T>
struct Pair {
  T first;
  T second;
};

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

// bias_gelu: gelu(x + bias), the sum rounded once to compute_t (float32 for the float types: for float16 and
// bfloat16 the sum is not rounded to the half type first, unlike eager F.gelu(x + b)). The backward evaluates the
// derivative at that same rounded sum, recomputed from x and bias, so nothing but the inputs is saved. 1 add more
// than gelu per element.
template <Approximate kMode>
struct BiasGeluForward {
  template <typename compute_t>
  GELU_HOST_DEVICE static compute_t apply(compute_t x, compute_t bias) {
    return GeluForward<kMode>::apply(x + bias);
  }
};

// grad_x = grad * gelu'(x + bias). grad_bias, the sum of grad_x over the rows, is accumulated by the kernels from
// these values in compute_t, before they are rounded to the storage type.
template <Approximate kMode>
struct BiasGeluBackward {
  template <typename compute_t>
  GELU_HOST_DEVICE static compute_t apply(compute_t grad, compute_t x, compute_t bias) {
    return GeluBackward<kMode>::apply(grad, x + bias);
  }
};

// geglu: gelu(gate) * up (gelu_*_times: the product formed without a subnormal intermediate, and in erf mode from
// the series near 0), rounded once to the storage type. 4 (tanh) to 11 (erf) operations more than gelu.
template <Approximate kMode>
struct GegluForward {
  template <typename compute_t>
  GELU_HOST_DEVICE static compute_t apply(compute_t gate, compute_t up) {
    return kMode == Approximate::kTanh ? math::gelu_tanh_times(gate, up) : math::gelu_erf_times(gate, up);
  }
};

// (grad_gate, grad_up) = (grad * up * gelu'(gate), grad * gelu(gate)): both from one read of the three inputs.
template <Approximate kMode>
struct GegluBackward {
  template <typename compute_t>
  GELU_HOST_DEVICE static Pair<compute_t> apply(compute_t grad, compute_t gate, compute_t up) {
    return {GeluBackward<kMode>::apply(grad * up, gate), GegluForward<kMode>::apply(gate, grad)};
  }
};

}  // namespace gelu_ext
