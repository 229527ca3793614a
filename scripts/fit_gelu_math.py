"""Re-derive the float coefficients of csrc/gelu_math.h (a development tool: needs numpy and mpmath).

    python scripts/fit_gelu_math.py

1. exp(r) = 1 + r (1 + r Q(r)) on |r| <= 0.3475 (ln2/2 and some slack), Q of degree 4, minimax in relative error.
2. 1/R(a) = sqrt(2 pi) a + Pg(a)/Qg(a) on a in [0, 15], R(a) = erfcx(a/sqrt 2)/2, degrees (4, 5), Pg(0) = 2 and
   Qg(0) = 1 fixed, minimax in the relative error of 1/R.
3. The tanh mode's constants 2 sqrt(2/pi) and 0.044715 as float hi + lo pairs, and ln 2's Cody-Waite split.
4. The erf mode's 16-bit evaluation (math::gelu_erf16): 2^f = 1 + f u(f) on |f| <= 1/2, u of degree 3 and 4, and
   per 16-bit format the exponents E(a) = log2 Phi(-a) = -1 + a Q(a) and D(a) = log2(gelu'(-a) / (a0 - a)) as
   polynomials in a on [0, clamp], Chebyshev least squares iterated towards minimax (Lawson), weighted so that the
   error is smaller near a = 0, where most 16-bit inputs are (E's error ~ a / (a + a1), D's ~ (a + a1)). The
   float16 fits are then tuned, a few float ulps at a time, by scripts/tune_fit16.cpp until as many of the 65,536
   results as it can make are correctly rounded (it prints the values in csrc/gelu_math.h).

Each fit is a weighted least-squares problem iterated towards minimax (Lawson's algorithm); the coefficients are then
rounded to float one at a time, highest degree first, refitting the others after each rounding, so the printed float
values are the ones whose error is reported.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np

mp.mp.dps = 40
f32 = np.float32


def lawson(columns, target, weight, iterations=200):
    """min over c of max |columns @ c - target| * weight, approximately."""
    w_lawson = np.ones(len(target)) / len(target)
    best = None
    for _ in range(iterations):
        sw = weight * np.sqrt(w_lawson)
        c, *_ = np.linalg.lstsq(columns * sw[:, None], target * sw, rcond=None)
        err = np.abs(columns @ c - target) * weight
        if best is None or err.max() < best[0]:
            best = (err.max(), c)
        w_lawson = w_lawson * (err + 1e-300)
        w_lawson /= w_lawson.sum()
    return best


def fit_exp():
    r_max = 0.3475  # ln2/2 = 0.34657 plus slack for the reduction and the low part, rounded up
    r = np.concatenate([r_max * np.cos(np.pi * (np.arange(2000) + 0.5) / 2000), [-r_max, r_max]])
    exact = np.array([float(mp.exp(mp.mpf(v))) for v in r])
    q_target = np.array([float((mp.exp(mp.mpf(v)) - 1 - v) / mp.mpf(v) ** 2) for v in r])
    fixed = {}
    for j in reversed(range(5)):
        free = [i for i in range(5) if i not in fixed]
        rest = q_target - sum(fixed[i] * r**i for i in fixed)
        _, c = lawson(np.stack([r**i for i in free], axis=1), rest, r**2 / exact)
        fixed[j] = float(f32(c[free.index(j)]))
    q = np.polyval([fixed[i] for i in reversed(range(5))], r)
    err = np.abs(r * r * q + 1 + r - exact) / exact
    print(f"exp: Q (degree 4 down to 0) = {[f'{fixed[i]:.9g}f' for i in reversed(range(5))]}, max rel {err.max():.2g}")


def fit_normal_ratio(m=4, q=5, a_max=15.0, iterations=80):
    c = float(f32(float(mp.sqrt(2 * mp.pi))))
    u = (np.cos(np.pi * (np.arange(3000) + 0.5) / 3000) + 1) / 2
    a = np.concatenate([a_max * u**1.5, [0.0, a_max]])
    inv_r = np.array([float(1 / (mp.erfc(mp.mpf(v) / mp.sqrt(2)) * mp.exp(mp.mpf(v) ** 2 / 2) / 2)) for v in a])
    g = inv_r - c * a  # G = Pg / Qg
    fixed_p, fixed_q = {0: 2.0}, {0: 1.0}

    def solve():
        q_prev, w_lawson, best = np.ones_like(a), np.ones_like(a) / len(a), None
        free_p = [j for j in range(m + 1) if j not in fixed_p]
        free_q = [j for j in range(q + 1) if j not in fixed_q]
        for _ in range(iterations):
            p_all = np.array([fixed_p.get(j, 0.0) for j in range(m + 1)])
            q_all = np.array([fixed_q.get(j, 0.0) for j in range(q + 1)])
            if free_p or free_q:  # linearized: Pg - G Qg = 0, weighted by 1 / (Qg_prev / R)
                cols = [a**j for j in free_p] + [-(g * a**j) for j in free_q]
                rhs = -sum(fixed_p[j] * a**j for j in fixed_p) + g * sum(fixed_q[j] * a**j for j in fixed_q)
                w = np.sqrt(w_lawson) / (inv_r * q_prev)
                sol, *_ = np.linalg.lstsq(np.stack(cols, axis=1) * w[:, None], rhs * w, rcond=None)
                for i, j in enumerate(free_p):
                    p_all[j] = sol[i]
                for i, j in enumerate(free_q):
                    q_all[j] = sol[len(free_p) + i]
            q_val = np.polyval(q_all[::-1], a)
            err = np.abs(np.polyval(p_all[::-1], a) / q_val - g) / inv_r
            if best is None or err.max() < best[0]:
                best = (err.max(), p_all.copy(), q_all.copy())
            q_prev, w_lawson = q_val, w_lawson * (err + 1e-300)
            w_lawson /= w_lawson.sum()
        return best

    for which, j in [("q", j) for j in range(q, 0, -1)] + [("p", j) for j in range(m, 0, -1)]:
        _, p_all, q_all = solve()
        (fixed_q if which == "q" else fixed_p)[j] = float(f32((q_all if which == "q" else p_all)[j]))
    err, p_all, q_all = solve()
    print(f"1/R = {c!r} a + Pg/Qg, max relative error of 1/R {err:.2g}")
    print("  Pg (degree 4 down to 0):", ", ".join(f"{v:.9g}f" for v in p_all[::-1]))
    print("  Qg (degree 5 down to 0):", ", ".join(f"{v:.9g}f" for v in q_all[::-1]))


def split_constants():
    constants = {
        "2 sqrt(2/pi)": 2 * mp.sqrt(2 / mp.pi),
        "0.044715": mp.mpf("0.044715"),
        "3 * 2 sqrt(2/pi) * 0.044715": 6 * mp.sqrt(2 / mp.pi) * mp.mpf("0.044715"),
        "1/sqrt(2 pi)": 1 / mp.sqrt(2 * mp.pi),
        "ln 2 - 0x1.62e4p-1": mp.log(2) - mp.mpf(0.693145751953125),
    }
    for name, value in constants.items():
        hi = f32(float(value))
        lo = f32(float(value - mp.mpf(float(hi))))
        print(f"{name}: hi {float(hi):.9g}f, lo {float(lo):.9g}f")


def _cheb_lawson(t, target, degree, weight, iterations):
    """Chebyshev coefficients of degree `degree` on t in [-1, 1], minimizing max |fit - target| * weight (Lawson)."""
    from numpy.polynomial import chebyshev

    w = np.ones_like(t)
    for _ in range(iterations):
        c = chebyshev.chebfit(t, target, degree, w=np.sqrt(w) * weight)
        err = np.abs(chebyshev.chebval(t, c) - target) * weight
        w = w * err
        w /= w.sum()
    return c, err.max()


def _monomial(cheb, hi):
    """Chebyshev coefficients in t = 2 a / hi - 1 -> monomial coefficients in a (lowest degree first)."""
    from numpy.polynomial import chebyshev, polynomial

    mono, acc, power = chebyshev.cheb2poly(cheb), np.array([0.0]), np.array([1.0])
    for k in range(len(mono)):
        acc = polynomial.polyadd(acc, mono[k] * power)
        power = polynomial.polymul(power, np.array([-1.0, 2.0 / hi]))
    return acc


def fit_exp2(degree):
    """2^f = 1 + f u(f) on |f| <= 1/2, minimax in the relative error of 2^f; u's coefficients, highest first."""
    f = np.cos(np.linspace(0, np.pi, 2000)) / 2
    f = f[np.abs(f) > 1e-9]
    u = np.array([float((mp.mpf(2) ** v - 1) / v) for v in f])
    weight = np.abs(f) / np.array([float(mp.mpf(2) ** v) for v in f])
    c, err = _cheb_lawson(f * 2, u, degree - 1, weight, 60)
    from numpy.polynomial import chebyshev

    return (chebyshev.cheb2poly(c) * 2.0 ** np.arange(degree))[::-1], err


def fit_exponent16(what, hi, degree, a1, centered=False):
    """E (what = "forward", E = -1 + a Q) or D ("derivative") on [0, hi]; coefficients highest degree first, in a or,
    if centered, in u = a - hi / 2 (bfloat16's D reaches -275 at a = 19.5: in a, its monomial terms cancel by
    thousands and float coefficients lose 2^-8 of the result; in u they stay small)."""
    sqrt2 = mp.sqrt(2)
    phi_minus = lambda a: mp.erfc(a / sqrt2) / 2  # noqa: E731  Phi(-a)
    derivative = lambda a: phi_minus(a) - a * mp.exp(-a * a / 2) / mp.sqrt(2 * mp.pi)  # noqa: E731  gelu'(-a)
    a0 = mp.findroot(derivative, 0.75)
    a = (np.cos(np.linspace(0, np.pi, 3000)) + 1) / 2 * hi
    a = a[(np.abs(a - 0.7518) > 1e-4) & (a > 1e-6)]
    if what == "forward":  # Q = (E + 1) / a, its error weighted by a + a1: E's error ~ a / (a + a1)
        target = np.array([float((mp.log(phi_minus(mp.mpf(v)), 2) + 1) / v) for v in a])
        c, err = _cheb_lawson(a / hi * 2 - 1, target, degree - 1, a + a1, 80)
    else:  # D's error weighted by 1 / (a + a1)
        target = np.array([float(mp.log(derivative(mp.mpf(v)) / (a0 - v), 2)) for v in a])
        c, err = _cheb_lawson(a / hi * 2 - 1, target, degree, 1 / (a + a1), 80)
    if centered:
        from numpy.polynomial import chebyshev

        return [float(f32(v)) for v in (chebyshev.cheb2poly(c) * (2.0 / hi) ** np.arange(len(c)))[::-1]], err, a0
    return [float(f32(v)) for v in _monomial(c, hi)[::-1]], err, a0


def fit_16bit():
    for degree in (4, 5):
        u, err = fit_exp2(degree)
        print(f"2^f, degree {degree}: u = {', '.join(f'{float(f32(v)):.9g}f' for v in u)}, max rel {err:.2g}")
    # (format, what, clamp, degree, a1, centered): float16 before tuning (scripts/tune_fit16.cpp), bfloat16 as used
    fits = [("float16", "forward", 8.0, 11, 0.3, False), ("float16", "derivative", 8.0, 11, 0.1, False),
            ("bfloat16", "forward", 15.0, 10, 0.1, False), ("bfloat16", "derivative", 19.5, 13, 3.0, True),
            ("bfloat16", "forward", 19.5, 11, 0.1, True)]  # fmt: skip  # the last: geglu's (product_exponent)
    for fmt, what, hi, degree, a1, centered in fits:
        coefficients, err, a0 = fit_exponent16(what, hi, degree, a1, centered)
        variable = f"a - {hi / 2}" if centered else "a"
        print(f"{fmt} {what} on [0, {hi}] in {variable}, degree {degree}, a1 = {a1}: weighted max error {err:.2g}")
        print("  " + " ".join(f"{v:.9g}" for v in coefficients))
    hi = f32(float(a0))
    print(f"a0 = {mp.nstr(a0, 20)}: hi {float(hi):.9g}f, lo {float(f32(float(a0 - mp.mpf(float(hi))))):.9g}f")


if __name__ == "__main__":
    fit_exp()
    fit_normal_ratio()
    split_constants()
    fit_16bit()
