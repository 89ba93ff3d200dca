"""What the profiler costs: with no profile active (the hot path every user runs) and while one records.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python kernels/bench_profiler_overhead.py [--baseline DIR]

1. The inactive hook: `ops_for` with its `if _recorder is None` test against a copy of the same
   function without it (ns per call, best of several timeit repeats), and the bare test itself.
2. How many such tests a training step makes (kernel dispatches, graph nodes, leaves, phases),
   counted from one profiled step, so (1) x (2) is the inactive cost per step.
3. Training steps with no profile and with one recording (median of alternating rounds).
4. With --baseline DIR (a gpunn checkout from before the hooks): the same steps in two processes,
   one importing that tree's gpunn and one this tree's, timed in turn, as a direct before/after.

(The two OPENBLAS_* variables, set on some shared machines as a guard for old OpenBLAS builds,
make a current NumPy's GEMM about 2x slower; unset them for benchmarks only.)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import timeit

import numpy as np

SHAPES = [("digits-mlp 64-128-10", [64, 128, 10], 64, 300), ("mnist-mlp 784-512-512-10", [784, 512, 512, 10], 256, 10)]


def make_step(widths, batch, seed=0):
    import gpunn as gn
    from gpunn import nn, optim

    gn.manual_seed(seed)
    mods = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    mods.append(nn.Linear(widths[-2], widths[-1]))
    model = nn.Sequential(*mods)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    x = gn.tensor(rng.standard_normal((batch, widths[0])).astype(np.float32))
    y = gn.tensor(rng.integers(0, widths[-1], batch))

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def time_steps(step, n) -> float:
    """Microseconds per step over n steps."""
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n * 1e6


def hook_cost() -> dict:
    from gpunn.kernels import ops as kops

    # The dispatch as it was before the profiler's hook, for comparison (same globals).
    src = '''
def ops_for_without_hook(array):
    if type(array) is np.ndarray or isinstance(array, (np.ndarray, np.generic)):
        return _cpu_ops if _choice == "fused" else _reference_ops
    return _gpu() if _choice == "fused" else _reference_ops
'''
    namespace = vars(kops).copy()
    exec(src, namespace)
    without = namespace["ops_for_without_hook"]
    a = np.zeros(4, np.float32)
    n = 100_000

    fns = {"with": lambda: kops.ops_for(a), "without": lambda: without(a),
           "check": lambda: kops._recorder is None, "empty": lambda: None}
    best = {k: float("inf") for k in fns}
    for _ in range(25):  # interleaved, best of each: machine noise hits all four alike
        for k, fn in fns.items():
            best[k] = min(best[k], timeit.timeit(fn, number=n) / n * 1e9)
    with_hook, no_hook, check = best["with"], best["without"], best["check"] - best["empty"]
    return {"ops_for_ns": with_hook, "ops_for_without_hook_ns": no_hook, "difference_ns": with_hook - no_hook,
            "bare_check_ns": check}


def checks_per_step(widths, batch) -> dict:
    """Hook tests one training step makes, counted from a profiled step."""
    import gpunn as gn

    step = make_step(widths, batch)
    step()
    with gn.profiler.profile(peaks=False) as prof:
        step()
    nodes = sum(1 for s in prof.spans if s.kind == "node")
    phases = sum(1 for s in prof.spans if s.kind == "phase")
    leaves = sum(1 for ev in prof.events if ev.name == "accumulate_grad")
    dispatches = sum(1 for ev in prof.events if "." not in ev.name and ev.name != "accumulate_grad")
    return {"kernel dispatches": dispatches, "graph nodes": nodes, "leaves": leaves, "phases": phases,
            "total": dispatches + nodes + leaves + phases}


def step_times(widths, batch, n, rounds) -> dict:
    import gpunn as gn

    step = make_step(widths, batch)
    for _ in range(5):
        step()
    off, on = [], []
    for _ in range(rounds):
        off.append(time_steps(step, n))
        with gn.profiler.profile(peaks=False):
            on.append(time_steps(step, n))
    return {"inactive_us": statistics.median(off), "inactive_min_us": min(off),
            "recording_us": statistics.median(on), "recording_min_us": min(on)}


def serve() -> None:
    """--serve: for each line on stdin, one round of step timings (µs per step per shape) as a JSON line,
    from the gpunn on PYTHONPATH."""
    import gpunn

    root = os.environ.get("PYTHONPATH", "")
    assert root and os.path.abspath(gpunn.__file__).startswith(os.path.abspath(root)), (gpunn.__file__, root)
    steps = {name: (make_step(w, b), n) for name, w, b, n in SHAPES}
    for step, _ in steps.values():
        for _ in range(5):
            step()
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps({name: time_steps(step, n) for name, (step, n) in steps.items()}), flush=True)


def before_after(baseline: str, rounds: int) -> dict:
    """Two long-lived processes, one importing the baseline's gpunn and one this tree's, asked for a
    round of timings in turn (A, B, A, B, ...): median µs per step of each."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = {}
    for label, root in (("baseline", baseline), ("this tree", here)):
        procs[label] = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], text=True,
                                        env=dict(os.environ, PYTHONPATH=root), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE)
        assert procs[label].stdout.readline().strip() == "ready"
    results = {label: {} for label in procs}
    try:
        for _ in range(rounds):
            for label, proc in procs.items():
                proc.stdin.write("round\n")
                proc.stdin.flush()
                for name, value in json.loads(proc.stdout.readline()).items():
                    results[label].setdefault(name, []).append(value)
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    return {label: {name: statistics.median(v) for name, v in per.items()} for label, per in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--baseline", metavar="DIR", help="a gpunn checkout without the profiler hooks")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    hc = hook_cost()
    print(f"ops_for with the hook: {hc['ops_for_ns']:.1f} ns/call; the same function without it: "
          f"{hc['ops_for_without_hook_ns']:.1f} ns/call (difference {hc['difference_ns']:+.1f} ns); "
          f"the bare `_recorder is None` test: {hc['bare_check_ns']:.1f} ns")
    for name, widths, batch, n in SHAPES:
        c = checks_per_step(widths, batch)
        st = step_times(widths, batch, n, args.rounds)
        per_step_ns = c["total"] * max(hc["bare_check_ns"], hc["difference_ns"], 0.0)
        print(f"{name} batch {batch}: {c['total']} hook tests per step "
              f"({', '.join(f'{v} {k}' for k, v in c.items() if k != 'total')}) = about {per_step_ns / 1e3:.2f} us "
              f"per step, {100 * per_step_ns / 1e3 / st['inactive_us']:.3f}% of a {st['inactive_us']:.0f} us step")
        print(f"  step with no profile {st['inactive_us']:.1f} us (min {st['inactive_min_us']:.1f}); while recording "
              f"{st['recording_us']:.1f} us (min {st['recording_min_us']:.1f}): "
              f"{st['recording_us'] / st['inactive_us']:.2f}x")
    if args.baseline:
        ba = before_after(os.path.abspath(args.baseline), 3 * args.rounds)
        for name in ba["baseline"]:
            b, t = ba["baseline"][name], ba["this tree"][name]
            print(f"before/after, {name}: baseline {b:.1f} us/step, this tree {t:.1f} us/step ({t / b:.3f}x)")


if __name__ == "__main__":
    main()
