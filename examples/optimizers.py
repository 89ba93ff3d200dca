"""SGD, SGD with momentum and Adam on the spirals: Adam reaches a given loss in fewer steps.

The same 2-64-64-3 ReLU network (same initial weights, same batches) is trained on three-arm
spirals by three optimizers: plain SGD (lr 0.05), SGD with momentum 0.9 at the same lr, and
Adam (lr 0.01, its usual setting). Each run counts the optimizer steps until the training loss
(the mean over an epoch) first falls to the target. Momentum accumulates the gradients' consistent
direction (up to 1 / (1 - 0.9) = 10 times the step of plain SGD); Adam also rescales every
parameter's step by its gradient's running magnitude, so parameters with small gradients move as
fast as those with large ones.

    python examples/optimizers.py [--device cpu|gpu|auto] [--epochs 150] [--target 0.3]

Figure: training loss against optimizer steps, the target, and the decision regions each optimizer
has reached at the end.
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

OPTIMIZERS = {
    "SGD (lr 0.05)": lambda p: gn.optim.SGD(p, lr=0.05),
    "SGD + momentum 0.9 (lr 0.05)": lambda p: gn.optim.SGD(p, lr=0.05, momentum=0.9),
    "Adam (lr 0.01)": lambda p: gn.optim.Adam(p, lr=0.01),
}


def run(epochs: int = 150, n: int = 600, target: float = 0.3, batch_size: int = 32, device="cpu",
        seed: int = 0) -> dict:
    X, y = gn.datasets.spirals(n=n, classes=3, noise=0.2, seed=seed)
    steps_per_epoch = -(-n // batch_size)
    out = {"target": target, "steps_per_epoch": steps_per_epoch, "X": X, "y": y, "runs": {}}
    grid = np.linspace(-1.2, 1.2, 121, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    for name, make in OPTIMIZERS.items():
        gn.manual_seed(seed)  # the same initial weights for every optimizer
        model = gn.nn.Sequential(gn.nn.Linear(2, 64), gn.nn.ReLU(), gn.nn.Linear(64, 64), gn.nn.ReLU(),
                                 gn.nn.Linear(64, 3)).to(device)
        opt = make(model.parameters())
        hist = gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt, X, y, epochs=epochs, batch_size=batch_size,
                            progress=False, seed=seed)  # the same batches for every optimizer
        losses = np.asarray(hist["loss"])
        hit = np.flatnonzero(losses <= target)
        regions = gn.train.predict(model, np.stack([gx.ravel(), gy.ravel()], 1)).argmax(1).reshape(gx.shape)
        out["runs"][name] = {
            "losses": losses, "accuracy": hist["accuracy"][-1],
            "steps_to_target": int((hit[0] + 1) * steps_per_epoch) if len(hit) else None,
            "regions": (gx, gy, regions),
        }
    return out


def report(r) -> None:
    print(f"steps until the epoch-mean training loss <= {r['target']} ({r['steps_per_epoch']} steps per epoch):")
    for name, d in r["runs"].items():
        s = d["steps_to_target"]
        reached = f"{s:5d} steps" if s is not None else "not reached"
        print(f"  {name:30s} {reached};  final loss {d['losses'][-1]:.3f}, accuracy {d['accuracy']:.3f}")


def plot(r, path):
    plt = _common.pyplot()
    runs = r["runs"]
    fig = plt.figure(figsize=(14, 7.5))
    ax = fig.add_subplot(2, 1, 1)
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for c, (name, d) in zip(colors, runs.items()):
        steps = np.arange(1, len(d["losses"]) + 1) * r["steps_per_epoch"]
        s = d["steps_to_target"]
        ax.semilogy(steps, d["losses"], color=c, lw=2,
                    label=f"{name}: {'target at step ' + str(s) if s else 'target not reached'}")
        if s:
            ax.plot([s], [d["losses"][s // r["steps_per_epoch"] - 1]], "o", color=c, ms=8)
    ax.axhline(r["target"], color="k", ls="--", lw=1, label=f"target loss {r['target']}")
    ax.set(xlabel="optimizer step", ylabel="training loss (epoch mean, log scale)",
           title="Spirals (3 arms), 2-64-64-3 ReLU: steps to reach the target loss")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3, which="both")
    X, y = r["X"], r["y"]
    for i, (c, (name, d)) in enumerate(zip(colors, runs.items())):
        a = fig.add_subplot(2, 3, 4 + i)
        gx, gy, reg = d["regions"]
        a.contourf(gx, gy, reg, levels=[-0.5, 0.5, 1.5, 2.5], colors=["#c6dbef", "#fdd0a2", "#c7e9c0"])
        for k, kc in enumerate(("tab:blue", "tab:orange", "tab:green")):
            a.scatter(X[y == k, 0], X[y == k, 1], color=kc, s=5, label=f"arm {k}")
        a.set(title=f"{name}: decision regions\nafter {len(d['losses'])} epochs, accuracy {d['accuracy']:.3f}",
              xlabel="$x_0$", ylabel="$x_1$", aspect="equal")
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    def extra(p):
        p.add_argument("--epochs", type=int, default=150)
        p.add_argument("--target", type=float, default=0.3)

    args, dev = _common.start("optimizers", __doc__.splitlines()[0], argv, extra)
    r = run(epochs=args.epochs, target=args.target, device=dev, seed=args.seed)
    report(r)
    _common.finish(args, plot, r)
    return r


if __name__ == "__main__":
    main()
