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
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

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

int main(int argc, char** argv) {
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
