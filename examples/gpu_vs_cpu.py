"""The same training on the CPU and on the GPU, timings side by side.

An MNIST-shaped 784-512-512-10 ReLU network is trained from the same initial weights on the same
synthetic data (labels from a random "teacher" network, so there is something to learn) with the
same batches (cross-entropy, Adam, batch 256), once on each device. Each device first runs one
warm-up epoch (kernel compilation, memory pools) that is not timed, then the timed epochs.
gn.train.fit reads the epoch's losses back from the GPU at the end of every epoch, so the timing
includes all the GPU work. Both runs should end at nearly the same loss (float32 sums in a
different order).

Where no GPU is usable, the GPU half is skipped and gpunn's reason is printed (CuPy not installed,
no CUDA driver, ...). With --device gpu a missing GPU is an error (exit status 1, same reason).

    python examples/gpu_vs_cpu.py [--device cpu|gpu|auto] [--epochs 3] [--n 8192] [--width 512]

Figure: seconds per epoch and samples per second on each device, and the two loss curves.
"""
from __future__ import annotations

import time

import numpy as np

import gpunn as gn
import _common


def make_data(n: int, features: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features)).astype(np.float32)
    teacher = rng.standard_normal((features, classes)) / np.sqrt(features)
    y = np.argmax(np.tanh(X @ teacher) + 0.1 * rng.standard_normal((n, classes)), axis=1).astype(np.int64)
    return X, y


def train_on(device, X, y, epochs, width, seed) -> dict:
    gn.manual_seed(seed)  # the same initial weights on both devices
    model = gn.nn.Sequential(gn.nn.Linear(X.shape[1], width), gn.nn.ReLU(), gn.nn.Linear(width, width), gn.nn.ReLU(),
                             gn.nn.Linear(width, 10)).to(device)
    opt = gn.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = gn.nn.CrossEntropyLoss()
    # warm-up epoch (not timed): compiles kernels, fills memory pools; it uses epoch index 0's batches
    gn.train.fit(model, loss_fn, opt, X, y, epochs=1, batch_size=256, progress=False, seed=seed)
    t0 = time.perf_counter()
    hist = gn.train.fit(model, loss_fn, opt, X, y, epochs=1 + epochs, start_epoch=1, batch_size=256,
                        progress=False, seed=seed)
    seconds = time.perf_counter() - t0
    return {"device": str(device), "seconds": seconds, "seconds_per_epoch": seconds / epochs,
            "samples_per_second": epochs * len(X) / seconds, "loss": hist["loss"], "accuracy": hist["accuracy"]}


def run(epochs: int = 3, n: int = 8192, width: int = 512, require_gpu: bool = False, seed: int = 0) -> dict:
    X, y = make_data(n, 784, 10, seed)
    out = {"n": n, "width": width, "epochs": epochs, "cpu": train_on(gn.device("cpu"), X, y, epochs, width, seed)}
    usable, reason = gn.gpu_status()
    if usable:
        out["gpu"] = train_on(gn.device("gpu"), X, y, epochs, width, seed)
        out["gpu_reason"] = reason
    elif require_gpu:
        raise gn.DeviceError(f"device 'gpu' was asked for but no GPU is usable: {reason}")
    else:
        out["gpu"] = None
        out["skipped"] = f"GPU half skipped: {reason}"
    return out


def report(r) -> None:
    print(f"784-{r['width']}-{r['width']}-10, {r['n']} samples, batch 256, Adam; {r['epochs']} timed epochs "
          "after one warm-up epoch")
    rows = [("cpu", r["cpu"])] + ([("gpu", r["gpu"])] if r["gpu"] else [])
    for name, d in rows:
        print(f"  {name}: {d['seconds_per_epoch']:.3f} s/epoch, {d['samples_per_second']:,.0f} samples/s, "
              f"final loss {d['loss'][-1]:.4f}, accuracy {d['accuracy'][-1]:.3f}")
    if r["gpu"]:
        print(f"  GPU ({r['gpu_reason']}): {r['cpu']['seconds'] / r['gpu']['seconds']:.1f}x the CPU's speed; "
              f"final losses differ by {abs(r['cpu']['loss'][-1] - r['gpu']['loss'][-1]):.2e}")
    else:
        print(f"  {r['skipped']}")


def plot(r, path):
    plt = _common.pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = [("CPU", r["cpu"], "tab:blue"), ("GPU", r["gpu"], "tab:green")]
    top = max(d["samples_per_second"] for _, d, _ in rows if d)
    for i, (name, d, c) in enumerate(rows):
        if d:
            ax.bar(i, d["samples_per_second"], color=c, width=0.6)
            ax.text(i, d["samples_per_second"], f"{d['samples_per_second']:,.0f} samples/s\n"
                    f"{d['seconds_per_epoch']:.2f} s/epoch", ha="center", va="bottom", fontsize=9)
        else:
            why = r["skipped"].split(": ", 1)[-1].split(";")[0].split(" (")[0]
            ax.text(i, top * 0.05, f"skipped:\nno usable GPU here\n({why})", ha="center", va="bottom",
                    fontsize=9, color="0.35")
    ax.set_xticks([0, 1])
    ax.set_xticklabels([name for name, _, _ in rows])
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylim(0, top * 1.3)
    ax.set(ylabel="training samples per second", title=f"784-{r['width']}-{r['width']}-10, batch 256, Adam")
    for name, d, c in rows:
        if d:
            ax2.plot(np.arange(2, 2 + len(d["loss"])), d["loss"], "o-", color=c, label=name)
    ax2.set_xticks(np.arange(2, 2 + r["epochs"]))
    ax2.set(xlabel="epoch (epoch 1 was the untimed warm-up)", ylabel="training loss",
            title="Same weights, same batches: same losses")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    def extra(p):
        p.add_argument("--epochs", type=int, default=3)
        p.add_argument("--n", type=int, default=8192)
        p.add_argument("--width", type=int, default=512)

    args, dev = _common.start("gpu_vs_cpu", __doc__.splitlines()[0], argv, extra)
    r = run(epochs=args.epochs, n=args.n, width=args.width, require_gpu=dev.is_gpu, seed=args.seed)
    report(r)
    _common.finish(args, plot, r)
    return r


if __name__ == "__main__":
    main()
