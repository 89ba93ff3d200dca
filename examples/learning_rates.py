"""Learning rate: too small, about right, too large.

The same 1-32-32-1 tanh network (same initial weights) is trained with plain SGD on the sine
regression set at three learning rates. Too small: the loss creeps down and is still high at the
end. About right: it falls to a small fraction of where it started. Too large: every step
overshoots, the weights grow until the loss overflows, and gn.train.fit's divergence check stops
the run with TrainingDiverged, whose message (printed below) names the epoch, the step, the
learning rate and what to do.

    python examples/learning_rates.py [--device cpu|gpu|auto] [--epochs 40]

Figure: the loss after every step for the three rates (log scale); the too-large run ends where
fit stopped it.
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

RATES = {"too small": 1e-4, "about right": 0.1, "too large": 3.0}


class StepLosses(gn.train.Callback):
    """Records the loss of every optimizer step (reading it each step is fine on the CPU)."""

    def __init__(self):
        self.losses = []

    def on_batch_end(self, step, logs=None):
        self.losses.append(float(logs["loss"]))


def train(lr, X, y, epochs, device, seed):
    gn.manual_seed(seed)  # the same initial weights for every rate
    model = gn.nn.Sequential(gn.nn.Linear(1, 32), gn.nn.Tanh(), gn.nn.Linear(32, 32), gn.nn.Tanh(),
                             gn.nn.Linear(32, 1)).to(device)
    opt = gn.optim.SGD(model.parameters(), lr=lr)
    initial = gn.train.evaluate(model, gn.nn.MSELoss(), X, y)["loss"]
    rec = StepLosses()
    error = None
    try:
        # the too-large rate overflows on purpose: fit reports it, NumPy need not warn as well
        with np.errstate(over="ignore", invalid="ignore"):
            gn.train.fit(model, gn.nn.MSELoss(), opt, X, y, epochs=epochs, batch_size=32, callbacks=[rec],
                         progress=False, seed=seed)
    except gn.train.TrainingDiverged as err:
        error = err
    return initial, rec.losses, error


def run(epochs: int = 40, n: int = 512, device="cpu", seed: int = 0) -> dict:
    X, y = gn.datasets.sine(n=n, noise=0.05, seed=seed)
    out = {"rates": dict(RATES), "epochs": epochs, "steps_per_epoch": -(-n // 32)}
    for name, lr in RATES.items():
        first, losses, error = train(lr, X, y, epochs, device, seed)
        last = float(np.mean(losses[-out["steps_per_epoch"]:])) if losses else float("nan")
        out[name] = {"lr": lr, "losses": losses, "first": first, "last": last,
                     "diverged": error is not None, "message": str(error) if error else None,
                     "what": getattr(error, "what", None), "error_epoch": getattr(error, "epoch", None),
                     "error_step": getattr(error, "step", None)}
    return out


def report(r) -> None:
    for name in RATES:
        d = r[name]
        if d["diverged"]:
            print(f"lr = {d['lr']:g} ({name}): stopped by the divergence check at step {len(d['losses']) + 1}:")
            print(f"    TrainingDiverged: {d['message']}")
        else:
            print(f"lr = {d['lr']:g} ({name}): loss {d['first']:.4f} (initial weights) -> {d['last']:.4f} "
                  f"(mean of the last epoch's steps), {d['last'] / d['first']:.1%} of the start")


def plot(r, path):
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    colors = {"too small": "tab:blue", "about right": "tab:green", "too large": "tab:red"}
    for name in RATES:
        d = r[name]
        losses = np.asarray(d["losses"])
        label = f"lr = {d['lr']:g} ({name})"
        if d["diverged"]:
            label += f": TrainingDiverged at epoch {d['error_epoch'] + 1}, step {d['error_step'] + 1}"
        ax.semilogy(np.arange(1, len(losses) + 1), losses, color=colors[name], lw=1, label=label)
        if d["diverged"]:
            ax.axvline(len(losses) + 1, color=colors[name], ls=":", lw=1.5)
            ax.annotate(f"loss -> inf at step {len(losses) + 1}:\nfit raises TrainingDiverged",
                        xy=(len(losses) + 1, 50), xytext=(len(losses) + 40, 8), color=colors[name], fontsize=9,
                        arrowprops=dict(arrowstyle="->", color=colors[name]))
    lows = [min(r[n]["losses"]) for n in RATES if r[n]["losses"]]
    ax.set_ylim(min(lows) / 2 if lows else 1e-3, 100)
    ax.set(xlabel="optimizer step", ylabel="MSE of the step's batch (log scale)",
           title="SGD on sine regression: too small, about right, too large")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    return _common.run_example("learning_rates", __doc__, run, report, plot, argv, epochs=40)


if __name__ == "__main__":
    main()
