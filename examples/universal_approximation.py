"""One hidden layer approximates a continuous function; the error falls with width; depth helps.

Target: f(x) = sin(x) + 0.5 sin(3x) + 0.25 sin(5x) on [-pi, pi] (128 training points; the error
is the mean squared error on 1000 points between them). Networks 1-W-1 with one GELU hidden layer
of width W = 2, 4, ..., 256 are trained the same way: full-batch Adam (lr 0.03, cosine-annealed)
for a fixed number of steps. The universal approximation theorem says a wide enough hidden layer
can fit f as closely as we like. Two initialisations of the hidden layer are compared:
- PyTorch's default (gn.nn.Linear's): the error falls by more than an order of magnitude from
  W = 2 to the wide layers, then levels off where this many Adam steps stop making progress;
- "spread": each hidden unit's transition w x + b = 0 placed uniformly in [-pi, pi], with slopes
  |w| up to 4 (set with gn.nn.init), so the units tile the input range from the start, as the
  theorem's constructions do: the error falls steadily with width, by two to three orders of
  magnitude.

Then a deeper network, 1-8-8-8-1 (three GELU hidden layers, 169 parameters), is trained with the
default recipe against a one-hidden-layer network with the same parameter count (1-56-1, 169
parameters): the deeper one fits better. (That is the same recipe at the same size; the spread
initialisation lets a single layer catch up on this smooth 1-D target, so here depth buys
trainability more than capacity.)

    python examples/universal_approximation.py [--device cpu|gpu|auto] [--steps 3000]

Figure: the fits of a few widths, the deep and shallow fits at equal size, and error vs width.
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

WIDTHS = (2, 4, 8, 16, 32, 64, 128, 256)


def target(x):
    return np.sin(x) + 0.5 * np.sin(3 * x) + 0.25 * np.sin(5 * x)


def mlp(hidden):
    """1 -> hidden[0] -> ... -> hidden[-1] -> 1 with GELU after each hidden layer."""
    sizes = (1, *hidden)
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [gn.nn.Linear(a, b), gn.nn.GELU()]
    return gn.nn.Sequential(*layers, gn.nn.Linear(sizes[-1], 1))


def spread_first_layer(layer, slope: float = 4.0):
    """Units with transitions w x + b = 0 uniform in [-pi, pi] and slopes w uniform in [-slope, slope]."""
    gn.nn.init.uniform_(layer.weight, -slope, slope)
    gn.nn.init.uniform_(layer.bias, -np.pi, np.pi)  # the transition points c ...
    with gn.no_grad():
        layer.bias.data[...] = -layer.weight.data[:, 0] * layer.bias.data  # ... give b = -w c
    return layer


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train(model, X, Y, steps, lr, device):
    model.to(device)
    opt = gn.optim.Adam(model.parameters(), lr=lr)
    sched = gn.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = gn.nn.MSELoss()
    x, y = gn.tensor(X, device=device), gn.tensor(Y, device=device)
    for _ in range(steps):  # the step under gn.train.fit, written out
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
    return model


def run(widths=WIDTHS, steps: int = 3000, lr: float = 0.03, deep=(8, 8, 8), device="cpu", seed: int = 0) -> dict:
    X = np.linspace(-np.pi, np.pi, 128, dtype=np.float32).reshape(-1, 1)
    Y = target(X).astype(np.float32)
    Xt = np.linspace(-np.pi, np.pi, 1000, dtype=np.float32).reshape(-1, 1)
    Yt = target(Xt.astype(np.float64))

    def fit_and_score(hidden, spread=False):
        gn.manual_seed(seed)
        model = mlp(hidden)
        if spread:
            spread_first_layer(model[0])
        model = train(model, X, Y, steps, lr, device)
        pred = gn.train.predict(model, Xt).astype(np.float64)
        return {"hidden": tuple(hidden), "params": n_params(model), "mse": float(np.mean((pred - Yt) ** 2)),
                "pred": pred.ravel()}

    shallow = [fit_and_score((w,)) for w in widths]
    spread = [fit_and_score((w,), spread=True) for w in widths]
    deep_fit = fit_and_score(deep)
    same = max(1, round((deep_fit["params"] - 1) / 3))  # 1-W-1 has 3W + 1 parameters
    same_fit = fit_and_score((same,))
    return {"x": Xt.ravel(), "y": Yt.ravel(), "x_train": X.ravel(), "shallow": shallow, "spread": spread, "deep": deep_fit,
            "same_size_shallow": same_fit, "steps": steps}


def report(r) -> None:
    print(f"target sin(x) + 0.5 sin(3x) + 0.25 sin(5x); {r['steps']} full-batch Adam steps per network")
    print("one hidden layer: width -> test MSE    default init   spread init")
    for s, t in zip(r["shallow"], r["spread"]):
        print(f"  {s['hidden'][0]:4d} ({s['params']:4d} parameters)            {s['mse']:.2e}       {t['mse']:.2e}")
    d, s = r["deep"], r["same_size_shallow"]
    print(f"same parameter count: deep 1-{'-'.join(map(str, d['hidden']))}-1 ({d['params']} parameters) {d['mse']:.2e}  vs  "
          f"shallow 1-{s['hidden'][0]}-1 ({s['params']} parameters) {s['mse']:.2e}  "
          f"({s['mse'] / d['mse']:.1f}x lower error with depth)")


def plot(r, path):
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    ax.plot(r["x"], r["y"], "k-", lw=3, alpha=0.35, label="target f(x)")
    shown = [s for s in r["spread"] if s["hidden"][0] in (2, 4, 16, 256)] or r["spread"]
    for s in shown:
        ax.plot(r["x"], s["pred"], lw=1.3, label=f"width {s['hidden'][0]}: MSE {s['mse']:.1e}")
    ax.set(xlabel="x", ylabel="y", title="One hidden layer (GELU, spread init) of growing width")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    d, s = r["deep"], r["same_size_shallow"]
    ax.plot(r["x"], r["y"], "k-", lw=3, alpha=0.35, label="target f(x)")
    ax.plot(r["x"], s["pred"], lw=1.5, label=f"1-{s['hidden'][0]}-1 ({s['params']} params): MSE {s['mse']:.1e}")
    ax.plot(r["x"], d["pred"], lw=1.5,
            label=f"1-{'-'.join(map(str, d['hidden']))}-1 ({d['params']} params): MSE {d['mse']:.1e}")
    ax.set(xlabel="x", ylabel="y", title="Same parameter count, default init: one hidden layer vs three")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[2]
    w = [q["hidden"][0] for q in r["shallow"]]
    ax.loglog(w, [q["mse"] for q in r["shallow"]], "o-", label="one hidden layer, default init")
    ax.loglog(w, [q["mse"] for q in r["spread"]], "s-", label="one hidden layer, spread init")
    ax.loglog([s["hidden"][0]], [d["mse"]], "r*", ms=14,
              label=f"three hidden layers, default init, {d['params']} params\n(at the 1-W-1 width of equal size)")
    ax.set(xlabel="hidden width W", ylabel="test MSE (log)", title="Error vs width")
    ax.set_xticks(w)
    ax.set_xticklabels([str(v) for v in w])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    return _common.run_example("universal_approximation", __doc__, run, report, plot, argv, steps=3000)


if __name__ == "__main__":
    main()
