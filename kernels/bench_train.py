"""Training throughput: gpunn vs PyTorch (same MLP, data, loss and Adam), and gpunn vs scikit-learn.

Both libraries run in this one process, in alternating rounds, so machine noise hits both alike;
the figure that matters is the median ratio (gpunn samples/s over PyTorch samples/s).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python kernels/bench_train.py [--quick] [--json out.json]
        [--activation gelu] [--shape 784-512]

With JAX installed (not a gpunn dependency; `pip install jax`), a jit-compiled JAX step of the same
network (same weights and data, Adam) runs in the same alternating rounds. gpunn's step also runs
through gn.compile (its own copy of the model); its column compares best rounds.

(The two OPENBLAS_* variables, set on some shared machines as a guard for old OpenBLAS builds,
make a current NumPy's GEMM about 2x slower than on a user's machine; unset them for the
benchmark only.) The BLAS kernels in use are printed from threadpoolctl.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np

import gpunn as gn

SHAPES = [
    # (name, layer widths, batch, loss, steps per round: each round lasts a few tenths of a second,
    #  long enough that the machine's noise and a switch between libraries are small against it)
    ("mnist-mlp 784-512-512-10", [784, 512, 512, 10], 256, "ce", 40),
    ("digits-mlp 64-128-10", [64, 128, 10], 64, "ce", 600),
    ("narrow 32-64-64-64-1 (MSE)", [32, 64, 64, 64, 1], 1024, "mse", 300),
]


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    rows = []
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            rows.append(f"{pool.get('internal_api')} {pool.get('version')} "
                        f"arch={pool.get('architecture')} threads={pool.get('num_threads')} "
                        f"({os.path.basename(pool.get('filepath', ''))})")
    return "; ".join(rows) or "no BLAS found"


def best_rounds(ways, rounds, calls):
    """{name: best µs per call} of each no-argument function in `ways`, in alternating rounds of
    `calls` calls each (the order flips every round, so drift in machine load favours none)."""
    best = {name: float("inf") for name in ways}
    items = list(ways.items())
    for r in range(rounds):
        for name, fn in (items if r % 2 == 0 else items[::-1]):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls * 1e6)
    return best


def make_data(widths, batch, loss, steps, seed=0):
    rng = np.random.default_rng(seed)
    n = batch * steps
    X = rng.standard_normal((n, widths[0])).astype(np.float32)
    if loss == "ce":
        y = rng.integers(0, widths[-1], size=n).astype(np.int64)
    else:
        y = rng.standard_normal((n, widths[-1])).astype(np.float32)
    return X, y


# --activation: the hidden layers' activation, as (PyTorch module, gpunn module, JAX function) makers
ACTIVATIONS = {
    "relu": (lambda nn: nn.ReLU(), lambda: gn.nn.ReLU(), lambda jax: jax.nn.relu),
    "gelu": (lambda nn: nn.GELU(), lambda: gn.nn.GELU(), lambda jax: lambda x: jax.nn.gelu(x, approximate=False)),
    "gelu_tanh": (lambda nn: nn.GELU(approximate="tanh"), lambda: gn.nn.GELU(approximate="tanh"),
                  lambda jax: lambda x: jax.nn.gelu(x, approximate=True)),
    "tanh": (lambda nn: nn.Tanh(), lambda: gn.nn.Tanh(), lambda jax: jax.numpy.tanh),
    "sigmoid": (lambda nn: nn.Sigmoid(), lambda: gn.nn.Sigmoid(), lambda jax: jax.nn.sigmoid),
}


def build_torch(widths, activation="relu"):
    import torch

    layers = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation][0](torch.nn))
    return torch.nn.Sequential(*layers)


def build_gpunn(widths, torch_model, activation="relu"):
    layers = []
    for i in range(len(widths) - 1):
        layers.append(gn.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation][1]())
    model = gn.nn.Sequential(*layers)
    model.load_state_dict({k: v.detach().numpy() for k, v in torch_model.state_dict().items()})
    return model


def run_torch(model, opt, loss_fn, Xt, yt, batch):
    n = Xt.shape[0]
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        opt.zero_grad()
        loss = loss_fn(model(Xt[s:s + batch]), yt[s:s + batch])
        loss.backward()
        opt.step()
    float(loss.detach())
    return n / (time.perf_counter() - t0)


def run_gpunn(model, opt, loss_fn, X, y, batch):
    n = X.shape[0]
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        opt.zero_grad()
        loss = loss_fn(model(gn.Tensor(X[s:s + batch])), gn.Tensor(y[s:s + batch]))
        loss.backward()
        opt.step()
    float(loss.item())
    return n / (time.perf_counter() - t0)


def compiled_step(model, opt, loss_fn, **options):
    """gpunn's step through gn.compile(**options) (traced on the first two calls of each batch shape)."""
    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return gn.compile(step, **options)


def run_gpunn_compiled(step, X, y, batch):
    n = X.shape[0]
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        loss = step(gn.Tensor(X[s:s + batch]), gn.Tensor(y[s:s + batch]))
    float(loss.item())
    return n / (time.perf_counter() - t0)


def make_jax_runner(widths, torch_model, activation, loss):
    """A jit-compiled training step of the same MLP in JAX (Adam as in PyTorch, same initial
    weights), or None when JAX is not installed. Benchmark-only: JAX is no gpunn dependency."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    act = ACTIVATIONS[activation][2](jax)
    params = [(jnp.asarray(m.weight.detach().numpy()), jnp.asarray(m.bias.detach().numpy()))
              for m in torch_model if hasattr(m, "weight")]

    def forward(params, x):
        for i, (W, b) in enumerate(params):
            x = x @ W.T + b
            if i < len(params) - 1:
                x = act(x)
        return x

    def loss_fn(params, x, y):
        out = forward(params, x)
        if loss == "ce":
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], axis=1))
        return jnp.mean((out - y) ** 2)

    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8

    @jax.jit
    def step(params, m, v, t, x, y):
        lval, g = jax.value_and_grad(loss_fn)(params, x, y)
        t = t + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        params = jax.tree_util.tree_map(lambda p, m, v: p - (lr / c1) * m / (jnp.sqrt(v) / jnp.sqrt(c2) + eps),
                                        params, m, v)
        return params, m, v, t, lval

    state = [params, jax.tree_util.tree_map(jnp.zeros_like, params),
             jax.tree_util.tree_map(jnp.zeros_like, params), jnp.float32(0)]

    def run(X, y, batch):
        n = X.shape[0]
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            *state[:], lval = step(*state, X[s:s + batch], y[s:s + batch])
        float(lval)
        return n / (time.perf_counter() - t0)

    return run


def bench_vs_torch(rounds: int, scale: float, activation: str = "relu", only: str | None = None):
    import torch

    results = []
    for name, widths, batch, loss, steps in SHAPES:
        if only and only not in name:
            continue
        steps = max(3, int(steps * scale))
        X, y = make_data(widths, batch, loss, steps)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        tm = build_torch(widths, activation)
        gm = build_gpunn(widths, tm, activation)
        jrun = make_jax_runner(widths, tm, activation, loss)
        if jrun is not None:
            import jax

            Xj, yj = jax.device_put(X), jax.device_put(y.astype(np.int32) if loss == "ce" else y)
            jrun(Xj[: batch * 3], yj[: batch * 3], batch)  # compile
        topt = torch.optim.Adam(tm.parameters(), lr=1e-3)
        gopt = gn.optim.Adam(gm.parameters(), lr=1e-3)
        tl = torch.nn.CrossEntropyLoss() if loss == "ce" else torch.nn.MSELoss()
        gl = gn.nn.CrossEntropyLoss() if loss == "ce" else gn.nn.MSELoss()
        # gn.compile'd step: its own copy of the same start, with its own Adam
        cm = build_gpunn(widths, tm, activation)
        cstep = compiled_step(cm, gn.optim.Adam(cm.parameters(), lr=1e-3), gl)
        # warm-up: Numba compiles (or loads its cache), gn.compile traces, allocators settle
        run_gpunn(gm, gopt, gl, X[: batch * 3], y[: batch * 3], batch)
        run_gpunn_compiled(cstep, X[: batch * 3], y[: batch * 3], batch)
        run_torch(tm, topt, tl, Xt[: batch * 3], yt[: batch * 3], batch)
        g_rates, t_rates, j_rates, c_rates = [], [], [], []
        runners = [lambda: g_rates.append(run_gpunn(gm, gopt, gl, X, y, batch)),
                   lambda: c_rates.append(run_gpunn_compiled(cstep, X, y, batch)),
                   lambda: t_rates.append(run_torch(tm, topt, tl, Xt, yt, batch))]
        if jrun is not None:
            runners.append(lambda: j_rates.append(jrun(Xj, yj, batch)))
        for r in range(rounds):
            # alternate who goes first so drift in machine load favours none
            for run in (runners if r % 2 == 0 else runners[::-1]):
                run()
        ratios = [g / t for g, t in zip(g_rates, t_rates)]
        row = {
            "shape": name, "activation": activation, "batch": batch, "rounds": rounds, "steps_per_round": steps,
            "gpunn_samples_per_s": statistics.median(g_rates),
            "torch_samples_per_s": statistics.median(t_rates),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios),
            # best round over best round: on a shared machine the least disturbed round of each
            "ratio_best": max(g_rates) / max(t_rates),
            "compiled_samples_per_s": statistics.median(c_rates),
            "compiled_vs_eager_best": max(c_rates) / max(g_rates),
            "compile_stats": dict(cstep.stats),
        }
        line = (f"{name:30s} {activation:9s} batch {batch:5d}  gpunn {row['gpunn_samples_per_s']:10.0f}/s  "
                f"torch {row['torch_samples_per_s']:10.0f}/s  ratio {row['ratio_median']:.2f}x "
                f"(min {row['ratio_min']:.2f}, max {row['ratio_max']:.2f}; best/best {row['ratio_best']:.2f}x)")
        if j_rates:
            row.update(jax_samples_per_s=statistics.median(j_rates), ratio_jax_best=max(g_rates) / max(j_rates))
            line += f"  jax {row['jax_samples_per_s']:10.0f}/s  gpunn/jax best/best {row['ratio_jax_best']:.2f}x"
            row["compiled_vs_jax_best"] = max(c_rates) / max(j_rates)
        us = {k: batch / max(v) * 1e6 for k, v in (("eager", g_rates), ("compiled", c_rates), ("torch", t_rates),
                                                      ("jax", j_rates)) if v}
        row["best_us_per_step"] = us
        line += ("\n" + " " * 31 + "best us/step: " + ", ".join(f"{k} {v:.0f}" for k, v in us.items())
                 + f"; compiled/eager best/best {row['compiled_vs_eager_best']:.2f}x"
                 + (f", compiled/jax {row['compiled_vs_jax_best']:.2f}x" if j_rates else "")
                 + f" (gn.compile: {cstep.stats})")
        results.append(row)
        print(line, flush=True)
    return results


def bench_vs_sklearn(rounds: int, epochs: int):
    from sklearn.neural_network import MLPClassifier
    import warnings

    Xtr, ytr, Xte, yte = gn.datasets.digits(seed=0)
    g_times, s_times, g_acc, s_acc = [], [], [], []

    def run_gpunn_fit(seed):
        gn.manual_seed(seed)
        model = gn.nn.Sequential(gn.nn.Linear(64, 128), gn.nn.ReLU(), gn.nn.Linear(128, 10))
        opt = gn.optim.Adam(model.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt, Xtr, ytr, epochs=epochs, batch_size=32,
                     progress=False, seed=seed)
        dt = time.perf_counter() - t0
        acc = float((gn.train.predict(model, Xte).argmax(axis=1) == gn.Tensor(yte)).numpy().mean())
        return dt, acc

    def run_sklearn_fit(seed):
        clf = MLPClassifier(hidden_layer_sizes=(128,), activation="relu", solver="adam", alpha=0.0,
                            batch_size=32, learning_rate_init=1e-3, max_iter=epochs, shuffle=True,
                            tol=0.0, n_iter_no_change=epochs + 1, random_state=seed)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter is the budget here
            clf.fit(Xtr, ytr)
        dt = time.perf_counter() - t0
        return dt, float(clf.score(Xte, yte))

    run_gpunn_fit(0)  # warm-up (Numba cache)
    for r in range(rounds):
        order = (run_gpunn_fit, run_sklearn_fit) if r % 2 == 0 else (run_sklearn_fit, run_gpunn_fit)
        for fn in order:
            dt, acc = fn(r)
            (g_times if fn is run_gpunn_fit else s_times).append(dt)
            (g_acc if fn is run_gpunn_fit else s_acc).append(acc)
    ratios = [s / g for g, s in zip(g_times, s_times)]
    row = {
        "task": f"digits 64-128-10, batch 32, {epochs} epochs Adam lr 1e-3", "rounds": rounds,
        "gpunn_seconds": statistics.median(g_times), "sklearn_seconds": statistics.median(s_times),
        "speedup_median": statistics.median(ratios),
        "gpunn_test_accuracy": statistics.median(g_acc), "sklearn_test_accuracy": statistics.median(s_acc),
    }
    print(f"{row['task']}: gpunn {row['gpunn_seconds']:.2f} s, scikit-learn {row['sklearn_seconds']:.2f} s, "
          f"gpunn {row['speedup_median']:.2f}x faster; test accuracy gpunn {row['gpunn_test_accuracy']:.4f}, "
          f"scikit-learn {row['sklearn_test_accuracy']:.4f}", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every shape's steps per round")
    ap.add_argument("--epochs", type=int, default=60, help="epochs for the scikit-learn comparison")
    ap.add_argument("--quick", action="store_true", help="3 rounds, a tenth of the steps, 5 epochs (a smoke run)")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--activation", default="relu", choices=sorted(ACTIVATIONS),
                    help="the hidden layers' activation (default relu)")
    ap.add_argument("--shape", help="run only the shapes whose name contains this, e.g. 784-512")
    ap.add_argument("--threads", type=int, help="threads for every library (OpenBLAS via threadpoolctl, "
                    "torch.set_num_threads, XLA's flags); on a machine busy with other work, 1 keeps "
                    "spin-waiting thread pools from measuring the load instead of the libraries")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.scale, args.epochs = 3, 0.1, 5

    import torch

    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
        torch.set_num_threads(args.threads)
        if args.threads == 1:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1").strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "commit": commit or "unknown",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
        "gpunn": gn.__version__, "torch_threads": torch.get_num_threads(),
        "blas": blas_info(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE", "(unset)"),
    }
    for k, v in env.items():
        print(f"{k}: {v}")
    try:
        import jax

        env["jax"] = f"{jax.__version__} (jit, {jax.devices()[0].platform})"
    except ImportError:
        env["jax"] = "not installed (pip install jax to compare)"
    print(f"jax: {env['jax']}")
    out = {"environment": env, "train_vs_torch": bench_vs_torch(args.rounds, args.scale, args.activation, args.shape)}
    if not args.skip_sklearn:
        out["digits_vs_sklearn"] = bench_vs_sklearn(max(1, args.rounds // 2), args.epochs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
