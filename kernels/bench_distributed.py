"""Data-parallel costs on MPI ranks: gradient averaging vs a bare mpi4py Allreduce, and step time.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python kernels/bench_distributed.py

Starts itself under `mpiexec -n N` (the one next to this Python first) and prints, per N:
- "average": DistributedDataParallel's gradient average of the 784-512-512-10 MLP's flat gradient
  buffer (its real path: nonblocking Iallreduce per bucket polled against the deadline, then the
  division by N) vs `comm.Allreduce(MPI.IN_PLACE, buf)` on a float32 buffer of the same bytes, in
  alternating rounds of a few tenths of a second; best rounds and their ratio (target <= 1.2).
- "step": one training step (forward, backward with the average, Adam) at a fixed per-rank batch,
  for 1, 2 and 4 ranks, beside the ring-allreduce bound 2(n-1)/n x bytes / bandwidth, where the
  bandwidth is a Sendrecv ping-pong of the same bytes between ranks 0 and 1 measured in the run.
On a 2-core machine 4 ranks oversubscribe the cores (each rank gets one BLAS thread at 2 ranks and
shares a core at 4); the table says so.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

WIDTHS = [784, 512, 512, 10]
BATCH = 64  # per rank
ROUND_S = 0.3
ROUNDS = 7


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return "; ".join(f"{p.get('internal_api')} {p.get('version')} threads={p.get('num_threads')}"
                     for p in threadpool_info() if p.get("user_api") == "blas") or "no BLAS found"


def _rounds(comm, fns, round_s=ROUND_S, rounds=ROUNDS):
    """Best per-call seconds of each fn over alternating rounds; every rank runs the same count
    (rank 0's, broadcast) so that the collectives match."""
    from mpi4py import MPI

    best = [float("inf")] * len(fns)
    for fn in fns:  # warm up, and size a round from rank 0's first calls
        fn()
    reps = []
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        k = max(3, int(round_s / max(time.perf_counter() - t0, 1e-6)))
        reps.append(comm.bcast(k, root=0))
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(reps[i]):
                fn()
            dt = comm.allreduce((time.perf_counter() - t0) / reps[i], op=MPI.MAX)  # the slowest rank
            best[i] = min(best[i], dt)
    return best


def _model():
    import gpunn as gn
    from gpunn import nn

    gn.manual_seed(0)
    mods = [nn.Dense(a, b) for a, b in zip(WIDTHS[:-2], WIDTHS[1:-1])] + [nn.Linear(WIDTHS[-2], WIDTHS[-1])]
    return nn.Sequential(*mods)


def worker() -> None:
    from mpi4py import MPI

    import gpunn as gn
    import gpunn.distributed as dist
    from gpunn import nn, optim

    dist.init_process_group("mpi")
    comm = MPI.COMM_WORLD
    rank, size = dist.get_rank(), dist.get_world_size()
    rng = np.random.default_rng(rank)
    X = rng.standard_normal((BATCH, WIDTHS[0])).astype(np.float32)
    y = rng.integers(0, WIDTHS[-1], BATCH)
    model = nn.parallel.DistributedDataParallel(_model())
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = gn.tensor(X), gn.tensor(y)

    def step():
        opt.zero_grad()
        loss_fn(model(xt), yt).backward()
        opt.step()

    step()
    flat = opt._flat[0].grad
    nbytes = flat.nbytes
    out = {"ranks": size, "bytes": nbytes, "buckets": len(model._buckets), "blas": blas_info()}
    if size > 1:
        bare = np.ones(flat.size, dtype=np.float32)
        average, allreduce = _rounds(comm, [model.sync_gradients,
                                            lambda: comm.Allreduce(MPI.IN_PLACE, bare, op=MPI.SUM)])
        out.update(average_s=average, allreduce_s=allreduce)
        buf = np.ones(flat.size, dtype=np.float32)

        def pingpong():  # ranks 0 and 1 swap the buffer; the others idle at the barrier
            if rank < 2:
                comm.Sendrecv_replace(buf, dest=1 - rank, source=1 - rank)

        (swap,) = _rounds(comm, [pingpong])
        out["p2p_GBps"] = nbytes / swap / 1e9  # both directions at once: bytes each way per swap time
    (out["step_s"],) = _rounds(comm, [step])
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)
    dist.destroy_process_group()


def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cores = len(os.sched_getaffinity(0))
    results = []
    for n in (1, 2, 4):
        proc = subprocess.run([mpiexec(), "-n", str(n), sys.executable, os.path.abspath(__file__), "--worker"],
                              env=env, capture_output=True, text=True, timeout=600)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"mpiexec -n {n} failed:\n{proc.stdout}\n{proc.stderr}")
        results.append(json.loads(lines[0][len("RESULT "):]))
    r1 = results[0]
    mb = r1["bytes"] / 1e6
    print(f"model {'-'.join(map(str, WIDTHS))} float32: gradient buffer {mb:.2f} MB, {r1['buckets']} bucket(s) "
          f"(bucket_cap_mb=25); per-rank batch {BATCH}; {cores} cores")
    for r in results:
        print(f"BLAS at {r['ranks']} rank(s): {r['blas']}")
    print()
    print(f"{'ranks':>5s} {'average ms':>11s} {'Allreduce ms':>13s} {'ratio':>6s} {'p2p GB/s':>9s} "
          f"{'ring bound ms':>14s} {'step ms':>8s} {'samples/s':>10s}  note")
    for r in results:
        n = r["ranks"]
        note = f"{n} ranks on {cores} cores: oversubscribed" if n > cores else ""
        if n == 1:
            print(f"{n:5d} {'-':>11s} {'-':>13s} {'-':>6s} {'-':>9s} {'-':>14s} {r['step_s'] * 1e3:8.2f} "
                  f"{BATCH / r['step_s']:10.0f}  {note}")
            continue
        bound = 2 * (n - 1) / n * r["bytes"] / (r["p2p_GBps"] * 1e9)
        print(f"{n:5d} {r['average_s'] * 1e3:11.3f} {r['allreduce_s'] * 1e3:13.3f} "
              f"{r['average_s'] / r['allreduce_s']:6.2f} {r['p2p_GBps']:9.2f} {bound * 1e3:14.3f} "
              f"{r['step_s'] * 1e3:8.2f} {n * BATCH / r['step_s']:10.0f}  {note}")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    else:
        main()
