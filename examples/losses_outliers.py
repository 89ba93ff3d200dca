"""Linear regression with outliers: MAE (L1Loss) stays near the true line, MSE is pulled away.

Data: y = 2x + 1 plus small noise, with 10% of the points (all at the right end, x > 0.5)
moved 6 units down. A Linear(1, 1) model is fit to the same data with nn.MSELoss and with
nn.L1Loss (full batch, Adam, cosine-annealed rate). MSE minimises the mean of squared residuals,
so the few large residuals dominate and tilt the line towards the outliers; MAE grows only
linearly with a residual and fits (roughly) the conditional median, which the outliers barely move.

    python examples/losses_outliers.py [--device cpu|gpu|auto] [--epochs 600]

Figure: the data, the true line and both fits; the residuals under each fit.
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

TRUE_SLOPE, TRUE_INTERCEPT = 2.0, 1.0


def make_data(n: int, outlier_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    y = TRUE_SLOPE * x + TRUE_INTERCEPT + rng.normal(0, 0.1, n)
    right = np.flatnonzero(x > 0.5)
    out = rng.choice(right, size=min(len(right), int(round(outlier_fraction * n))), replace=False)
    y[out] -= 6.0
    is_out = np.zeros(n, bool)
    is_out[out] = True
    return x.astype(np.float32).reshape(-1, 1), y.astype(np.float32).reshape(-1, 1), is_out


def fit_line(loss_fn, X, Y, epochs, device, seed):
    gn.manual_seed(seed)
    model = gn.nn.Linear(1, 1).to(device)
    opt = gn.optim.Adam(model.parameters(), lr=0.05)
    sched = gn.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gn.train.fit(model, loss_fn, opt, X, Y, epochs=epochs, batch_size=len(X), scheduler=sched,
                 progress=False, seed=seed)
    return float(np.asarray(model.weight).ravel()[0]), float(np.asarray(model.bias).ravel()[0])


def run(n: int = 200, epochs: int = 600, outlier_fraction: float = 0.1, device="cpu", seed: int = 0) -> dict:
    X, Y, is_out = make_data(n, outlier_fraction, seed)
    fits = {"MSE": fit_line(gn.nn.MSELoss(), X, Y, epochs, device, seed),
            "MAE": fit_line(gn.nn.L1Loss(), X, Y, epochs, device, seed)}
    grid = np.linspace(-1, 1, 5)
    true = TRUE_SLOPE * grid + TRUE_INTERCEPT
    ols = np.polyfit(X.ravel().astype(np.float64), Y.ravel().astype(np.float64), 1)  # what MSE should reach
    out = {"X": X, "Y": Y, "is_outlier": is_out, "fits": fits, "least_squares": (float(ols[0]), float(ols[1]))}
    for name, (w, b) in fits.items():
        # how far the fitted line is from the true one, on average over x in [-1, 1]
        out[f"{name}_line_error"] = float(np.abs(w * grid + b - true).mean())
    return out


def report(r) -> None:
    print(f"{int(r['is_outlier'].sum())} outliers among {len(r['X'])} points; true line y = {TRUE_SLOPE:g} x + {TRUE_INTERCEPT:g}")
    for name, (w, b) in r["fits"].items():
        print(f"  {name}: y = {w:.3f} x + {b:.3f}   mean distance from the true line on [-1, 1]: "
              f"{r[name + '_line_error']:.3f}")
    w, b = r["least_squares"]
    print(f"  (closed-form least squares, which the MSE fit should match: y = {w:.3f} x + {b:.3f})")


def plot(r, path):
    plt = _common.pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    X, Y, o = r["X"].ravel(), r["Y"].ravel(), r["is_outlier"]
    ax.scatter(X[~o], Y[~o], s=12, c="0.4", label="data")
    ax.scatter(X[o], Y[o], s=30, c="tab:red", marker="x", label="outliers")
    g = np.linspace(-1, 1, 50)
    ax.plot(g, TRUE_SLOPE * g + TRUE_INTERCEPT, "k--", lw=1.5, label=f"true: y = {TRUE_SLOPE:g}x + {TRUE_INTERCEPT:g}")
    colors = {"MSE": "tab:orange", "MAE": "tab:blue"}
    for name, (w, b) in r["fits"].items():
        ax.plot(g, w * g + b, color=colors[name], lw=2.5, label=f"{name} fit: y = {w:.2f}x + {b:.2f}")
    ax.set(xlabel="x", ylabel="y", title="Linear regression with 10% outliers")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    bins = np.linspace(-7, 3, 41)
    for name, (w, b) in r["fits"].items():
        ax2.hist(Y - (w * X + b), bins=bins, alpha=0.6, color=colors[name], label=f"{name} fit")
    ax2.set(xlabel="residual y - fit(x)", ylabel="points", title="Residuals: MAE keeps the inliers' residuals near 0")
    ax2.legend()
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    return _common.run_example("losses_outliers", __doc__, run, report, plot, argv, epochs=600)


if __name__ == "__main__":
    main()
