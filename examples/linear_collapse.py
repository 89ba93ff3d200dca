"""Without activation functions, stacking layers is pointless: a chain of linear layers is one linear map.

Two networks 1-32-32-32-32-1 with the same initial weights are trained on the same nonlinear
task, y = sin(x) on [-pi, pi] (256 points, full-batch Adam): one with no activation between its
Linear layers, one with ReLU after each hidden layer. Composed, y = W4(W3(W2(W1 x + b1) + b2) +
b3) + b4 = W x + b with W = W4 W3 W2 W1 and b = W4 W3 W2 b1 + W4 W3 b2 + W4 b3 + b4: however deep,
the stack without activations computes one matrix and one bias. The script multiplies the trained
weights out (in float64), checks that W x + b gives the network's outputs to float32 rounding,
and compares its loss with the best linear fit (least squares), which it cannot beat: its
training loss stalls there. The ReLU stack bends and fits the sine.

    python examples/linear_collapse.py [--device cpu|gpu|auto] [--steps 1500]

Figure: the data with both networks' fits, the collapsed W x + b and the least-squares line;
the training losses against the least-squares loss.
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

HIDDEN = (32, 32, 32, 32)


def stack(activation, hidden=HIDDEN):
    """1-h1-...-hk-1 Linear layers, with `activation()` after each hidden layer (None: nothing between)."""
    layers, fan = [], 1
    for h in hidden:
        layers.append(gn.nn.Linear(fan, h))
        if activation is not None:
            layers.append(activation())
        fan = h
    return gn.nn.Sequential(*layers, gn.nn.Linear(fan, 1))


def collapse(model):
    """(W, b) with model(x) = x W^T + b for a stack of Linear layers only, multiplied out in float64."""
    W, b = None, None
    for m in model:
        Wl, bl = np.asarray(m.weight, dtype=np.float64), np.asarray(m.bias, dtype=np.float64)
        W, b = (Wl, bl) if W is None else (Wl @ W, Wl @ b + bl)
    return W, b


def train(model, X, Y, steps, lr, device):
    model.to(device)
    opt = gn.optim.Adam(model.parameters(), lr=lr)
    loss_fn = gn.nn.MSELoss()
    x, y = gn.tensor(X, device=device), gn.tensor(Y, device=device)
    losses = []
    for _ in range(steps):  # full-batch steps, written out
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return np.array(losses)


def run(steps: int = 1500, n: int = 256, lr: float = 3e-3, device="cpu", seed: int = 0) -> dict:
    X = np.linspace(-np.pi, np.pi, n, dtype=np.float32).reshape(-1, 1)
    Y = np.sin(X)
    A = np.hstack([X, np.ones_like(X)]).astype(np.float64)
    (slope, intercept), *_ = np.linalg.lstsq(A, Y.astype(np.float64), rcond=None)
    lsq_loss = float(np.mean((A @ np.array([slope, intercept]) - Y) ** 2))
    out = {"x": X.ravel(), "y": Y.ravel(), "lsq": (float(slope[0]), float(intercept[0])), "lsq_loss": lsq_loss,
           "steps": steps, "hidden": HIDDEN}
    for name, act in (("linear", None), ("relu", gn.nn.ReLU)):
        gn.manual_seed(seed)  # the same initial weights for both stacks (ReLU layers hold none)
        model = stack(act)
        losses = train(model, X, Y, steps, lr, device)
        pred = gn.train.predict(model, X).astype(np.float64).ravel()
        out[name] = {"losses": losses, "pred": pred, "loss": float(np.mean((pred - Y.ravel()) ** 2))}
        if act is None:
            W, b = collapse(model)
            collapsed = (X.astype(np.float64) @ W.T + b).ravel()
            out[name].update(W=float(W[0, 0]), b=float(b[0]), collapsed=collapsed,
                             max_diff=float(np.max(np.abs(collapsed - pred))))
    return out


def line(a: float, b: float, digits: int = 4) -> str:
    b = round(b, digits) + 0.0  # no "-0.0000"
    return f"y = {a:.{digits}f} x {'-' if b < 0 else '+'} {abs(b):.{digits}f}"


def report(r) -> None:
    lin, relu = r["linear"], r["relu"]
    depth = len(r["hidden"]) + 1
    print(f"y = sin(x) on [-pi, pi], {len(r['x'])} points; 1-{'-'.join(map(str, r['hidden']))}-1, "
          f"{r['steps']} full-batch Adam steps")
    print(f"no activations: the {depth} layers multiply out to {line(lin['W'], lin['b'])}; "
          f"it gives the network's outputs to {lin['max_diff']:.1e} (float32 rounding)")
    print(f"  best linear fit (least squares): {line(*r['lsq'])}, MSE {r['lsq_loss']:.4f}")
    print(f"  training MSE of the stack without activations: {lin['loss']:.4f} "
          f"({lin['loss'] / r['lsq_loss']:.3f} x the least-squares MSE)")
    print(f"with ReLU: training MSE {relu['loss']:.2e} ({r['lsq_loss'] / relu['loss']:.0f}x below the best line)")


def plot(r, path):
    plt = _common.pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    lin, relu = r["linear"], r["relu"]
    x = r["x"]
    ax.plot(x, r["y"], "k-", lw=4, alpha=0.3, label="target sin x")
    ax.plot(x, relu["pred"], color="tab:green", lw=2, label=f"with ReLU: MSE {relu['loss']:.1e}")
    ax.plot(x, lin["pred"], color="tab:red", lw=4, alpha=0.6, label=f"no activations: MSE {lin['loss']:.3f}")
    ax.plot(x, lin["collapsed"], "k--", lw=1.5,
            label=f"its weights multiplied out: {line(lin['W'], lin['b'], 3)}")
    a, b = r["lsq"]
    ax.plot(x, a * x + b, ":", color="tab:blue", lw=2, label=f"least squares: {line(a, b, 3)}")
    ax.set(xlabel="x", ylabel="y", title="Five Linear layers: without activations, one straight line")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    steps = np.arange(1, r["steps"] + 1)
    ax2.semilogy(steps, lin["losses"], color="tab:red", label="no activations")
    ax2.semilogy(steps, relu["losses"], color="tab:green", label="with ReLU")
    ax2.axhline(r["lsq_loss"], color="tab:blue", ls=":", lw=2, label=f"best linear fit: {r['lsq_loss']:.4f}")
    ax2.set(xlabel="Adam step (full batch)", ylabel="training MSE (log)", title="Training loss")
    ax2.legend(fontsize=9)
    ax2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    return _common.run_example("linear_collapse", __doc__, run, report, plot, argv, steps=1500)


if __name__ == "__main__":
    main()
