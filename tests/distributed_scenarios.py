"""Scenarios that tests/test_distributed.py runs under `mpiexec -n N python distributed_scenarios.py NAME`.

Every rank checks its own results with assertions (an AssertionError aborts the whole job through
gpunn.distributed's excepthook, naming the rank) and prints "rank R ok NAME" at the end.
"""
from __future__ import annotations

import sys
import time

import numpy as np

import gpunn as gn
import gpunn.distributed as dist
from gpunn import nn, optim
from gpunn.data import permutation
from gpunn.train import EarlyStopping, TrainingDiverged, fit


def build(seed, sizes=(6, 16, 16, 3)):
    gn.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers).double()


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)), rng.integers(0, 3, n)


def weights(model):
    return [p.numpy().copy() for p in model.parameters()]


def assert_same_on_all_ranks(arrays):
    """Bitwise: every rank compares its arrays with rank 0's."""
    for a in arrays:
        t = gn.tensor(a.copy())
        dist.broadcast(t, 0)
        assert np.array_equal(t.numpy(), a), f"rank {dist.get_rank()} differs from rank 0"


def close(a_list, b_list, what):
    for a, b in zip(a_list, b_list):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13, err_msg=what)


def scenario_collectives():
    r, w = dist.get_rank(), dist.get_world_size()
    t = gn.tensor(np.arange(5.0) * (r + 1))
    dist.all_reduce(t)
    assert np.array_equal(t.numpy(), np.arange(5.0) * w * (w + 1) / 2)
    t = gn.tensor(np.full((2, 3), float(r), dtype=np.float32))
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    assert t.dtype == np.float32 and np.allclose(t.numpy(), (w - 1) / 2)
    t = gn.tensor(np.full(4, r, dtype=np.int64))
    dist.broadcast(t, src=w - 1)
    assert np.array_equal(t.numpy(), np.full(4, w - 1))
    before = time.monotonic()
    if r == 0:
        time.sleep(0.3)
    dist.barrier()
    assert time.monotonic() - before >= 0.29, "a rank left the barrier before rank 0 reached it"


def scenario_ddp():
    """Manual training loop: DDP on shares of each global batch equals one process on the whole
    batch; ranks started from different seeds end with rank 0's weights, bitwise identical."""
    r, w = dist.get_rank(), dist.get_world_size()
    X, y = data(8 * w)
    ref = build(1000)  # rank 0's replica
    ref_opt = optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    replica = build(1000 + r)  # different on every rank: the wrap must broadcast rank 0's
    rank0 = weights(build(1000))
    assert r == 0 or not np.array_equal(weights(replica)[0], rank0[0])
    model = nn.parallel.DistributedDataParallel(replica, bucket_cap_mb=300 * 8 / 2**20)  # several buckets
    assert all(np.array_equal(a, b) for a, b in zip(weights(replica), rank0))
    assert model.module is replica
    assert list(model.state_dict()) == ["module." + k for k in replica.state_dict()]
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(4):
        rows = slice(step % 2 * 4 * w, (step % 2 + 1) * 4 * w)
        xb, yb = X[rows], y[rows]
        opt.zero_grad()
        loss_fn(model(gn.tensor(xb[r * 4:(r + 1) * 4])), gn.tensor(yb[r * 4:(r + 1) * 4])).backward()
        opt.step()
        ref_opt.zero_grad()
        loss_fn(ref(gn.tensor(xb)), gn.tensor(yb)).backward()
        ref_opt.step()
    assert len(model._buckets) > 1
    close(weights(replica), weights(ref), "DDP differs from one process on the whole batch")
    assert_same_on_all_ranks(weights(replica))
    # no_sync accumulates local gradients; the next synced backward averages the sum
    opt.zero_grad()
    xb, yb = X[r * 4:(r + 1) * 4], y[r * 4:(r + 1) * 4]
    with model.no_sync():
        loss_fn(model(gn.tensor(xb)), gn.tensor(yb)).backward()
    local = [p.grad.numpy().copy() for p in model.parameters()]
    loss_fn(model(gn.tensor(xb)), gn.tensor(yb)).backward()
    for g, p in zip(local, model.parameters()):
        t = gn.tensor(2 * g)
        dist.all_reduce(t, "avg")
        np.testing.assert_allclose(p.grad.numpy(), t.numpy(), rtol=1e-12, atol=1e-15)


def scenario_fit():
    """fit on all ranks equals fit in one process: a short last batch (37 = 4*8 + 5 rows, and 35
    = 4*8 + 3 on 4 ranks leaves one rank an empty share), validation, metrics, early stopping;
    divergence on one rank's share stops every rank."""
    r = dist.get_rank()
    for n in (37, 35):
        X, y = data(n, seed=n)
        Xv, yv = data(13, seed=1)
        single = build(50)  # rank 0's replica
        single_opt = optim.Adam(single.parameters(), lr=0.05)
        replica = build(50 + r)
        model = nn.parallel.DistributedDataParallel(replica)
        opt = optim.Adam(model.parameters(), lr=0.05)
        stop = EarlyStopping(monitor="loss", patience=0, min_delta=1e9)  # stops after epoch 2
        h = fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=4, batch_size=8, validation=(Xv, yv),
                seed=11 + r, progress=True, callbacks=[stop])  # the bar shows on rank 0 only (and not off a tty)
        assert h.seed == 11, h.seed  # rank 0's seed
        assert len(h) == 2, h.epochs
        assert_same_on_all_ranks(weights(replica))
        group = dist._group
        dist._group = None  # the reference runs alone (the process group stays up underneath)
        try:
            hs = fit(single, nn.CrossEntropyLoss(), single_opt, X, y, epochs=2, batch_size=8,
                     validation=(Xv, yv), seed=11, progress=False)
        finally:
            dist._group = group
        close(weights(replica), weights(single), f"fit on ranks differs from one process (n={n})")
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(h.history[key], hs.history[key], rtol=1e-11, err_msg=key)
    # a finite target whose squared error overflows, in rank 0's share of epoch 0's second step
    # only: every rank stops at that step (decided on the loss summed over ranks), weights equal
    X, _ = data(64, seed=2)
    t = np.random.default_rng(3).normal(size=(64, 3))
    t[permutation(64, [7, 0])[8]] = 1e200
    replica = build(0)
    model = nn.parallel.DistributedDataParallel(replica)
    try:
        with np.errstate(all="ignore"):
            fit(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.1), X, t, epochs=1, batch_size=8,
                seed=7, progress=False)
    except TrainingDiverged as err:
        assert (err.epoch, err.step, err.what) == (0, 1, "loss"), (err.epoch, err.step, err.what)
    else:
        raise AssertionError("no rank saw the divergence")
    assert all(np.isfinite(w).all() for w in weights(replica))
    assert_same_on_all_ranks(weights(replica))
    try:
        fit(build(0), nn.CrossEntropyLoss(), optim.SGD(build(0).parameters(), lr=0.1), *data(16))
    except ValueError as err:
        assert "DistributedDataParallel" in str(err)
    else:
        raise AssertionError("fit accepted an unwrapped model on several ranks")


def scenario_raise():
    dist.barrier()
    if dist.get_rank() == 1:
        raise RuntimeError("deliberate failure on one rank")
    dist.barrier()  # the other ranks would wait here forever without the excepthook's abort


def scenario_hang():
    if dist.get_rank() == 1:
        time.sleep(120)
    dist.all_reduce(gn.tensor(np.ones(3)))


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items() if name.startswith("scenario_")}

if __name__ == "__main__":
    name = sys.argv[1]
    dist.init_process_group(timeout=float(sys.argv[2]) if len(sys.argv) > 2 else 60)
    SCENARIOS[name]()
    print(f"rank {dist.get_rank()} ok {name}", flush=True)
    dist.destroy_process_group()
