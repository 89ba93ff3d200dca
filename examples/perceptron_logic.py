"""A single perceptron learns AND and OR, and cannot learn XOR.

Rosenblatt's rule (gn.nn.Perceptron.fit) converges on linearly separable data: AND and OR end
with no mistakes and accuracy 1.0. XOR is not linearly separable: the rule keeps making mistakes
every epoch, and any line classifies at most 3 of its 4 points (accuracy <= 0.75); a scan of
many random lines shows that bound is reached and never passed.

    python examples/perceptron_logic.py [--device cpu|gpu|auto] [--epochs 50]

Figure: the four points of each gate, the learned line w.x + b = 0 with the region it calls 1,
and the mistakes per epoch.
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

GATES = {"AND": gn.datasets.and_gate, "OR": gn.datasets.or_gate, "XOR": gn.datasets.xor}


def best_line_accuracy(X, y, lines: int = 20000, seed: int = 0) -> float:
    """The best accuracy of `lines` random lines w.x + b > 0 (either orientation) on (X, y)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(lines, 2))
    b = rng.normal(size=(lines, 1))
    pred = (w @ X.T.astype(np.float64) + b) > 0  # (lines, points)
    acc = (pred == (y == 1)).mean(axis=1)
    return float(np.maximum(acc, 1 - acc).max())  # a line and its flip


def run(epochs: int = 50, device="cpu", seed: int = 0) -> dict:
    gn.manual_seed(seed)
    out = {}
    for name, make in GATES.items():
        X, y = make()
        p = gn.nn.Perceptron(2, device=device)
        mistakes, lines = [], []
        for _ in range(epochs):  # one epoch at a time (fit continues from the current weights)
            mistakes += p.fit(X, y, epochs=1, lr=1.0)  # sample order from gn's seeded generator
            lines.append((np.asarray(p.weight).reshape(-1).astype(np.float64), float(np.asarray(p.bias)[0])))
            if mistakes[-1] == 0:
                break
        out[name] = {
            "lines": lines,
            "X": X, "y": y,
            "weight": np.asarray(p.weight).reshape(-1).astype(np.float64),
            "bias": float(np.asarray(p.bias).reshape(-1)[0]),
            "mistakes": mistakes,
            "accuracy": p.score(X, y),
            "converged": bool(mistakes) and mistakes[-1] == 0,
            "best_line_accuracy": best_line_accuracy(X, y, seed=seed),
        }
    return out


def report(result) -> None:
    for name, r in result.items():
        w, b = r["weight"], r["bias"]
        state = (f"converged after {len(r['mistakes'])} epochs" if r["converged"]
                 else f"still {r['mistakes'][-1]} mistake(s) in epoch {len(r['mistakes'])}")
        print(f"{name:3s}: accuracy {r['accuracy']:.2f}  ({state}); line {w[0]:+.1f} x0 {w[1]:+.1f} x1 {b:+.1f} = 0; "
              f"best of 20000 random lines: {r['best_line_accuracy']:.2f}")


def plot(result, path):
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    grid = np.linspace(-0.5, 1.5, 201)
    gx, gy = np.meshgrid(grid, grid)
    for ax, (name, r) in zip(axes, result.items()):
        w, b, X, y = r["weight"], r["bias"], r["X"], r["y"]
        if not r["converged"]:  # the rule keeps moving the line: show its last few positions
            for i, (wi, bi) in enumerate(r["lines"][-6:-1]):
                if abs(wi[1]) > 1e-12:
                    ax.plot(grid, -(wi[0] * grid + bi) / wi[1], color="0.5", lw=0.8, ls="--",
                            label="earlier epochs' lines" if i == 0 else None)
        region = (w[0] * gx + w[1] * gy + b) > 0
        ax.contourf(gx, gy, region.astype(float), levels=[-0.5, 0.5, 1.5], colors=["#dde8f6", "#f8ddd5"])
        if abs(w[1]) > 1e-12:
            ax.plot(grid, -(w[0] * grid + b) / w[1], "k-", lw=1.5, label="w.x + b = 0")
        elif abs(w[0]) > 1e-12:
            ax.axvline(-b / w[0], color="k", lw=1.5, label="w.x + b = 0")
        for cls, color, marker in ((0, "tab:blue", "o"), (1, "tab:red", "s")):
            m = y == cls
            ax.scatter(X[m, 0], X[m, 1], c=color, marker=marker, s=90, edgecolors="k", zorder=3, label=f"y = {cls}")
        ax.set(xlim=(-0.5, 1.5), ylim=(-0.5, 1.5), xlabel="$x_0$", ylabel="$x_1$", aspect="equal",
               title=f"{name}: accuracy {r['accuracy']:.2f}" + ("" if r["converged"] else " (not converged)"))
        ax.legend(loc="upper left", fontsize=7, framealpha=0.9)
    ax = axes[3]
    for name, r in result.items():
        ax.plot(np.arange(1, len(r["mistakes"]) + 1), r["mistakes"], marker=".", label=name)
    ax.set(xlabel="epoch", ylabel="mistakes in the epoch (of 4)", title="perceptron rule: mistakes per epoch",
           ylim=(-0.2, 4.2))
    ax.legend()
    fig.suptitle("One perceptron: AND and OR are learned, XOR is not (no line separates it)")
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    return _common.run_example("perceptron_logic", __doc__, run, report, plot, argv, epochs=50)


if __name__ == "__main__":
    main()
