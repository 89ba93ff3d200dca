"""Wide networks can memorise random labels, yet generalise on true ones; and their training
ends at the same low loss from every start, where narrow networks' final loss depends on the start.

One-hidden-layer ReLU networks 64-W-10 of width W = 2 .. 256 are trained on 500 of the bundled
digits (full-batch Adam, lr 0.01, the same number of steps for every width), once with the true
labels and once with the same labels shuffled among the images (so a label says nothing about its
image; chance is 10%). The universal approximation theorem says a wide enough network *can*
represent the training labels; it says nothing of what it learns: with shuffled labels, the wide
networks reach training accuracy 1.00 anyway (they memorise 500 arbitrary labels) while their test
accuracy stays at chance, and with true labels the same networks generalise (test accuracy ~0.95 on
the 360 held-out digits). The capacity to memorise is there; the data decide whether it is used.
Then every width is trained with the true labels from several random initialisations: the narrow
networks' final training losses spread widely over the starts (each start ends somewhere else),
while the wide networks' all end at about the same low loss (here: bad local minima did not stop
any wide run).

    python examples/overparameterization.py [--device cpu|gpu|auto] [--steps 400] [--starts 6]

Figure: training and test accuracy against width for true and shuffled labels; the final
training loss of every start against width.
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

F = gn.functional
WIDTHS = (2, 4, 16, 64, 256)


def train(width, X, labels, steps, lr, device, seed):
    gn.manual_seed(seed)
    model = gn.nn.Sequential(gn.nn.Linear(64, width), gn.nn.ReLU(), gn.nn.Linear(width, 10)).to(device)
    opt = gn.optim.Adam(model.parameters(), lr=lr)
    x, y = gn.tensor(X, device=device), gn.tensor(labels, device=device)
    for _ in range(steps):  # full-batch steps
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def run(widths=WIDTHS, steps: int = 400, starts: int = 6, n: int = 500, lr: float = 0.01, device="cpu",
        seed: int = 0) -> dict:
    X_train, y_train, X_test, y_test = gn.datasets.digits()
    X, y = X_train[:n], y_train[:n]
    shuffled = np.random.default_rng(seed).permutation(y)
    ce = gn.nn.CrossEntropyLoss()
    out = {"widths": tuple(widths), "steps": steps, "n": n, "n_test": len(X_test), "starts": starts,
           "chance": float(np.bincount(y_test).max() / len(y_test)),
           "shuffled_agree": float(np.mean(shuffled == y)), "labels": {}, "final_losses": {}}
    for kind, labels in (("true", y), ("shuffled", shuffled)):
        rows = []
        for w in widths:
            model = train(w, X, labels, steps, lr, device, seed * 1000)
            tr = gn.train.evaluate(model, ce, X, labels)
            te = gn.train.evaluate(model, ce, X_test, y_test)
            rows.append({"width": w, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
                         "test_accuracy": te["accuracy"]})
        out["labels"][kind] = rows
    for i, w in enumerate(widths):  # start 0 is the true-label run above
        losses = [out["labels"]["true"][i]["train_loss"]]
        for k in range(1, starts):
            losses.append(gn.train.evaluate(train(w, X, y, steps, lr, device, seed * 1000 + k), ce, X, y)["loss"])
        out["final_losses"][w] = np.array(losses)
    return out


def report(r) -> None:
    print(f"64-W-10 ReLU on {r['n']} digits, {r['steps']} full-batch Adam steps; test on {r['n_test']} held-out "
          f"digits (chance {r['chance']:.2f}); shuffled labels agree with the true ones for "
          f"{r['shuffled_agree']:.0%} of the images")
    print("  width   true labels: train acc  test acc   shuffled labels: train acc  test acc")
    for t, s in zip(r["labels"]["true"], r["labels"]["shuffled"]):
        print(f"  {t['width']:5d}                {t['train_accuracy']:.3f}     {t['test_accuracy']:.3f}"
              f"                     {s['train_accuracy']:.3f}     {s['test_accuracy']:.3f}")
    print(f"final training loss (true labels) over {r['starts']} random starts:")
    print("  width   min        median     max        max - min")
    for w, L in r["final_losses"].items():
        print(f"  {w:5d}   {L.min():.2e}   {np.median(L):.2e}   {L.max():.2e}   {L.max() - L.min():.2e}")


def plot(r, path):
    plt = _common.pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    w = np.array(r["widths"])
    for kind, color in (("true", "tab:blue"), ("shuffled", "tab:red")):
        rows = r["labels"][kind]
        ax.plot(w, [q["train_accuracy"] for q in rows], "o-", color=color, lw=2, label=f"{kind} labels: train")
        ax.plot(w, [q["test_accuracy"] for q in rows], "s--", color=color, lw=2, label=f"{kind} labels: test")
    ax.axhline(r["chance"], color="k", ls=":", lw=1, label=f"chance ({r['chance']:.2f})")
    ax.set_xscale("log", base=2)
    ax.set(xticks=w, xticklabels=[str(v) for v in w], xlabel="hidden width W (64-W-10, ReLU)",
           ylabel="accuracy", ylim=(0, 1.03),
           title=f"Memorising shuffled labels: train accuracy 1, test at chance\n({r['n']} digits, "
                 f"{r['steps']} full-batch Adam steps)")
    ax.legend(fontsize=9, loc="center right")
    ax.grid(alpha=0.3)
    for i, (width, L) in enumerate(r["final_losses"].items()):
        jitter = np.linspace(-0.12, 0.12, len(L))
        ax2.scatter(width * 2 ** jitter, L, color="tab:blue", edgecolors="k", zorder=3,
                    label=f"one random start ({r['starts']} per width)" if i == 0 else None)
        ax2.annotate(f"max - min\n{L.max() - L.min():.1e}", (width, L.max()), textcoords="offset points",
                     xytext=(0, 10), ha="center", fontsize=8)
    ax2.set_xscale("log", base=2)
    top = max(L.max() for L in r["final_losses"].values())
    ax2.set(xticks=w, xticklabels=[str(v) for v in w], xlabel="hidden width W", ylim=(-0.03 * top, 1.25 * top),
            ylabel="final training loss (cross-entropy)",
            title="Final training loss from random starts (true labels)")
    ax2.legend(fontsize=9)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    def extra(p):
        p.add_argument("--steps", type=int, default=400)
        p.add_argument("--starts", type=int, default=6)

    args, dev = _common.start("overparameterization", __doc__.splitlines()[0], argv, extra)
    r = run(steps=args.steps, starts=args.starts, device=dev, seed=args.seed)
    report(r)
    _common.finish(args, plot, r)
    return r


if __name__ == "__main__":
    main()
