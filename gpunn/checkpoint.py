"""Checkpoints: one safetensors file holding a model, optionally its optimizer and scheduler.

    gn.save(model, "ck.safetensors", optimizer=opt, scheduler=sched, metadata={"epoch": 10})
    meta = gn.load("ck.safetensors", model, optimizer=opt, scheduler=sched)   # meta["epoch"] == 10

Layout (read by any safetensors reader; nothing is ever unpickled):
- tensors: the model's state dict under "model.<key>" (PyTorch's keys, e.g. "model.0.weight");
  optimizer state tensors under "optimizer.state.<i>.<name>" ("optimizer.state.0.exp_avg"); any
  array inside the scheduler state or the metadata under "scheduler.<path>" / "metadata.<path>".
- `__metadata__` (string values): "format" = "gpunn.checkpoint", "format_version", "gpunn_version",
  "model" (JSON list of the model's keys, in order), "optimizer" / "scheduler" / "metadata"
  (JSON of the rest of each state: param_groups, step counts, scheduler counters; arrays appear as
  {"__tensor__": name}, tuples as {"__tuple__": [...]}, sets as {"__set__": [...]}, dicts with
  non-string keys, such as the optimizer's per-parameter "state", and Counter/OrderedDict as
  {"__items__": [[key, value], ...]}), and "sha256",
  a digest of every tensor (name, dtype, shape, bytes) and every other metadata entry. The digest
  catches corruption (a flipped bit in the data or header); it is not a signature.

Saving is atomic: the file is written to a temporary file in the same directory, flushed and
fsync'ed, then moved over the target with os.replace, so a crash leaves the old checkpoint whole.
Loading refuses (CheckpointError naming the path) anything truncated, damaged, or not a
safetensors file, and reports keys or shapes that do not fit the model or optimizer. A plain
safetensors file without gpunn's metadata (e.g. `safetensors.torch.save_file(model.state_dict())`
from PyTorch) loads as a model state dict.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter, OrderedDict
from collections.abc import Mapping

import numpy as np

from gpunn.backend import is_cupy_array

__all__ = ["save", "load", "CheckpointError", "FORMAT", "FORMAT_VERSION"]

FORMAT = "gpunn.checkpoint"
FORMAT_VERSION = "1"
_OWN_KEYS = ("format", "format_version", "gpunn_version", "model", "optimizer", "scheduler", "metadata", "sha256")
RESERVED = ("state_dict", "optimizer_state_dict", "scheduler_state_dict")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing pieces, damaged, not a safetensors file, or does not fit the
    model/optimizer/scheduler it is loaded into. The message names the file."""


# ----------------------------------------------------------------------------- encoding

def _tensor_type():
    from gpunn.autograd.tensor import Tensor

    return Tensor


def _host(value, what: str) -> np.ndarray:
    """A state value as a C-contiguous NumPy array (GPU arrays are copied to the host)."""
    Tensor = _tensor_type()
    if isinstance(value, Tensor):
        value = value.data
    if is_cupy_array(value):
        value = value.get()
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"cannot store {what}: expected an array or gpunn Tensor, got {type(value).__name__}")
    if value.dtype.kind not in "biuf":
        raise TypeError(f"cannot store {what}: dtype {value.dtype} is not a bool, integer or float dtype")
    if not value.flags.c_contiguous:
        value = value.copy(order="C")
    return value


def _encode(obj, path: str, tensors: dict):
    """obj as JSON-able data; arrays go into `tensors` under `path` and leave a reference."""
    Tensor = _tensor_type()
    if isinstance(obj, (Tensor, np.ndarray, np.generic)) or is_cupy_array(obj):
        if path in tensors:
            raise ValueError(f"two entries of the state map to the tensor name {path!r}")
        kind = "Tensor" if isinstance(obj, Tensor) else "scalar" if isinstance(obj, np.generic) else "array"
        tensors[path] = _host(obj, f"{path!r}")
        return {"__tensor__": path, "type": kind}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        try:
            members = sorted(obj)
        except TypeError:
            raise TypeError(f"cannot store {path!r}: a set of unorderable values") from None
        return {"__set__": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(members)]}
    if isinstance(obj, Mapping):
        kind = "Counter" if isinstance(obj, Counter) else "OrderedDict" if isinstance(obj, OrderedDict) else None
        plain = kind is None and all(isinstance(k, str) and not k.startswith("__") for k in obj)
        if plain:
            return {k: _encode(v, f"{path}.{k}", tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise TypeError(f"cannot store {path!r}: dict key {k!r} is not a string or number")
            items.append([k, _encode(v, f"{path}.{k}", tensors)])
        return {"__items__": items, "type": kind} if kind else {"__items__": items}
    raise TypeError(f"cannot store {path!r}: values of type {type(obj).__name__} are not supported in a "
                    "checkpoint (arrays, numbers, strings, None, lists, tuples and dicts are; nothing is pickled)")


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        name = obj["__tensor__"]
        if name not in tensors:
            raise KeyError(f"tensor {name!r} is referenced but missing")
        arr = tensors[name]
        kind = obj.get("type", "array")
        if kind == "Tensor":
            return _tensor_type()(arr)
        if kind == "scalar":
            return arr[()]
        return arr
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__set__" in obj:
        return {_decode(v, tensors) for v in obj["__set__"]}
    if "__items__" in obj:
        kind = {"Counter": Counter, "OrderedDict": OrderedDict}.get(obj.get("type"), dict)
        return kind((k, _decode(v, tensors)) for k, v in obj["__items__"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _digest(tensors: dict, meta: dict) -> str:
    h = hashlib.sha256()

    def put(b: bytes):
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)

    for name in sorted(tensors):
        a = tensors[name]
        put(name.encode())
        put(a.dtype.str.encode())
        put(repr(tuple(a.shape)).encode())
        put(np.ascontiguousarray(a).view(np.uint8).reshape(-1).tobytes() if a.size else b"")
    for key in sorted(meta):
        if key != "sha256":
            put(key.encode())
            put(meta[key].encode())
    return h.hexdigest()


def _json(obj, what: str) -> str:
    try:
        return json.dumps(obj, allow_nan=True, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise TypeError(f"cannot store {what} in a checkpoint: {err}") from None


# ----------------------------------------------------------------------------- save

def _model_state(obj):
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        return obj
    raise TypeError(f"gn.save expects a Module or a state dict (a mapping of name -> array), "
                    f"got {type(obj).__name__}")


def save(model_or_state_dict, path, optimizer=None, scheduler=None, metadata=None) -> None:
    """Write a model (or a state dict), and optionally its optimizer's and scheduler's state and a
    metadata dict (numbers, strings, lists, dicts, arrays; e.g. {"epoch": 10}), to one safetensors
    file at `path`, atomically (see the module docstring)."""
    tensors: dict = {}
    keys = []
    for key, value in _model_state(model_or_state_dict).items():
        if not isinstance(key, str):
            raise TypeError(f"state dict keys must be strings, got {key!r}")
        tensors["model." + key] = _host(value, f"model entry {key!r}")
        keys.append(key)
    from gpunn import __version__

    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "gpunn_version": __version__,
            "model": _json(keys, "the model's keys")}
    if optimizer is not None:
        meta["optimizer"] = _json(_encode(optimizer.state_dict(), "optimizer", tensors), "the optimizer state")
    if scheduler is not None:
        meta["scheduler"] = _json(_encode(scheduler.state_dict(), "scheduler", tensors), "the scheduler state")
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
            raise TypeError(f"metadata must be a dict with string keys, got {type(metadata).__name__}")
        clash = [k for k in metadata if k in RESERVED]
        if clash:
            raise ValueError(f"metadata keys {clash} are reserved (gn.load returns them); rename them")
        meta["metadata"] = _json(_encode(dict(metadata), "metadata", tensors), "the metadata")
    meta["sha256"] = _digest(tensors, meta)
    from safetensors.numpy import save as st_save

    _atomic_write(os.fspath(path), st_save(tensors, metadata=meta))


def _atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX); not possible everywhere, e.g. on Windows
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# ----------------------------------------------------------------------------- load

def _read(path: str):
    """(tensors, metadata) of a safetensors file; CheckpointError when it is not a whole one."""
    with open(path, "rb") as f:
        data = f.read()
    size = len(data)
    where = f"checkpoint {path!r}"
    if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or data[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{where} looks like a pickle or torch.save file, not safetensors; gpunn never "
                              "unpickles (it could run code). Convert it with safetensors where you trust it.")
    if size < 8:
        raise CheckpointError(f"{where} is not a safetensors file: only {size} bytes")
    n = int.from_bytes(data[:8], "little")
    if n > size - 8:
        raise CheckpointError(f"{where} is truncated or not a safetensors file: its header claims {n} bytes "
                              f"but the file has {size}")
    from safetensors.numpy import load as st_load

    try:
        header = json.loads(data[8:8 + n])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        tensors = st_load(data)
    except Exception as err:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{where} is damaged or not a safetensors file: {type(err).__name__}: {err}") from None
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{where} has a malformed __metadata__ entry")
    return tensors, meta


def _own_state(tensors, meta, where):
    """Decode a gpunn checkpoint's parts, checking its format and digest."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is damaged: gpunn metadata without format {FORMAT!r} "
                              f"(found {meta.get('format')!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{where} has checkpoint format version {version!r}; this gpunn reads "
                              f"version {FORMAT_VERSION}")
    if meta.get("sha256") != _digest(tensors, meta):
        raise CheckpointError(f"{where} is damaged: its contents do not match the digest stored in it "
                              "(bytes changed after it was written)")
    try:
        keys = json.loads(meta["model"])
        model = OrderedDict((k, tensors["model." + k]) for k in keys)
        parts = {}
        for part in ("optimizer", "scheduler", "metadata"):
            if part in meta:
                parts[part] = _decode(json.loads(meta[part]), tensors)
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{where} is damaged: cannot decode its metadata ({type(err).__name__}: {err})") from None
    return model, parts


def load(path, model=None, optimizer=None, scheduler=None) -> dict:
    """Read a checkpoint written by `save`, loading it into whichever of model, optimizer and
    scheduler are given (copied in place, on their device).

    Returns a dict: the saved metadata's entries (e.g. "epoch"), plus "state_dict" (the model's
    state as an OrderedDict of NumPy arrays) when no model is given, and "optimizer_state_dict" /
    "scheduler_state_dict" when the file holds that state but no optimizer/scheduler was given.
    Raises CheckpointError (naming the file) for a damaged or foreign file, when the file lacks the
    optimizer/scheduler state asked for, or when its keys or shapes do not fit; in that case the
    model is left as it was. FileNotFoundError when the file does not exist.
    """
    path = os.fspath(path)
    where = f"checkpoint {path!r}"
    tensors, meta = _read(path)
    tensors = {k: (v if v.flags.writeable else v.copy()) for k, v in tensors.items()}
    if not any(k in meta for k in _OWN_KEYS):  # a plain safetensors state dict (e.g. from PyTorch)
        state, parts = OrderedDict(sorted(tensors.items())), {}
    else:
        state, parts = _own_state(tensors, meta, where)
    for obj, part in ((optimizer, "optimizer"), (scheduler, "scheduler")):
        if obj is not None and part not in parts:
            raise CheckpointError(f"{where} holds no {part} state (it was saved without {part}=...)")
    result = dict(parts.get("metadata") or {})
    if model is None:
        result["state_dict"] = state
    if optimizer is None and "optimizer" in parts:
        result["optimizer_state_dict"] = parts["optimizer"]
    if scheduler is None and "scheduler" in parts:
        result["scheduler_state_dict"] = parts["scheduler"]

    backup = None
    if model is not None:
        if optimizer is not None or scheduler is not None:  # undo the model's load if a later part fails
            backup = OrderedDict((k, v.data.copy()) for k, v in model.state_dict().items())
        try:
            model.load_state_dict(state)
        except (RuntimeError, ValueError, TypeError, KeyError) as err:
            raise CheckpointError(f"{where} does not fit the model: {err}") from err
    try:
        for obj, part in ((optimizer, "optimizer"), (scheduler, "scheduler")):
            if obj is not None:
                try:
                    obj.load_state_dict(parts[part])
                except (RuntimeError, ValueError, TypeError, KeyError) as err:
                    raise CheckpointError(f"{where} does not fit the {part} "
                                          f"({type(obj).__name__}): {err}") from err
    except CheckpointError:
        if backup is not None:
            model.load_state_dict(backup)
        raise
    return result
