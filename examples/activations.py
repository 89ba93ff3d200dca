"""Activation functions and their derivatives, the derivatives taken by gpunn's autodiff.

For ReLU, Leaky ReLU, GELU, sigmoid and tanh, f'(x) comes from one backward pass
(x.grad after f(x).sum().backward(): f acts elementwise, so the gradient of the sum is f'(x)),
and is checked against central finite differences (f(x + h) - f(x - h)) / 2h in float64.
Softmax maps a vector to a vector: the figure follows p_0 = softmax([x, 0, 1])_0 as x varies
(dp_0/dx = p_0 (1 - p_0)), and the whole 3x3 Jacobian diag(p) - p p^T is checked with gn.gradcheck
and against its formula at random points.

    python examples/activations.py [--device cpu|gpu|auto]

Figure: each function and its derivative, with finite-difference points on the derivative.
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

F = gn.nn.functional
ELEMENTWISE = {
    "ReLU": F.relu,
    "Leaky ReLU (slope 0.1)": lambda t: F.leaky_relu(t, 0.1),
    "GELU": F.gelu,
    "sigmoid": F.sigmoid,
    "tanh": F.tanh,
}


def softmax_p0(t):
    """p_0 of softmax([x, 0, 1]) for each x in t (shape (n,)) -> shape (n,), differentiable in x."""
    e0 = gn.tensor(np.array([[1.0, 0.0, 0.0]]), device=t.device)
    rest = gn.tensor(np.array([[0.0, 0.0, 1.0]]), device=t.device)
    logits = t.reshape(-1, 1) * e0 + rest  # rows [x, 0, 1]
    return F.softmax(logits, dim=1)[:, 0]


def derivative(fn, x, device):
    """f(x) and f'(x) by autodiff, elementwise, float64."""
    t = gn.tensor(x, device=device, requires_grad=True)
    y = fn(t)
    y.sum().backward()
    return np.asarray(y), np.asarray(t.grad)


def finite_difference(fn, x, device, h=1e-6):
    with gn.no_grad():
        plus = np.asarray(fn(gn.tensor(x + h, device=device)))
        minus = np.asarray(fn(gn.tensor(x - h, device=device)))
    return (plus - minus) / (2 * h)


def run(points: int = 400, device="cpu", seed: int = 0) -> dict:
    gn.manual_seed(seed)
    x = np.linspace(-4.0, 4.0, points)  # float64; an even count keeps x = 0 (ReLU's kink) off the grid
    curves = {}
    for name, fn in {**ELEMENTWISE, "softmax p0 of [x, 0, 1]": softmax_p0}.items():
        y, dy = derivative(fn, x, device)
        fd = finite_difference(fn, x, device)
        curves[name] = {"y": y, "dy": dy, "fd": fd, "max_err": float(np.abs(dy - fd).max())}
    # the full softmax Jacobian at random points: gn.gradcheck, and the formula diag(p) - p p^T
    rng = np.random.default_rng(seed)
    jac_err = 0.0
    for _ in range(5):
        z = rng.normal(size=3)
        zt = gn.tensor(z[None, :], device=device, requires_grad=True)
        gn.gradcheck(lambda a: F.softmax(a, dim=1), [zt])
        p = np.exp(z - z.max())
        p /= p.sum()
        J = np.zeros((3, 3))
        for i in range(3):  # row i of the Jacobian: the gradient of p_i
            zi = gn.tensor(z[None, :], device=device, requires_grad=True)
            F.softmax(zi, dim=1)[:, i].sum().backward()
            J[i] = np.asarray(zi.grad)[0]
        jac_err = max(jac_err, float(np.abs(J - (np.diag(p) - np.outer(p, p))).max()))
    return {"x": x, "curves": curves, "softmax_jacobian_err": jac_err}


def report(r) -> None:
    print("max |autodiff - finite difference| over x in [-4, 4]:")
    for name, c in r["curves"].items():
        print(f"  {name:26s} {c['max_err']:.2e}")
    print(f"softmax Jacobian vs diag(p) - p p^T (5 random points, also gn.gradcheck): {r['softmax_jacobian_err']:.2e}")


def plot(r, path):
    plt = _common.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    x = r["x"]
    every = max(1, len(x) // 25)
    for ax, (name, c) in zip(axes.ravel(), r["curves"].items()):
        ax.plot(x, c["y"], lw=2, label="f(x)")
        ax.plot(x, c["dy"], lw=2, ls="--", label="f'(x), autodiff")
        ax.plot(x[::every], c["fd"][::every], "k.", ms=5, label="f'(x), finite differences")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.axvline(0, color="0.7", lw=0.8)
        ax.set(title=f"{name}\nmax |autodiff - FD| = {c['max_err']:.1e}", xlabel="x")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Activations and their derivatives (gpunn autodiff, checked by central differences)")
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    args, dev = _common.start("activations", __doc__.splitlines()[0], argv)
    r = run(device=dev, seed=args.seed)
    report(r)
    _common.finish(args, plot, r)
    return r


if __name__ == "__main__":
    main()
