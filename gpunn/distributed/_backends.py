"""The engines that carry the bytes: MPI (mpi4py) and NCCL (CuPy's `cupy.cuda.nccl`).

Every collective is started nonblocking and returns a pending handle; `wait` polls it against the
group's deadline and, past it, prints which collective on which rank timed out and aborts the whole
job (MPI_Abort; for NCCL, ncclCommAbort first). Nothing here blocks without a deadline, so a dead
or hung rank cannot leave the others waiting forever.

MPI wheels are not CUDA-aware: on the MPI backend a CuPy array goes through the host. On the NCCL
backend collectives are enqueued on CuPy's current stream (where gpunn's kernels run), so the host
never waits for them; a watchdog thread polls their completion events against the deadline.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

from gpunn.backend import is_cupy_array

__all__ = ["MPIBackend", "NCCLBackend"]


# Seconds between printing the reason and aborting. The launcher forwards a rank's output through
# its own proxies, and an abort kills them: with no pause a loaded machine can lose every line the
# failing rank printed (seen in CI: an empty stderr from a job that aborted correctly).
ABORT_GRACE_S = 1.0


def fail(rank: int, size: int, message: str, abort) -> None:
    """Print `message` naming the rank, then end the whole job (`abort_after_grace(abort, 1)`)."""
    try:
        sys.stderr.write(f"gpunn.distributed: rank {rank} of {size}: {message}; aborting the job\n")
    except Exception:  # pragma: no cover - a closed stderr must not stop the abort
        pass
    abort_after_grace(abort, 1)


def abort_after_grace(abort, status: int) -> None:
    """Flush what this rank printed, give the launcher `ABORT_GRACE_S` to forward it, then end the
    whole job through `abort(status)`."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # pragma: no cover - a closed stream must not stop the abort
            pass
    time.sleep(ABORT_GRACE_S)
    abort(status)


class _Done:
    """A pending handle that is complete already (a world of one rank, or an empty array)."""

    def test(self) -> bool:
        return True

    def finish(self) -> None:
        pass


class _MPIPending:
    __slots__ = ("req", "after")

    def __init__(self, req, after=None):
        self.req, self.after = req, after

    def test(self) -> bool:
        return self.req.Test()

    def finish(self) -> None:
        if self.after is not None:
            self.after()


class MPIBackend:
    """Collectives over MPI_COMM_WORLD (a duplicate, so a user's own MPI calls never match ours)."""

    name = "mpi"

    def __init__(self, timeout: float, local_rank=None):
        try:
            from mpi4py import MPI
        except ImportError as err:
            raise ImportError(f"the MPI backend needs mpi4py ({err}); install it with pip install 'gpunn[mpi]' "
                              "(mpi4py and the mpich wheel), or build mpi4py against the cluster's MPI: "
                              "see the README, 'Many processes'") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.timeout = float(timeout)
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # the processes sharing this node's memory
        self.local_size = node.Get_size()
        self.local_rank = int(node.Get_rank() if local_rank is None else local_rank)
        node.Free()

    # ------------------------------------------------------------------ start
    def _buffer(self, array, what):
        if not array.flags.c_contiguous:
            raise ValueError(f"{what}: the tensor must be contiguous (shape {array.shape}, strides {array.strides})")
        if is_cupy_array(array):  # MPI wheels are not CUDA-aware: stage through the host
            host = array.get()
            return host, (lambda: array.set(host))
        return array, None

    def start_all_reduce(self, array, what="all_reduce", average=False):
        """Sum (with `average`: sum, then divide by the world size) `array` over ranks in place,
        nonblocking; returns a pending handle for `wait`."""
        if self.size == 1 or array.size == 0:
            return _Done()
        buf, copy_back = self._buffer(array, what)
        after = copy_back
        if average:
            def after():
                np.divide(buf, self.size, out=buf)
                if copy_back is not None:
                    copy_back()
        return _MPIPending(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), after)

    def start_broadcast(self, array, src: int, what="broadcast"):
        if self.size == 1 or array.size == 0:
            return _Done()
        buf, after = self._buffer(array, what)
        return _MPIPending(self.comm.Ibcast(buf, root=src), after if self.rank != src else None)

    def start_barrier(self):
        return _Done() if self.size == 1 else _MPIPending(self.comm.Ibarrier())

    # ------------------------------------------------------------------ wait / abort
    def wait(self, pending, what: str) -> None:
        """Complete `pending`, or abort the job once `timeout` seconds have passed. The poll spins
        briefly, then sleeps at most 1/20 of the time waited so far (<= 5 % added latency) so
        oversubscribed ranks leave each other the cores."""
        if not pending.test():
            start = time.monotonic()
            deadline = start + self.timeout
            spin_until = start + 2e-4
            while not pending.test():
                now = time.monotonic()
                if now > deadline:
                    fail(self.rank, self.size, f"{what} did not complete within the collective timeout of "
                         f"{self.timeout:g} s (another rank died, hung, or never reached it)", self.abort)
                if now > spin_until:
                    time.sleep(min(0.01, (now - start) / 20))
        pending.finish()

    def abort(self, code: int = 1) -> None:
        self.MPI.COMM_WORLD.Abort(code)
        os._exit(code)  # pragma: no cover - Abort does not return

    def bcast_object(self, obj, src: int = 0):
        """A small picklable object from `src` (sizes first, then the bytes, both with a deadline)."""
        import pickle

        data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if self.rank == src else None
        n = np.array([0 if data is None else data.size], dtype=np.int64)
        self.wait(self.start_broadcast(n, src), "broadcast of an object's size")
        buf = data.copy() if data is not None else np.empty(int(n[0]), dtype=np.uint8)
        self.wait(self.start_broadcast(buf, src), "broadcast of an object")
        return pickle.loads(buf.tobytes())

    def destroy(self) -> None:
        self.comm.Free()


# ----------------------------------------------------------------------------- NCCL

def _nccl_dtype(nccl, dtype):
    table = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
             "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8", "int8": "NCCL_INT8",
             "uint32": "NCCL_UINT32", "uint64": "NCCL_UINT64"}
    name = table.get(np.dtype(dtype).name)
    if name is None or not hasattr(nccl, name):
        raise TypeError(f"NCCL cannot reduce dtype {np.dtype(dtype)}; valid: {', '.join(table)}")
    return getattr(nccl, name)


class _NCCLPending:
    """A collective enqueued on a stream: complete for the host once its event has fired. The host
    need not wait (later kernels on the stream are ordered after it); the watchdog keeps the deadline."""

    __slots__ = ("event", "after")

    def __init__(self, event, after=None):
        self.event, self.after = event, after

    def test(self) -> bool:
        return self.event.done

    def finish(self) -> None:
        if self.after is not None:
            self.after()


class NCCLBackend:
    """Collectives over NCCL on the GPU of this process's local rank; the unique id is sent over
    MPI (ChainerMN's start-up). NumPy arrays (host scalars, flags) go over the MPI backend."""

    name = "nccl"

    def __init__(self, timeout: float, mpi: MPIBackend, nccl=None, cupy=None):
        if cupy is None:
            import cupy
        if nccl is None:
            try:
                from cupy.cuda import nccl
            except ImportError as err:
                raise ImportError(f"the NCCL backend needs CuPy's NCCL ({err}); install the nvidia-nccl wheel "
                                  "for your CUDA version (e.g. pip install nvidia-nccl-cu12)") from None
        if not getattr(nccl, "available", True):
            raise ImportError("the NCCL backend needs CuPy built with NCCL (cupy.cuda.nccl.available is False); "
                              "install the nvidia-nccl wheel for your CUDA version")
        self.cupy, self.nccl, self.mpi = cupy, nccl, mpi
        self.rank, self.size, self.timeout = mpi.rank, mpi.size, float(timeout)
        self.local_rank = mpi.local_rank
        count = cupy.cuda.runtime.getDeviceCount()
        self.device_index = self.local_rank % count
        cupy.cuda.Device(self.device_index).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = mpi.bcast_object(uid, 0)
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._avg = getattr(nccl, "NCCL_AVG", None)
        self._watch = []  # (pending, deadline, what)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watchdog, name="gpunn-nccl-watchdog", daemon=True)
        self._thread.start()

    def _enqueue(self, launch, what, after=None):
        stream = self.cupy.cuda.get_current_stream()
        launch(stream.ptr)
        event = self.cupy.cuda.Event(block=False, disable_timing=True)
        event.record(stream)
        pending = _NCCLPending(event, after)
        with self._lock:
            self._watch.append((pending, time.monotonic() + self.timeout, what))
        return pending

    def start_all_reduce(self, array, what="all_reduce", average=False):
        """Sum (or, with `average`, average) `array` over ranks in place, on the current stream."""
        if not is_cupy_array(array):
            return self.mpi.start_all_reduce(array, what, average)
        if not array.flags.c_contiguous:
            raise ValueError(f"{what}: the tensor must be contiguous (shape {array.shape})")
        if array.size == 0:
            return _Done()
        dt = _nccl_dtype(self.nccl, array.dtype)
        op = self._avg if average and self._avg is not None else self.nccl.NCCL_SUM
        ptr = array.data.ptr
        after = None
        if average and self._avg is None:  # an NCCL older than 2.10: sum, then scale on the stream
            def after():
                self.cupy.divide(array, self.size, out=array)
        return self._enqueue(lambda s: self.comm.allReduce(ptr, ptr, array.size, dt, op, s), what, after)

    def start_broadcast(self, array, src: int, what="broadcast"):
        if not is_cupy_array(array):
            return self.mpi.start_broadcast(array, src, what)
        if array.size == 0:
            return _Done()
        dt = _nccl_dtype(self.nccl, array.dtype)
        ptr = array.data.ptr
        return self._enqueue(lambda s: self.comm.bcast(ptr, array.size, dt, src, s), what)

    def start_barrier(self):
        return self.mpi.start_barrier()

    def wait(self, pending, what: str) -> None:
        if isinstance(pending, _NCCLPending):
            pending.finish()  # stream-ordered: the host goes on; the watchdog keeps the deadline
        else:
            self.mpi.wait(pending, what)

    def _watchdog(self) -> None:
        while not self._stop.wait(0.05):
            with self._lock:
                items = list(self._watch)
            done = []
            for item in items:
                pending, deadline, what = item
                try:
                    if pending.test():
                        done.append(item)
                        continue
                    self.comm.check_async_error()
                except Exception as err:  # an NCCL error on this communicator
                    fail(self.rank, self.size, f"{what} failed in NCCL: {err}", self.abort)
                if time.monotonic() > deadline:
                    fail(self.rank, self.size, f"{what} did not complete within the collective timeout of "
                         f"{self.timeout:g} s (another rank died, hung, or never reached it)", self.abort)
            if done:
                with self._lock:
                    self._watch = [x for x in self._watch if x not in done]

    def abort(self, code: int = 1) -> None:
        try:
            self.comm.abort()  # frees the GPU from kernels waiting on peers that will never come
        finally:
            self.mpi.abort(code)

    def destroy(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self.comm.destroy()
        self.mpi.destroy()
