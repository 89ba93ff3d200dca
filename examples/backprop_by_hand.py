"""Backpropagation by hand: one small network's gradients computed step by step with the chain
rule in NumPy, next to gpunn's autodiff and finite differences. All three agree.

Network 3-4-2: z1 = x W1^T + b1, h = tanh(z1), z2 = h W2^T + b2, loss = mean cross-entropy of
softmax(z2) against the labels, on a batch of 5 samples, in float64. Backward pass by hand:

    dL/dz2 = (softmax(z2) - onehot(y)) / N          (softmax and cross-entropy together)
    dL/dW2 = dz2^T h          dL/db2 = sum over the batch of dz2
    dL/dh  = dz2 W2
    dL/dz1 = dL/dh * (1 - h^2)                       (tanh' = 1 - tanh^2)
    dL/dW1 = dz1^T x          dL/db1 = sum over the batch of dz1

The same weights go into gn.nn.Sequential(Linear(3, 4), Tanh(), Linear(4, 2)) (float64) through
load_state_dict; loss.backward() gives gpunn's gradients; central differences of the NumPy loss
(eps 1e-6) give the numerical ones.

    python examples/backprop_by_hand.py [--device cpu|gpu|auto]

Figure: every gradient entry by the three methods, and their differences (log scale).
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

NAMES = ("0.weight", "0.bias", "2.weight", "2.bias")  # gn's state_dict keys for W1, b1, W2, b2


def forward(params, X, y):
    W1, b1, W2, b2 = params
    z1 = X @ W1.T + b1
    h = np.tanh(z1)
    z2 = h @ W2.T + b2
    z2s = z2 - z2.max(axis=1, keepdims=True)
    p = np.exp(z2s) / np.exp(z2s).sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y]).mean())
    return loss, {"z1": z1, "h": h, "z2": z2, "p": p}


def backward_by_hand(params, X, y, cache, verbose=False):
    W1, b1, W2, b2 = params
    n = len(y)
    onehot = np.eye(W2.shape[0])[y]
    steps = []
    dz2 = (cache["p"] - onehot) / n
    steps.append(("dL/dz2 = (softmax(z2) - onehot(y)) / N", dz2))
    dW2 = dz2.T @ cache["h"]
    db2 = dz2.sum(axis=0)
    steps += [("dL/dW2 = dz2^T h", dW2), ("dL/db2 = sum_batch dz2", db2)]
    dh = dz2 @ W2
    steps.append(("dL/dh = dz2 W2", dh))
    dz1 = dh * (1 - cache["h"] ** 2)
    steps.append(("dL/dz1 = dL/dh * (1 - h^2)", dz1))
    dW1 = dz1.T @ X
    db1 = dz1.sum(axis=0)
    steps += [("dL/dW1 = dz1^T x", dW1), ("dL/db1 = sum_batch dz1", db1)]
    if verbose:
        np.set_printoptions(precision=5, suppress=True)
        for label, value in steps:
            print(f"  {label:40s} shape {value.shape}\n    " + str(value).replace("\n", "\n    "))
    return [dW1, db1, dW2, db2]


def autodiff(params, X, y, device):
    model = gn.nn.Sequential(gn.nn.Linear(3, 4, dtype=np.float64), gn.nn.Tanh(),
                             gn.nn.Linear(4, 2, dtype=np.float64))
    model.load_state_dict(dict(zip(NAMES, params)))
    model.to(device)
    loss = gn.nn.CrossEntropyLoss()(model(gn.tensor(X, device=device)), gn.tensor(y, device=device))
    loss.backward()
    grads = dict(model.named_parameters())
    return float(loss.item()), [np.asarray(grads[k].grad, dtype=np.float64) for k in NAMES]


def finite_differences(params, X, y, eps=1e-6):
    out = []
    for i, p in enumerate(params):
        g = np.zeros_like(p)
        for idx in np.ndindex(*p.shape):
            plus = [q.copy() for q in params]
            minus = [q.copy() for q in params]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            g[idx] = (forward(plus, X, y)[0] - forward(minus, X, y)[0]) / (2 * eps)
        out.append(g)
    return out


def run(device="cpu", seed: int = 0, verbose: bool = False) -> dict:
    gn.manual_seed(seed)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(5, 3))
    y = rng.integers(0, 2, size=5)
    params = [rng.normal(0, 0.8, (4, 3)), rng.normal(0, 0.1, 4), rng.normal(0, 0.8, (2, 4)), rng.normal(0, 0.1, 2)]
    loss, cache = forward(params, X, y)
    if verbose:
        print(f"forward: loss = {loss:.10f}\nbackward, step by step:")
    hand = backward_by_hand(params, X, y, cache, verbose)
    gn_loss, auto = autodiff(params, X, y, device)
    numeric = finite_differences(params, X, y)
    flat = lambda gs: np.concatenate([g.ravel() for g in gs])  # noqa: E731
    h, a, f = flat(hand), flat(auto), flat(numeric)
    return {"loss": loss, "gn_loss": gn_loss, "hand": h, "autodiff": a, "numeric": f,
            "sizes": [g.size for g in hand],
            "max_hand_vs_autodiff": float(np.abs(h - a).max()),
            "max_hand_vs_numeric": float(np.abs(h - f).max()),
            "max_autodiff_vs_numeric": float(np.abs(a - f).max())}


def report(r) -> None:
    print(f"loss: NumPy {r['loss']:.12f}, gpunn {r['gn_loss']:.12f}")
    print(f"{len(r['hand'])} gradient entries (W1 4x3, b1 4, W2 2x4, b2 2); largest differences:")
    print(f"  by hand vs gpunn autodiff:        {r['max_hand_vs_autodiff']:.1e}")
    print(f"  by hand vs finite differences:    {r['max_hand_vs_numeric']:.1e}")
    print(f"  autodiff vs finite differences:   {r['max_autodiff_vs_numeric']:.1e}")


def plot(r, path):
    plt = _common.pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    idx = np.arange(len(r["hand"]))
    ax.bar(idx, r["hand"], color="0.8", label="by hand (chain rule, NumPy)")
    ax.plot(idx, r["autodiff"], "bo", ms=6, mfc="none", label="gpunn autodiff (loss.backward())")
    ax.plot(idx, r["numeric"], "r+", ms=9, label="central finite differences")
    bounds = np.cumsum([0, *r["sizes"]])
    for b, name in zip(bounds[:-1], ("dL/dW1", "dL/db1", "dL/dW2", "dL/db2")):
        ax.axvline(b - 0.5, color="k", lw=0.8)
        ax.text(b, ax.get_ylim()[1] * 0.92 if ax.get_ylim()[1] > 0 else 0, name, fontsize=9)
    ax.set(ylabel="gradient entry", title="3-4-2 tanh network, cross-entropy: the same gradients three ways")
    ax.legend(loc="lower center", fontsize=8)
    ax.grid(alpha=0.3)
    tiny = 1e-18  # show exact agreement at the bottom of the log axis
    ax2.semilogy(idx, np.abs(r["hand"] - r["autodiff"]) + tiny, "bo", mfc="none", label="|by hand - autodiff|")
    ax2.semilogy(idx, np.abs(r["hand"] - r["numeric"]) + tiny, "r+", ms=9, label="|by hand - finite differences|")
    for b in bounds[:-1]:
        ax2.axvline(b - 0.5, color="k", lw=0.8)
    ax2.set(xlabel="gradient entry (W1 row-major, b1, W2, b2)", ylabel="absolute difference (log)",
            title="Differences: autodiff agrees to rounding (float64), finite differences to ~1e-10", ylim=(1e-19, 1e-5))
    ax2.legend(loc="upper right", fontsize=8)
    ax2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    args, dev = _common.start("backprop_by_hand", __doc__.splitlines()[0], argv)
    r = run(device=dev, seed=args.seed, verbose=True)
    report(r)
    _common.finish(args, plot, r)
    return r


if __name__ == "__main__":
    main()
