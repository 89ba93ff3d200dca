"""One hidden layer solves XOR.

A 2-8-2 network (tanh hidden layer, cross-entropy, Adam) classifies all four XOR points
correctly, where a single perceptron cannot (examples/perceptron_logic.py): the hidden layer
maps the points to a space where one line separates them.

    python examples/xor_mlp.py [--device cpu|gpu|auto] [--epochs 300] [--hidden 8]

Figure: the learned decision boundary (probability of class 1 over the plane) with the points,
and the training loss.
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common


def run(epochs: int = 300, hidden: int = 8, lr: float = 0.05, device="cpu", seed: int = 0) -> dict:
    gn.manual_seed(seed)
    X, y = gn.datasets.xor()
    model = gn.nn.Sequential(gn.nn.Linear(2, hidden), gn.nn.Tanh(), gn.nn.Linear(hidden, 2)).to(device)
    opt = gn.optim.Adam(model.parameters(), lr=lr)
    history = gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt, X, y, epochs=epochs, batch_size=4,
                           progress=False, seed=seed)
    final = gn.train.evaluate(model, gn.nn.CrossEntropyLoss(), X, y)
    grid = np.linspace(-0.5, 1.5, 121, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    logits = gn.train.predict(model, np.stack([gx.ravel(), gy.ravel()], axis=1))
    p1 = gn.nn.functional.softmax(gn.tensor(logits), dim=1).numpy()[:, 1].reshape(gx.shape)
    pred = gn.train.predict(model, X).argmax(axis=1)
    return {"X": X, "y": y, "pred": pred, "accuracy": final["accuracy"], "loss": final["loss"],
            "losses": history["loss"], "grid": (gx, gy, p1), "hidden": hidden}


def report(r) -> None:
    print(f"2-{r['hidden']}-2 tanh network on XOR: accuracy {r['accuracy']:.2f}, loss {r['loss']:.4f} "
          f"after {len(r['losses'])} epochs")
    for x, t, p in zip(r["X"], r["y"], r["pred"]):
        print(f"  x = {x.astype(int).tolist()}  target {t}  predicted {p}")


def plot(r, path):
    plt = _common.pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    gx, gy, p1 = r["grid"]
    cs = ax.contourf(gx, gy, p1, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.8)
    ax.contour(gx, gy, p1, levels=[0.5], colors="k", linewidths=2)
    fig.colorbar(cs, ax=ax, label="P(class 1)")
    X, y = r["X"], r["y"]
    for cls, color, marker in ((0, "tab:blue", "o"), (1, "tab:red", "s")):
        m = y == cls
        ax.scatter(X[m, 0], X[m, 1], c=color, marker=marker, s=120, edgecolors="k", zorder=3, label=f"y = {cls}")
    ax.plot([], [], "k-", lw=2, label="boundary P = 0.5")
    ax.set(xlabel="$x_0$", ylabel="$x_1$", aspect="equal",
           title=f"XOR with one hidden layer (2-{r['hidden']}-2, tanh): accuracy {r['accuracy']:.2f}")
    ax.legend(loc="upper center", fontsize=8, ncol=3)
    ax2.semilogy(np.arange(1, len(r["losses"]) + 1), r["losses"])
    ax2.set(xlabel="epoch", ylabel="cross-entropy (training)", title="training loss")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    def extra(p):
        p.add_argument("--epochs", type=int, default=300)
        p.add_argument("--hidden", type=int, default=8)

    args, dev = _common.start("xor_mlp", __doc__.splitlines()[0], argv, extra)
    r = run(epochs=args.epochs, hidden=args.hidden, device=dev, seed=args.seed)
    report(r)
    _common.finish(args, plot, r)
    return r


if __name__ == "__main__":
    main()
