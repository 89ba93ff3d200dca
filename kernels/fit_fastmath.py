"""Where gpunn/kernels/fastmath.py's polynomial coefficients come from (a development script: it
needs scipy and mpmath, which gpunn does not depend on).

    python kernels/fit_fastmath.py

float32: minimax by Lawson's algorithm (iteratively reweighted least squares) on the relative error
(the absolute error weighted by erfc for erf's large-argument branch); each coefficient is rounded
to float32 from the lowest power up and the higher ones refitted, so the rounding is absorbed.
float64: exp uses Taylor coefficients 1/k!; tanh's small-argument polynomial is mpmath's Chebyshev
fit. The printed errors are the approximations' own; the end-to-end figures (with float32
rounding) are measured by tests/test_fastmath.py.
"""
from __future__ import annotations

import mpmath as mp
import numpy as np
from scipy import special as sp


def lawson(basis, target, weight, iters=60):
    """Coefficients minimising max |weight * (basis @ c - target)| (approximately)."""
    A, b = basis * weight[:, None], target * weight
    w = np.ones(len(b))
    for _ in range(iters):
        c, *_ = np.linalg.lstsq(A * np.sqrt(w)[:, None], b * np.sqrt(w), rcond=None)
        e = np.abs(A @ c - b)
        w = w * e
        w /= w.sum()
    return c


def fit_rounded(powers, target, weight, x):
    """float32 coefficients of x**powers fitting target, rounded one by one and the rest refitted."""
    coefs = []
    for i in range(len(powers)):
        resid = target - sum(c * x**p for c, p in zip(coefs, powers))
        c = lawson(np.stack([x**p for p in powers[i:]], 1), resid, weight)
        coefs.append(float(np.float32(c[0])))
    err = np.abs((target - sum(c * x**p for c, p in zip(coefs, powers))) * weight).max()
    return coefs, err


def main():
    r = np.cos(np.linspace(0, np.pi, 20001)) * 0.3466 * 1.01
    r = r[np.abs(r) > 1e-6]
    c, e = fit_rounded(list(range(2, 7)), np.expm1(r) - r, np.exp(-r), r)
    print("exp float32, e^r = 1 + r + sum c_k r^k, k = 2..6:", c, f"rel. error {e:.2g}")

    x = np.linspace(1e-4, 0.5501, 20001)
    c, e = fit_rounded([3, 5, 7, 9, 11], np.tanh(x) - x, 1 / np.tanh(x), x)
    print("tanh float32, |x| < 0.55, tanh x = x + sum c_k x^(2k+1):", c, f"rel. error {e:.2g}")

    x = np.linspace(1e-4, 0.93, 20001)
    c, e = fit_rounded([1 + 2 * k for k in range(6)], sp.erf(x) - x, 1 / sp.erf(x), x)
    print("erf float32, |x| < 0.92, erf x = x + sum c_k x^(2k+1):", c, f"rel. error {e:.2g}")

    t = np.linspace(0.9, 4.0, 20001)
    c, e = fit_rounded(list(range(7)), np.log(sp.erfc(t)), sp.erfc(t) / 2.0**-24, t)
    print("erf float32, 0.92 <= t <= 4, log erfc t = sum c_k t^k:", c, f"error reaching erf {e:.2g} ulp")

    mp.mp.dps = 40
    s_max = mp.mpf("0.5501") ** 2

    def g(s):
        return mp.mpf(-1) / 3 if s == 0 else (mp.tanh(mp.sqrt(s)) / mp.sqrt(s) - 1) / s

    poly, err = mp.chebyfit(g, [0, s_max], 11, error=True)
    print("tanh float64, |x| < 0.55, tanh x = x + x^3 sum c_k x^(2k):", [float(v) for v in poly[::-1]],
          f"rel. error {float(err * s_max):.2g}")


if __name__ == "__main__":
    main()
