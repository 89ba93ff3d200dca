"""Learning-rate schedules: every schedule's rate over the steps, and warm-up + cosine against a
constant rate on the same task.

Part 1 steps each scheduler of gn.optim.lr_scheduler (StepLR, MultiStepLR, ConstantLR, LinearLR,
ExponentialLR, PolynomialLR, CosineAnnealingLR, CosineAnnealingWarmRestarts, LambdaLR,
MultiplicativeLR, SequentialLR, ChainedScheduler, ReduceLROnPlateau) on a one-parameter optimizer
for 100 steps and records optimizer.param_groups[0]["lr"] before each step.

Part 2 trains the same 2-64-64-3 ReLU network (same initial weights and batches) on three-arm
spirals with Adam, once at a constant rate of 0.05 and once with a linear warm-up (the first 5% of
the steps) to the same peak rate followed by cosine annealing to zero (SequentialLR of LinearLR and
CosineAnnealingLR, stepped after every batch: fit(..., scheduler_step="batch")). At a constant
rate this large the loss keeps bouncing at a level set by the step size; annealing the rate lets
it settle several times lower.

    python examples/schedules.py [--device cpu|gpu|auto] [--epochs 60]

Figure: the learning rate of every schedule over 100 steps; both training runs' loss and rate.
"""
from __future__ import annotations

import math

import numpy as np

import gpunn as gn
import _common

S = gn.optim.lr_scheduler
STEPS = 100
BASE_LR = 0.1


def _schedulers():
    """name -> function(optimizer) -> scheduler, all over STEPS steps from BASE_LR."""
    return {
        "StepLR(step_size=25, gamma=0.5)": lambda o: S.StepLR(o, step_size=25, gamma=0.5),
        "MultiStepLR([30, 60, 80], gamma=0.3)": lambda o: S.MultiStepLR(o, milestones=[30, 60, 80], gamma=0.3),
        "ConstantLR(factor=0.3, total_iters=40)": lambda o: S.ConstantLR(o, factor=0.3, total_iters=40),
        "LinearLR(1.0 -> 0.05, total_iters=100)": lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.05,
                                                                      total_iters=100),
        "ExponentialLR(gamma=0.97)": lambda o: S.ExponentialLR(o, gamma=0.97),
        "PolynomialLR(total_iters=100, power=2)": lambda o: S.PolynomialLR(o, total_iters=100, power=2.0),
        "CosineAnnealingLR(T_max=100)": lambda o: S.CosineAnnealingLR(o, T_max=100),
        "CosineAnnealingWarmRestarts(T_0=20, T_mult=2)": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=20, T_mult=2),
        "LambdaLR(1 / sqrt(1 + t))": lambda o: S.LambdaLR(o, lambda t: 1 / math.sqrt(1 + t)),
        "MultiplicativeLR(x0.98 per step)": lambda o: S.MultiplicativeLR(o, lambda t: 0.98),
        "SequentialLR(LinearLR warm-up 10, Cosine 90)": lambda o: S.SequentialLR(
            o, [S.LinearLR(o, start_factor=0.01, end_factor=1.0, total_iters=10), S.CosineAnnealingLR(o, T_max=90)],
            milestones=[10]),
        "ChainedScheduler(ExponentialLR, StepLR)": lambda o: S.ChainedScheduler(
            [S.ExponentialLR(o, gamma=0.99), S.StepLR(o, step_size=40, gamma=0.5)]),
        "ReduceLROnPlateau(patience=10, factor=0.5)": lambda o: S.ReduceLROnPlateau(o, patience=10, factor=0.5),
    }


def plateau_metric(t: int) -> float:
    """A made-up validation loss for ReduceLROnPlateau: improves until step 30, then stalls."""
    return max(1.0 - 0.02 * t, 0.4)


def schedule_curves(steps: int = STEPS) -> dict:
    curves = {}
    for name, make in _schedulers().items():
        opt = gn.optim.SGD([gn.nn.Parameter(np.zeros(1, np.float32))], lr=BASE_LR)
        sched = make(opt)
        lrs = []
        for t in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()  # (no gradient: nothing moves; the schedule is what is shown)
            if isinstance(sched, S.ReduceLROnPlateau):
                sched.step(plateau_metric(t))
            else:
                sched.step()
        curves[name] = np.array(lrs)
    return curves


def train(X, y, epochs, lr, warmup_cosine, device, seed):
    gn.manual_seed(seed)
    model = gn.nn.Sequential(gn.nn.Linear(2, 64), gn.nn.ReLU(), gn.nn.Linear(64, 64), gn.nn.ReLU(),
                             gn.nn.Linear(64, 3)).to(device)
    opt = gn.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(X) // 32)
    sched = None
    if warmup_cosine:
        warm = max(1, steps // 20)  # 5% of the steps
        sched = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warm),
                                     S.CosineAnnealingLR(opt, T_max=steps - warm)], milestones=[warm])
    rec = RecordLR()
    hist = gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt, X, y, epochs=epochs, batch_size=32, scheduler=sched,
                        scheduler_step="batch", callbacks=[rec], progress=False, seed=seed)
    return {"loss": hist["loss"], "accuracy": hist["accuracy"], "lrs": rec.lrs}


class RecordLR(gn.train.Callback):
    def __init__(self):
        self.lrs = []

    def on_batch_end(self, step, logs=None):
        self.lrs.append(logs["lr"])


def run(epochs: int = 60, n: int = 600, lr: float = 0.05, device="cpu", seed: int = 0) -> dict:
    X, y = gn.datasets.spirals(n=n, classes=3, noise=0.2, seed=seed)
    return {"curves": schedule_curves(), "epochs": epochs, "peak_lr": lr,
            "constant": train(X, y, epochs, lr, False, device, seed),
            "warmup_cosine": train(X, y, epochs, lr, True, device, seed)}


def report(r) -> None:
    print(f"learning rate over {STEPS} steps from {BASE_LR} (value at steps 0, 10, 50, 99):")
    for name, lrs in r["curves"].items():
        print(f"  {name:48s} {lrs[0]:.4f} {lrs[10]:.4f} {lrs[50]:.4f} {lrs[99]:.4f}")
    print(f"spirals, Adam, {r['epochs']} epochs, peak lr {r['peak_lr']}:")
    for key, label in (("constant", "constant rate"), ("warmup_cosine", "warm-up + cosine")):
        d = r[key]
        tail = np.mean(d["loss"][-5:])
        print(f"  {label:17s} final loss {d['loss'][-1]:.4f} (mean of the last 5 epochs {tail:.4f}), "
              f"accuracy {d['accuracy'][-1]:.3f}")


def plot(r, path):
    plt = _common.pyplot()
    fig = plt.figure(figsize=(16, 9))
    curves = r["curves"]
    cols = 5
    rows_top = math.ceil(len(curves) / cols)
    grid = fig.add_gridspec(rows_top + 2, cols)
    for i, (name, lrs) in enumerate(curves.items()):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ax.plot(np.arange(len(lrs)), lrs, lw=2)
        ax.set_title(name, fontsize=8)
        ax.set_ylim(0, BASE_LR * 1.1)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i % cols == 0:
            ax.set_ylabel("lr", fontsize=8)
        if i // cols == rows_top - 1 or i + cols >= len(curves):
            ax.set_xlabel("step", fontsize=8)
    ax = fig.add_subplot(grid[rows_top:, :3])
    a = fig.add_subplot(grid[rows_top:, 3:])
    for key, label, color in (("constant", "constant lr", "tab:red"), ("warmup_cosine", "warm-up + cosine", "tab:blue")):
        d = r[key]
        ax.semilogy(np.arange(1, len(d["loss"]) + 1), d["loss"], color=color, lw=2,
                    label=f"{label}: final loss {d['loss'][-1]:.4f}, accuracy {d['accuracy'][-1]:.3f}")
        a.plot(np.arange(len(d["lrs"])), d["lrs"], color=color, lw=2, label=label)
    ax.set(xlabel="epoch", ylabel="training loss (epoch mean, log)",
           title=f"Spirals, Adam at peak lr {r['peak_lr']}: constant vs warm-up + cosine")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    a.set(xlabel="optimizer step", ylabel="lr", title="the two runs' learning rate")
    a.legend()
    a.grid(alpha=0.3)
    fig.suptitle(f"gn.optim.lr_scheduler: each schedule from lr {BASE_LR} over {STEPS} steps", y=0.995)
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    return _common.run_example("schedules", __doc__, run, report, plot, argv, epochs=60)


if __name__ == "__main__":
    main()
