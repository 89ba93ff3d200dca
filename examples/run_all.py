"""Run every example, one process each, and print how long each took.

    python examples/run_all.py                 # all of them on the CPU; figures into examples/figures/
    python examples/run_all.py --device auto   # the GPU where one is usable
    python examples/run_all.py xor_mlp digits  # just these

Extra options after `--` go to every example (e.g. `-- --no-plot`). Exit status 1 if any failed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = ("perceptron_logic", "xor_mlp", "universal_approximation", "activations", "vanishing_gradients",
            "dead_relu", "losses_outliers", "loss_landscape", "learning_rates", "optimizers", "schedules",
            "digits", "backprop_by_hand", "gpu_vs_cpu", "linear_collapse", "first_layer_features", "ce_vs_mse",
            "sgd_noise", "overparameterization")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = []
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"examples to run (default: all): {', '.join(EXAMPLES)}")
    p.add_argument("--device", default="cpu", help="cpu (default), gpu or auto; passed to every example")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in EXAMPLES]
    if unknown:
        p.error(f"unknown example(s) {', '.join(unknown)}; choose from {', '.join(EXAMPLES)}")
    results = []
    start = time.perf_counter()
    for name in args.names or EXAMPLES:
        print(f"\n=== {name} " + "=" * max(0, 60 - len(name)), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, os.path.join(HERE, f"{name}.py"), "--device", args.device, *passthrough])
        results.append((name, rc, time.perf_counter() - t0))
    total = time.perf_counter() - start
    print("\n=== summary " + "=" * 52)
    for name, rc, seconds in results:
        print(f"  {name:26s} {'ok' if rc == 0 else f'FAILED (exit status {rc})':24s} {seconds:6.1f} s")
    print(f"  {'total':26s} {'':24s} {total:6.1f} s")
    return 1 if any(rc for _, rc, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
