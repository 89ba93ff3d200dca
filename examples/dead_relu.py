"""Dying ReLUs: a too-large learning rate leaves ReLU units dead for every input;
Leaky ReLU and GELU keep theirs alive.

A 2-64-64-2 network is trained on the moons with Adam, once at a sensible rate (3e-3) and once at
a too-large one (0.1), with ReLU, Leaky ReLU (slope 0.01) and GELU. A hidden unit is *dead* when
its activation's derivative is zero (|f'(z)| < 1e-6) for every training input: then no gradient
reaches its incoming weights, so training can never bring it back. The derivative f'(z) is taken
with gpunn's autodiff on each layer's pre-activations z (read with model[:k], a slice of the
Sequential). Large steps throw many ReLU units' pre-activations below zero for all inputs, and
there they stay. Leaky ReLU's derivative is never below its slope and GELU's is zero only at one
point, so their units keep a gradient even when the large rate has pushed them below zero for
every input ("silent"): trained on at the sensible rate, some silent Leaky ReLU and GELU units
come back, while the dead ReLU units (almost) never do.

    python examples/dead_relu.py [--device cpu|gpu|auto] [--epochs 20]

Figure: the fraction of dead units per activation and rate, and each unit's largest pre-activation
over the inputs (a dead ReLU unit's is <= 0).
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

ACTIVATIONS = {"ReLU": gn.nn.ReLU, "Leaky ReLU": lambda: gn.nn.LeakyReLU(0.01), "GELU": gn.nn.GELU}
RATES = {"sensible lr 3e-3": 3e-3, "too large lr 0.1": 0.1}
HIDDEN = (1, 3)  # model[:1] and model[:3] give the two hidden layers' pre-activations


def model_for(act, device):
    return gn.nn.Sequential(gn.nn.Linear(2, 64), act(), gn.nn.Linear(64, 64), act(), gn.nn.Linear(64, 2)).to(device)


def unit_stats(model, act, X):
    """Per hidden unit: the largest pre-activation over X and the largest |f'(z)| (by autodiff)."""
    zmax, gmax = [], []
    for k in HIDDEN:
        z = gn.train.predict(model[:k], X).astype(np.float64)  # (inputs, units) pre-activations
        zt = gn.tensor(z, requires_grad=True)
        act()(zt).sum().backward()  # elementwise: zt.grad = f'(z)
        zmax.append(z.max(axis=0))
        gmax.append(np.abs(np.asarray(zt.grad)).max(axis=0))
    return np.concatenate(zmax), np.concatenate(gmax)


def train(model, X, y, lr, epochs, seed):
    opt = gn.optim.Adam(model.parameters(), lr=lr)
    return gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt, X, y, epochs=epochs, batch_size=32,
                        progress=False, seed=seed)


def run(epochs: int = 20, n: int = 500, device="cpu", seed: int = 0) -> dict:
    X, y = gn.datasets.moons(n=n, noise=0.1, seed=seed)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    out = {"runs": {}, "epochs": epochs}
    for aname, act in ACTIVATIONS.items():
        for rname, lr in RATES.items():
            gn.manual_seed(seed)  # the same initial weights for every run
            model = model_for(act, device)
            hist = train(model, X, y, lr, epochs, seed)
            zmax, gmax = unit_stats(model, act, X)
            run_ = {"lr": lr, "accuracy": hist["accuracy"][-1], "zmax": zmax, "gmax": gmax,
                    "dead": float(np.mean(gmax < 1e-6)), "silent": float(np.mean(zmax <= 0))}
            if lr == max(RATES.values()):  # then train on at a sensible rate: do silenced units come back?
                train(model, X, y, min(RATES.values()), epochs, seed + 1)
                zmax2, gmax2 = unit_stats(model, act, X)
                was = zmax <= 0
                run_["revived"] = float(np.mean(zmax2[was] > 0)) if was.any() else float("nan")
                run_["dead_after"] = float(np.mean(gmax2 < 1e-6))
            out["runs"][(aname, rname)] = run_
    return out


def report(r) -> None:
    print(f"2-64-64-2 on moons, Adam, {r['epochs']} epochs; 128 hidden units")
    print("activation   rate               accuracy  dead (no gradient for any input)  silent (z <= 0 for all)")
    for (aname, rname), d in r["runs"].items():
        print(f"{aname:12s} {rname:18s} {d['accuracy']:.3f}     {d['dead']:6.1%}                            {d['silent']:6.1%}")
    print(f"after {r['epochs']} more epochs at lr 3e-3, of the units the large rate had silenced:")
    for (aname, rname), d in r["runs"].items():
        if "revived" in d:
            print(f"  {aname:12s} {d['revived']:6.1%} came back (dead now: {d['dead_after']:.1%})")


def plot(r, path):
    plt = _common.pyplot()
    fig, (ax, ax3, ax2) = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [3, 2, 3]})
    names = list(ACTIVATIONS)
    small, big = min(RATES, key=RATES.get), max(RATES, key=RATES.get)
    xs = np.arange(len(names))
    bars = [("dead", small, "tab:blue", None, f"dead, {small}"), ("dead", big, "tab:red", None, f"dead, {big}"),
            ("silent", big, "white", "//", f"silent (z <= 0 for all inputs), {big}")]
    for i, (key, rname, color, hatch, label) in enumerate(bars):
        vals = [r["runs"][(a, rname)][key] for a in names]
        bs = ax.bar(xs + (i - 1) * 0.27, vals, 0.27, color=color, hatch=hatch, edgecolor="k", label=label)
        for b, v in zip(bs, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.0%}", ha="center", fontsize=8)
    ax.set(xticks=xs, xticklabels=names, ylabel="fraction of the 128 hidden units",
           title="Dead units: zero derivative for every training input", ylim=(0, 1))
    ax.legend(fontsize=8)
    vals = [r["runs"][(a, big)].get("revived", np.nan) for a in names]
    bs = ax3.bar(xs, vals, 0.5, color=["tab:red", "tab:purple", "tab:green"])
    for b, v in zip(bs, vals):
        ax3.text(b.get_x() + b.get_width() / 2, (0 if np.isnan(v) else v) + 0.01, f"{v:.0%}", ha="center", fontsize=9)
    ax3.set(xticks=xs, xticklabels=names, ylim=(0, 1), ylabel="fraction of the silenced units",
            title=f"Silenced by {big}, active again after\n{r['epochs']} more epochs at {small}")
    for aname, color in zip(names, ("tab:red", "tab:purple", "tab:green")):
        z = np.sort(r["runs"][(aname, big)]["zmax"])
        ax2.plot(np.arange(len(z)), z, ".", color=color, label=f"{aname}, {big}")
    z = np.sort(r["runs"][("ReLU", small)]["zmax"])
    ax2.plot(np.arange(len(z)), z, ".", color="tab:blue", label=f"ReLU, {small}")
    ax2.axhline(0, color="k", lw=1)
    ax2.set_yscale("symlog", linthresh=1)
    ax2.set(xlabel="hidden unit (sorted)", ylabel="largest pre-activation over the inputs",
            title="Below 0: silent for every input (dead, if ReLU)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    return _common.run_example("dead_relu", __doc__, run, report, plot, argv, epochs=20)


if __name__ == "__main__":
    main()
