"""Vanishing gradients: with sigmoid the first layer's gradient falls by orders of magnitude
with depth; with ReLU (He initialisation) it does not.

Networks 2-32-...-32-3 with 2 to 20 hidden layers of width 32 and sigmoid, tanh, ReLU or GELU
activations, each with the initialisation made for it (biases 0):
- sigmoid, tanh: Xavier/Glorot uniform with gain calculate_gain(name) (1 for sigmoid, 5/3 for tanh);
- ReLU, GELU: He/Kaiming normal for ReLU (std sqrt(2 / fan_in)), GELU being ReLU-like.
At initialisation, one backward pass of the cross-entropy on a batch of spirals gives every
layer's weight-gradient norm |dL/dW_l| (geometric mean over 3 initialisations). Backprop multiplies
the gradient by W_l^T diag(f'(z_l)) once per layer; sigmoid's f' is at most 1/4, so with
variance-preserving weights each sigmoid layer shrinks the gradient several-fold and the first
layer's gradient falls geometrically with depth. He initialisation is chosen so that ReLU layers
keep the gradient's scale, and it does not fall. (tanh with gain 5/3 keeps it too; GELU under the
ReLU gain loses some per layer, about two orders of magnitude over 20 layers.) Then the deepest
networks are trained with SGD + momentum: the sigmoid network stays at chance while the ReLU
network learns.

    python examples/vanishing_gradients.py [--device cpu|gpu|auto] [--epochs 30]

Figure: first-layer gradient norm vs depth; gradient norm per layer in the deepest network;
training curves of the deepest networks.
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

ACTIVATIONS = {"sigmoid": gn.nn.Sigmoid, "tanh": gn.nn.Tanh, "ReLU": gn.nn.ReLU, "GELU": gn.nn.GELU}
DEPTHS = (2, 5, 10, 15, 20)
COLORS = {"sigmoid": "tab:red", "tanh": "tab:orange", "ReLU": "tab:blue", "GELU": "tab:green"}


def make(act: str, depth: int, width: int = 32, device="cpu"):
    layers, fan = [], 2
    for _ in range(depth):
        layers += [gn.nn.Linear(fan, width), ACTIVATIONS[act]()]
        fan = width
    model = gn.nn.Sequential(*layers, gn.nn.Linear(fan, 3))
    for m in model:
        if isinstance(m, gn.nn.Linear):
            if act in ("sigmoid", "tanh"):
                gn.nn.init.xavier_uniform_(m.weight, gain=gn.nn.init.calculate_gain(act.lower()))
            else:
                gn.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            gn.nn.init.zeros_(m.bias)
    return model.to(device)


def layer_gradient_norms(model, X, y, device) -> np.ndarray:
    """|dL/dW| of every Linear layer, input layer first, after one backward pass."""
    model.zero_grad()
    loss = gn.nn.CrossEntropyLoss()(model(gn.tensor(X, device=device)), gn.tensor(y, device=device))
    loss.backward()
    return np.array([float(np.linalg.norm(np.asarray(m.weight.grad))) for m in model
                     if isinstance(m, gn.nn.Linear)])


def run(depths=DEPTHS, inits: int = 3, epochs: int = 30, n: int = 600, device="cpu", seed: int = 0) -> dict:
    X, y = gn.datasets.spirals(n=n, classes=3, noise=0.2, seed=seed)
    out = {"depths": tuple(depths), "norms": {}, "curves": {}, "epochs": epochs}
    for act in ACTIVATIONS:
        for depth in depths:
            per_init = []
            for k in range(inits):
                gn.manual_seed(seed * 1000 + k)
                per_init.append(layer_gradient_norms(make(act, depth, device=device), X, y, device))
            out["norms"][(act, depth)] = np.exp(np.mean(np.log(np.stack(per_init)), axis=0))  # geometric mean
    deepest = max(depths)
    for act in ACTIVATIONS:
        gn.manual_seed(seed)
        model = make(act, deepest, device=device)
        initial = gn.train.evaluate(model, gn.nn.CrossEntropyLoss(), X, y)["loss"]
        opt = gn.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
        try:
            hist = gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt, X, y, epochs=epochs, batch_size=32,
                                progress=False, seed=seed).history
        except gn.train.TrainingDiverged as err:  # keep the epochs before it; report it
            print(f"{act}: {err}")
            hist = err.history.history
        out["curves"][act] = {"initial": initial, "loss": hist.get("loss", []), "accuracy": hist.get("accuracy", [])}
    out["first_layer"] = {act: [float(out["norms"][(act, d)][0]) for d in depths] for act in ACTIVATIONS}
    return out


def report(r) -> None:
    d = r["depths"]
    print("first-layer gradient norm |dL/dW_1| at initialisation (geometric mean over initialisations)")
    print("depth        " + "".join(f"{k:>11d}" for k in d) + "   deepest / shallowest")
    for act, vals in r["first_layer"].items():
        print(f"{act:12s} " + "".join(f"{v:11.2e}" for v in vals) + f"   {vals[-1] / vals[0]:.1e}")
    print(f"training the {max(d)}-hidden-layer networks, SGD + momentum, {r['epochs']} epochs:")
    for act, c in r["curves"].items():
        print(f"  {act:8s} loss {c['initial']:.3f} -> {c['loss'][-1]:.3f}, accuracy {c['accuracy'][-1]:.3f}")


def plot(r, path):
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    d = r["depths"]
    ax = axes[0]
    for act, vals in r["first_layer"].items():
        ax.semilogy(d, vals, "o-", color=COLORS[act], label=act)
    ax.set(xlabel="hidden layers", ylabel="|dL/dW| of the first layer (log)", xticks=d,
           title="First-layer gradient at initialisation vs depth")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="Xavier (sigmoid, tanh), He (ReLU, GELU)", fontsize=8, title_fontsize=8)
    ax = axes[1]
    deepest = max(d)
    for act in r["first_layer"]:
        norms = r["norms"][(act, deepest)]
        ax.semilogy(np.arange(1, len(norms) + 1), norms, "o-", ms=3, color=COLORS[act], label=act)
    ax.set_xticks([1, 5, 10, 15, deepest + 1])
    ax.set(xlabel="layer (1 = input side)", ylabel="|dL/dW| (log)",
           title=f"Gradient norm per layer, {deepest} hidden layers")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax = axes[2]
    for act, c in r["curves"].items():
        losses = [c["initial"], *c["loss"]]
        ax.plot(np.arange(len(losses)), losses, color=COLORS[act], lw=2, label=f"{act}: accuracy {c['accuracy'][-1]:.2f}")
    ax.axhline(np.log(3), color="k", ls=":", lw=1, label="chance (log 3)")
    ax.set(xlabel="epoch", ylabel="training loss (cross-entropy)",
           title=f"Training the {deepest}-hidden-layer networks (SGD + momentum)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    return _common.run_example("vanishing_gradients", __doc__, run, report, plot, argv, epochs=30)


if __name__ == "__main__":
    main()
