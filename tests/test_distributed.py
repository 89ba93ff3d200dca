"""gpunn.distributed, DistributedDataParallel, fit and `gpunn train` over many processes.

The multi-process tests start `mpiexec -n 2` / `-n 4` (the venv's MPICH from the `test` extra, or
Open MPI with --allow-run-as-root --oversubscribe) on tests/distributed_scenarios.py with hard
timeouts; they skip when mpi4py or mpiexec is missing. The in-process tests need neither: the
autograd hooks DDP rides on, the launcher variables, DDP's buckets over a recording stand-in group,
and the NCCL backend's wiring over stand-ins for CuPy's NCCL (it has not run on a GPU here).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import gpunn as gn
import gpunn.distributed as dist
from gpunn import nn, optim
from gpunn.autograd.tensor import queue_callback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = os.path.join(ROOT, "tests", "distributed_scenarios.py")


def _mpiexec():
    """[mpiexec, flags...] or None: the one next to this Python (the mpich wheel) first."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = here if os.path.exists(here) else shutil.which("mpiexec")
    if exe is None:
        return None
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        return [exe, "--allow-run-as-root", "--oversubscribe"]
    return [exe]


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpi4py and mpiexec (pip install 'gpunn[mpi]')")


def mpirun(n, *args, timeout=90, module=False):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)  # let init_process_group share the cores (4 ranks on 2 cores)
    cmd = [*MPIEXEC, "-n", str(n), sys.executable, *(["-m", "gpunn"] if module else [SCENARIOS]), *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def assert_ok(proc, n, name):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for r in range(n):
        assert f"rank {r} ok {name}" in out, out


# ----------------------------------------------------------------------------- many processes

@needs_mpi
def test_collectives_and_ddp_on_2_ranks():
    """all_reduce (sum, avg)/broadcast/barrier; a hand-written DDP loop equals one process on the
    whole batch (float64), different seeds end with rank 0's weights, bitwise the same on all."""
    proc, _ = mpirun(2, "collectives")
    assert_ok(proc, 2, "collectives")
    proc, _ = mpirun(2, "ddp")
    assert_ok(proc, 2, "ddp")


@needs_mpi
def test_fit_on_4_ranks_equals_one_process():
    """fit with short last batches (one leaves a rank an empty share), validation, metrics and
    early stopping decided together; 4 ranks oversubscribe 2 cores here."""
    proc, _ = mpirun(4, "fit", timeout=120)
    assert_ok(proc, 4, "fit")


@needs_mpi
def test_a_raising_rank_ends_the_job_quickly():
    proc, elapsed = mpirun(2, "raise", "60")
    err = proc.stderr
    report = f"exit {proc.returncode} after {elapsed:.1f} s\nstdout:\n{proc.stdout}\nstderr:\n{err}"
    assert proc.returncode != 0, report
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end (timeout 60 s)"
    assert "[rank 1] RuntimeError: deliberate failure on one rank" in err, report
    assert "rank 1 of 2: uncaught RuntimeError; aborting the job" in err, report
    assert "ok raise" not in proc.stdout, report


@needs_mpi
def test_a_hung_rank_ends_the_job_at_the_collective_timeout():
    proc, elapsed = mpirun(2, "hang", "2")
    assert proc.returncode != 0
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end (collective timeout 2 s)"
    assert "rank 0 of 2: all_reduce(sum, shape (3,), float64) did not complete within the collective timeout " \
           "of 2 s" in proc.stderr, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


@needs_mpi
def test_cli_train_under_mpiexec_prints_once_and_saves_on_rank_0(tmp_path):
    pytest.importorskip("sklearn")
    path = tmp_path / "ddp.safetensors"
    proc, _ = mpirun(2, "train", "--data", "digits", "--epochs", "2", "--seed", "3", "--no-progress",
                     "--save", str(path), module=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "2 processes (mpi)" in out
    for line in ("data: digits", "trained 2 epochs", "train: loss", "test:  loss", "saved checkpoint"):
        assert out.count(line) == 1, out
    # the same run in one process: the same figures, to float32 rounding (which may move a
    # borderline prediction: a few samples of accuracy)
    env = dict(os.environ, PYTHONPATH=ROOT)
    single = subprocess.run([sys.executable, "-m", "gpunn", "train", "--data", "digits", "--epochs", "2",
                             "--seed", "3", "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=90)
    figures = lambda text: [float(w.strip(",")) for ln in text.splitlines()  # noqa: E731
                            if ln.startswith(("train:", "test:")) for w in ln.split()[2::2]]
    ddp, one = figures(out), figures(single.stdout)
    assert len(ddp) == len(one) == 4, (out, single.stdout)
    np.testing.assert_allclose(ddp, one, atol=3 / 360 + 1e-4)
    model = nn.Sequential(nn.Dense(64, 128), nn.Linear(128, 10))
    assert gn.load(str(path), model=model)["epoch"] == 2  # the replica's keys, no "module." prefix


@needs_mpi
def test_cli_error_on_ranks_names_the_rank_and_fails():
    proc, elapsed = mpirun(2, "train", "--data", "xor", "--layers", "2,8,3", "--epochs", "1", module=True,
                           timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "gpunn: error: rank " in proc.stderr and "of 2: --layers 2,8,3 does not fit" in proc.stderr


# ----------------------------------------------------------------------------- in one process

def test_post_accumulate_grad_hook_and_queue_callback():
    a = gn.tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = gn.tensor(np.array([3.0]), requires_grad=True)
    seen = []

    def hook(t):
        seen.append(("hook", t is a, t.grad.numpy().copy()))
        if len(seen) == 1:
            queue_callback(lambda: seen.append(("end",)))

    handle = a.register_post_accumulate_grad_hook(hook)
    ((a * a).sum() + (a * b).sum()).backward()  # two paths into a: the hook sees the summed gradient
    assert len(seen) == 2 and seen[0][1] is True and seen[1] == ("end",)
    np.testing.assert_array_equal(seen[0][2], 2 * np.array([1.0, 2.0]) + 3.0)
    handle.remove()
    (a * a).sum().backward()
    assert len(seen) == 2
    with pytest.raises(RuntimeError, match="only valid during a backward pass"):
        queue_callback(lambda: None)
    with pytest.raises(RuntimeError, match="non-leaf"):
        (a * 2).register_post_accumulate_grad_hook(hook)


@pytest.mark.parametrize("env, want", [
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
     (3, 4, 1, "Open MPI")),
    ({"PMI_RANK": "2", "PMI_SIZE": "3", "MPI_LOCALRANKID": "0"}, (2, 3, 0, "MPICH (Hydra)")),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}, (5, 8, 1, "Slurm")),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, (1, 2, 1, "torchrun-style environment")),
    ({"PMIX_RANK": "0"}, (0, None, None, "PMIx")),
    ({}, (None, None, None, None)),
])
def test_launch_info_reads_each_launcher(env, want):
    info = dist.launch_info(env)
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == want


def test_launch_info_rejects_bad_values():
    with pytest.raises(ValueError, match="RANK='x'"):
        dist.launch_info({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="PMI_RANK=4 is not below PMI_SIZE=4"):
        dist.launch_info({"PMI_RANK": "4", "PMI_SIZE": "4"})


def test_api_errors_without_a_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        dist.all_reduce(gn.tensor(np.ones(2)))
    with pytest.raises(RuntimeError, match="init_process_group"):
        nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown backend 'gloo'"):
        dist.init_process_group("gloo")
    with pytest.raises(ValueError, match="timeout must be a positive"):
        dist.init_process_group("mpi", timeout=0)
    with pytest.raises(TypeError, match="only backend and timeout"):
        dist.init_process_group("mpi", world_size=2)


class _RecordingGroup:
    """A stand-in process group of `size` ranks whose collectives complete at once, recording the
    arrays they were given and whether a backward pass was still running (overlap)."""

    name = "mpi"

    def __init__(self, size=2):
        self.rank, self.size, self.calls = 0, size, []

    def start_all_reduce(self, array, what="", average=False):
        from gpunn.autograd.tensor import _end_callbacks

        self.calls.append((array, average, _end_callbacks.get() is not None))
        return types.SimpleNamespace(test=lambda: True, finish=lambda: None)

    def start_broadcast(self, array, src, what=""):
        return types.SimpleNamespace(test=lambda: True, finish=lambda: None)

    def wait(self, pending, what):
        pending.finish()


@pytest.fixture
def recording_group(monkeypatch):
    group = _RecordingGroup()
    monkeypatch.setattr(dist, "_group", group)
    return group


def test_ddp_reduces_slices_of_the_optimizers_gradient_buffer(recording_group):
    gn.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)),
                                                bucket_cap_mb=30 * 4 / 2**20)
    opt = optim.SGD(model.parameters(), lr=0.1)
    flat = opt._flat[0].grad
    x = gn.tensor(np.ones((2, 4), dtype=np.float32))
    model(x).sum().backward()
    calls = recording_group.calls
    # w1 32, b1 8, w2 24, b2 3 values from the end of the buffer, at most 30 per bucket (a lone
    # parameter may exceed it): [w2 b2], [b1], [w1]
    assert [a.size for a, _, _ in calls] == [27, 8, 32]
    assert all(np.shares_memory(a, flat) for a, _, _ in calls)  # no copy: slices of the flat buffer
    assert all(avg for _, avg, _ in calls)
    assert all(during for _, _, during in calls[:-1])  # started while backward was still walking
    assert sum(a.size for a, _, _ in calls) == flat.size
    for p in model.parameters():
        assert p.grad is not None and np.shares_memory(p.grad.data, flat)
    calls.clear()
    with model.no_sync():
        model(x).sum().backward()
    assert calls == []
    model.sync_gradients()  # a rank with no rows: every bucket, in order
    assert [a.size for a, _, _ in calls] == [27, 8, 32]


def test_ddp_one_bucket_per_buffer_and_without_optimizer(recording_group):
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), bucket_cap_mb=None)
    x = gn.tensor(np.ones((2, 4), dtype=np.float32))
    model(x).sum().backward()  # no optimizer yet: each gradient is its own collective
    assert sorted(a.size for a, _, _ in recording_group.calls) == [3, 8, 24, 32]
    recording_group.calls.clear()
    opt = optim.Adam(model.parameters(), lr=0.1)
    opt.zero_grad()
    model(x).sum().backward()
    assert [a.size for a, _, _ in recording_group.calls] == [67]
    assert recording_group.calls[0][0] is not opt._flat[0].grad and np.shares_memory(
        recording_group.calls[0][0], opt._flat[0].grad)


# ----------------------------------------------------------------------------- NCCL stand-ins

class _FakeArray:
    """Enough of a CuPy array for the NCCL backend: module name, pointer, size, dtype, flags."""

    __module__ = "cupy._core.core"

    def __init__(self, size, dtype=np.float32, ptr=0x1000):
        self.size, self.dtype, self.shape = size, np.dtype(dtype), (size,)
        self.flags = types.SimpleNamespace(c_contiguous=True)
        self.data = types.SimpleNamespace(ptr=ptr)


def _fake_cupy_nccl(done=True):
    log = []

    class Event:
        def __init__(self, block, disable_timing):
            self.done = done

        def record(self, stream):
            log.append(("record", stream.ptr))

    class Comm:
        def __init__(self, n, uid, rank):
            log.append(("comm", n, uid, rank))

        def allReduce(self, send, recv, count, dtype, op, stream):
            log.append(("allReduce", send, recv, count, dtype, op, stream))

        def bcast(self, buf, count, dtype, root, stream):
            log.append(("bcast", buf, count, dtype, root, stream))

        def check_async_error(self):
            pass

        def abort(self):
            log.append(("comm.abort",))

        def destroy(self):
            log.append(("destroy",))

    stream = types.SimpleNamespace(ptr=0xABC)
    cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 2),
        Device=lambda i: types.SimpleNamespace(use=lambda: log.append(("device", i))),
        get_current_stream=lambda: stream, Event=Event)
    nccl = types.SimpleNamespace(available=True, get_unique_id=lambda: (7,) * 128, NcclCommunicator=Comm,
                                 NCCL_SUM=0, NCCL_AVG=4, NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_INT64=4)
    return types.SimpleNamespace(cuda=cuda), nccl, log


class _FakeMPI:
    def __init__(self, rank, size, local_rank):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.sent, self.aborted = [], []

    def bcast_object(self, obj, src):
        self.sent.append((obj, src))
        return (7,) * 128  # rank 0's id, as MPI would deliver it

    def abort(self, code):
        self.aborted.append(code)

    def start_all_reduce(self, array, what, average=False):
        raise AssertionError("a CuPy array must not go over MPI on the NCCL backend")

    def destroy(self):
        pass


def test_nccl_backend_wiring_over_stand_ins():
    """Unique id from rank 0 over MPI, the GPU of the local rank, collectives on CuPy's current
    stream with NCCL's dtype and AVG, the host not waiting. Stand-ins: no GPU has run this."""
    from gpunn.distributed._backends import NCCLBackend

    cupy, nccl, log = _fake_cupy_nccl()
    mpi = _FakeMPI(rank=1, size=4, local_rank=3)
    be = NCCLBackend(5.0, mpi, nccl=nccl, cupy=cupy)
    try:
        assert mpi.sent == [(None, 0)]  # rank 1 receives the id rank 0 sends
        assert ("device", 1) in log and ("comm", 4, (7,) * 128, 1) in log  # local rank 3 % 2 GPUs
        a = _FakeArray(10, np.float32, ptr=0x2000)
        be.wait(be.start_all_reduce(a, "x", average=True), "x")
        be.wait(be.start_all_reduce(_FakeArray(3, np.float64, ptr=0x3000), "y"), "y")
        be.wait(be.start_broadcast(_FakeArray(5, np.int64, ptr=0x4000), 0), "z")
        assert ("allReduce", 0x2000, 0x2000, 10, 7, 4, 0xABC) in log
        assert ("allReduce", 0x3000, 0x3000, 3, 8, 0, 0xABC) in log
        assert ("bcast", 0x4000, 5, 4, 0, 0xABC) in log
        assert log.count(("record", 0xABC)) == 3
        with pytest.raises(TypeError, match="NCCL cannot reduce dtype complex64"):
            be.start_all_reduce(_FakeArray(2, np.complex64), "c")
    finally:
        be.destroy()


def test_nccl_average_without_ncclavg_sums_then_divides_on_the_stream():
    """NCCL before 2.10 has no ncclAvg: SUM, then one division queued after it."""
    from gpunn.distributed._backends import NCCLBackend

    cupy, nccl, log = _fake_cupy_nccl()
    del nccl.NCCL_AVG
    cupy.divide = lambda a, b, out: log.append(("divide", a.data.ptr, b, out is a))
    be = NCCLBackend(5.0, _FakeMPI(rank=0, size=4, local_rank=0), nccl=nccl, cupy=cupy)
    try:
        a = _FakeArray(6, np.float64, ptr=0x5000)
        be.wait(be.start_all_reduce(a, "avg", average=True), "avg")
        assert log[-3:] == [("allReduce", 0x5000, 0x5000, 6, 8, 0, 0xABC), ("record", 0xABC),
                            ("divide", 0x5000, 4, True)]
    finally:
        be.destroy()


def test_nccl_watchdog_aborts_a_collective_past_its_deadline(capsys):
    from gpunn.distributed._backends import NCCLBackend

    cupy, nccl, log = _fake_cupy_nccl(done=False)  # the collective never completes
    mpi = _FakeMPI(rank=0, size=2, local_rank=0)
    be = NCCLBackend(0.2, mpi, nccl=nccl, cupy=cupy)
    try:
        be.wait(be.start_all_reduce(_FakeArray(4), "all_reduce(sum)"), "all_reduce(sum)")  # returns at once
        deadline = time.monotonic() + 5
        while not mpi.aborted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mpi.aborted and mpi.aborted[0] == 1
        assert ("comm.abort",) in log
        assert "rank 0 of 2: all_reduce(sum) did not complete within the collective timeout of 0.2 s" \
            in capsys.readouterr().err
    finally:
        be._stop.set()
