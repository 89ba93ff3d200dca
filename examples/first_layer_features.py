"""The first layer learns stroke- and edge-like filters; the second layer's units combine many of them.

A 64-32-32-10 ReLU network is trained on the bundled 8x8 digits (Adam, lr 3e-3, 40 epochs). Each
first-layer unit computes w . x over the 64 pixels, so its weights w, drawn as an 8x8 image, are
the pattern it responds to (red: pixels that excite it, blue: pixels that inhibit it). Measured:
- structure: the correlation between horizontally and vertically neighbouring weights of a filter
  (averaged over the 32 filters). At initialisation the weights are independent draws and it is ~0;
  after training it is clearly positive: the filters became spatially smooth blobs, strokes and
  edges (an excitatory region next to an inhibitory one) instead of noise.
- combinations: second-layer unit j receives sum_i V_ji h_i(x) from the first layer. The
  participation ratio of its inputs' mean contributions c_i = mean_x |V_ji h_i(x)|,
  (sum_i c_i)^2 / sum_i c_i^2, is the number of first-layer units that effectively drive it
  (1 = it copies one filter, 32 = all contribute equally). Each is driven by many first-layer units,
  so what it responds to is a combination of first-layer patterns. (That holds at initialisation
  too, where V is random: training does not create it, it shapes which patterns are combined.)
The figure also shows, for a few second-layer units, their strongest first-layer inputs and the
average training image weighted by the unit's activation (what the unit responds to).

    python examples/first_layer_features.py [--device cpu|gpu|auto] [--epochs 40]

Needs scikit-learn for the data (pip install "gpunn[datasets]").
Figure: the 32 first-layer filters before and after training; neighbour correlation; second-layer
units as combinations of first-layer filters.
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

HIDDEN = 32
SHOWN_UNITS = 3
SHOWN_INPUTS = 4


def neighbour_correlation(W) -> np.ndarray:
    """Per filter (row of W, 64 = 8x8 weights): the correlation of each weight with its right and lower neighbour."""
    out = []
    for f in np.asarray(W, dtype=np.float64).reshape(-1, 8, 8):
        a = np.concatenate([f[:, :-1].ravel(), f[:-1, :].ravel()])
        b = np.concatenate([f[:, 1:].ravel(), f[1:, :].ravel()])
        out.append(np.corrcoef(a, b)[0, 1])
    return np.array(out)


def participation(c) -> np.ndarray:
    """(sum c)^2 / sum c^2 over the last axis, for non-negative c: the effective number of contributors."""
    return c.sum(-1) ** 2 / (c ** 2).sum(-1)


def run(epochs: int = 40, device="cpu", seed: int = 0) -> dict:
    gn.manual_seed(seed)
    X_train, y_train, X_test, y_test = gn.datasets.digits()
    model = gn.nn.Sequential(gn.nn.Linear(64, HIDDEN), gn.nn.ReLU(), gn.nn.Linear(HIDDEN, HIDDEN), gn.nn.ReLU(),
                             gn.nn.Linear(HIDDEN, 10)).to(device)
    W0 = np.array(model[0].weight, dtype=np.float64)
    opt = gn.optim.Adam(model.parameters(), lr=3e-3)
    gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt, X_train, y_train, epochs=epochs, batch_size=32,
                 progress=False, seed=seed)
    W = np.array(model[0].weight, dtype=np.float64)
    V = np.array(model[2].weight, dtype=np.float64)
    H1 = gn.train.predict(model[:2], X_train).astype(np.float64)  # first-layer activations (n, 32)
    H2 = gn.train.predict(model[:4], X_train).astype(np.float64)  # second-layer activations (n, 32)
    contrib = np.abs(V[None] * H1[:, None, :]).mean(0)  # (second-layer unit, first-layer unit)
    alive = H2.max(0) > 0
    pr = participation(contrib[alive])
    # units to show: the most active second-layer units
    order = np.argsort(-H2.mean(0))[:SHOWN_UNITS]
    shown = []
    for j in order:
        top = np.argsort(-contrib[j])[:SHOWN_INPUTS]
        preferred = (H2[:, j:j + 1] * X_train).sum(0) / H2[:, j].sum()
        shown.append({"unit": int(j), "inputs": [(int(i), float(V[j, i])) for i in top], "preferred": preferred,
                      "pr": float(participation(contrib[j]))})
    pred = gn.train.predict(model, X_test).argmax(1)
    return {"W0": W0, "W": W, "corr0": neighbour_correlation(W0), "corr": neighbour_correlation(W),
            "pr": pr, "alive": int(alive.sum()), "shown": shown, "test_accuracy": float((pred == y_test).mean()),
            "epochs": epochs}


def report(r) -> None:
    print(f"64-{HIDDEN}-{HIDDEN}-10 ReLU on digits, {r['epochs']} epochs: test accuracy {r['test_accuracy']:.3f}")
    c0, c = r["corr0"], r["corr"]
    print(f"first-layer filters, correlation of neighbouring weights (mean over {len(c)} filters): "
          f"{c0.mean():+.3f} at initialisation, {c.mean():+.3f} trained "
          f"({np.mean(c > 0.2):.0%} of the trained filters above 0.2, {np.mean(c0 > 0.2):.0%} at initialisation)")
    pr = r["pr"]
    print(f"second-layer units ({r['alive']} of {HIDDEN} active on some image): effective number of first-layer units "
          f"driving each (participation ratio of mean |V_ji h_i|): median {np.median(pr):.1f}, "
          f"range {pr.min():.1f}..{pr.max():.1f} of {HIDDEN}")
    for s in r["shown"]:
        print(f"  unit {s['unit']:2d} (participation {s['pr']:.1f}): strongest inputs "
              + ", ".join(f"filter {i} (weight {w:+.2f})" for i, w in s["inputs"]))


def _image(ax, img, title=None, fontsize=8):
    m = np.abs(img).max() or 1.0
    ax.imshow(img.reshape(8, 8), cmap="RdBu_r", vmin=-m, vmax=m)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def plot(r, path):
    plt = _common.pyplot()
    fig = plt.figure(figsize=(18, 7.5))
    outer = fig.add_gridspec(1, 3, width_ratios=[4.2, 2.2, 3.6], wspace=0.25)
    left = outer[0].subgridspec(9, 8, hspace=0.3, wspace=0.1, height_ratios=[1, 1, 1, 1, 0.3, 1, 1, 1, 1])
    for k in range(HIDDEN):
        _image(fig.add_subplot(left[k // 8, k % 8]), r["W"][k], f"filter {k}", 7)
        _image(fig.add_subplot(left[5 + k // 8, k % 8]), r["W0"][k])
    fig.text(0.25, 0.955, "First-layer filters after training (8x8 weights; red +, blue -)", ha="center", fontsize=11)
    fig.text(0.25, 0.465, "The same filters at initialisation (same order)", ha="center", fontsize=11)
    ax = fig.add_subplot(outer[1])
    bins = np.linspace(-0.5, 1.0, 31)
    ax.hist(r["corr0"], bins=bins, color="tab:gray", alpha=0.7, label=f"initialisation: mean {r['corr0'].mean():+.2f}")
    ax.hist(r["corr"], bins=bins, color="tab:red", alpha=0.7, label=f"trained: mean {r['corr'].mean():+.2f}")
    ax.set(xlabel="correlation of neighbouring weights", ylabel="number of filters",
           title="Smoothness of the 32 first-layer filters")
    ax.legend(fontsize=9, loc="upper left")
    ax.grid(alpha=0.3)
    right = outer[2].subgridspec(SHOWN_UNITS, SHOWN_INPUTS + 2, wspace=0.15, hspace=0.55,
                                 width_ratios=[1.2, 0.15] + [1] * SHOWN_INPUTS)
    for row, s in enumerate(r["shown"]):
        _image(fig.add_subplot(right[row, 0]), s["preferred"],
               f"unit {s['unit']} of layer 2\n(drivers: {s['pr']:.0f})", 9)
        for k, (i, w) in enumerate(s["inputs"]):
            _image(fig.add_subplot(right[row, 2 + k]), r["W"][i], f"{w:+.2f} x filter {i}", 8)
    fig.text(0.78, 0.955, "Second-layer units: what each responds to (left: activation-weighted\n"
             "mean image) and its strongest first-layer inputs (weight x filter)", ha="center", fontsize=11)
    fig.subplots_adjust(left=0.02, right=0.99, top=0.9, bottom=0.08)
    return _common.save(fig, path)


def main(argv=None):
    return _common.run_example("first_layer_features", __doc__, run, report, plot, argv, epochs=40)


if __name__ == "__main__":
    main()
