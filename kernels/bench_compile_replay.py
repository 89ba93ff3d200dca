"""gn.compile's kernel replay, two ways, in one process: the step interpreter (`_run_steps`) and the
generated straight-line function (gpunn/compiler_codegen.py) that unprofiled replays use; and what
a preallocated output would save a step's GEMMs (np.matmul allocating its result vs writing into
one made beforehand).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python kernels/bench_compile_replay.py [--rounds 9] [--shape 64-128]

Same networks, batches and Adam as kernels/bench_train.py. Alternating rounds of a few tenths of a
second each; each way's best round (machine noise only slows a round). The two replays run the same
kernel program on the same model, so they differ only in how the program is walked.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train as bt  # noqa: E402 - the shapes, data, models and timing of the training benchmark

import gpunn as gn  # noqa: E402
from gpunn import compiler  # noqa: E402


def _kernel_program(step):
    (entry,) = step._cache.values()
    kp = entry[1].kernels
    if kp is None:
        raise SystemExit(f"the step does not replay kernel by kernel: {entry[1].kernel_cause}")
    return kp


def _interpreted(kp, arrays):
    res = [None] * kp.n
    compiler._run_steps(kp.steps, arrays, res, None)
    return compiler._build_out(kp.out, arrays, res)


def bench_shape(name, widths, batch, loss, steps, rounds):
    X, y = bt.make_data(widths, batch, loss, 4)
    model = bt.build_gpunn(widths, bt.build_torch(widths))
    loss_fn = gn.nn.CrossEntropyLoss() if loss == "ce" else gn.nn.MSELoss()
    step = bt.compiled_step(model, gn.optim.Adam(model.parameters(), lr=1e-3), loss_fn)
    x, t = gn.Tensor(X[:batch]), gn.Tensor(y[:batch])
    for _ in range(4):  # two traces, then replays (the straight-line function is written on the first)
        step(x, t)
    kp = _kernel_program(step)
    arrays = (x.data, t.data)
    replay = bt.best_rounds({"interpreter": lambda: _interpreted(kp, arrays), "straight-line": lambda: kp.run(arrays)},
                          rounds, steps)
    kinds = sum(st[0] == "k" for st in kp.steps)
    print(f"{name:28s} batch {batch:5d}  {len(kp.steps)} steps ({kinds} kernel calls)  best us/step: "
          f"interpreter {replay['interpreter']:.1f}, straight-line {replay['straight-line']:.1f}  "
          f"saved {replay['interpreter'] - replay['straight-line']:.1f} us "
          f"({replay['interpreter'] / replay['straight-line']:.3f}x)")
    # the first layer's forward GEMM, the step's largest freshly allocated output
    W = model[0].weight.data
    out = np.empty((batch, W.shape[0]), W.dtype)
    gemm = bt.best_rounds({"allocating": lambda: np.matmul(x.data, W.T),
                         "preallocated": lambda: np.matmul(x.data, W.T, out=out)}, rounds, max(50, steps * 2))
    print(f"{'':28s} GEMM {batch}x{W.shape[1]}x{W.shape[0]}: allocating its output {gemm['allocating']:.2f} us, "
          f"into a preallocated one {gemm['preallocated']:.2f} us")
    return replay, gemm


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--shape", help="only the shapes whose name contains this, e.g. 64-128")
    args = ap.parse_args(argv)
    print(f"blas: {bt.blas_info()}")
    print(f"OPENBLAS_CORETYPE: {os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"OPENBLAS_L2_SIZE: {os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}")
    for name, widths, batch, loss, steps in bt.SHAPES:
        if args.shape and args.shape not in name:
            continue
        bench_shape(name, widths, batch, loss, steps, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
