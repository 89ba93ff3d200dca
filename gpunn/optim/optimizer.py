"""Optimizer base class: param groups, per-parameter state, and the flat buffers behind them.

After `torch/optim/optimizer.py` in its interface (param_groups, state, zero_grad, step,
state_dict/load_state_dict in PyTorch's layout, add_param_group), with one difference inside:
each param group keeps its parameters, gradients and optimizer state in flat contiguous buffers,
so one step is ONE fused kernel call per group however many tensors the model has.

- Construction copies a group's parameters into one flat buffer and rebinds every `p.data` to its
  reshaped view; it registers a view of one flat gradient buffer as each parameter's gradient
  sink (gpunn/autograd/grad_sink.py), so the first gradient of each backward pass lands there
  (dense layers' backward kernels write dW and db into it directly).
- `state[p]` holds per-parameter views of the flat state buffers ("exp_avg", ...) and of the
  step counts ("step", a 0-d array), as PyTorch's state holds per-parameter tensors. Modify them
  in place; rebinding an entry is not seen by the kernels.
- `step()` takes the fused path when every parameter of the group has a gradient and all their
  step counts agree. A gradient that is not the buffer's view (set by hand) is copied in first.
  Parameters whose `.grad` is None are skipped exactly as PyTorch skips them (no update, no state,
  no step count), with one kernel call per remaining parameter on its views.
- A parameter whose `.data` is no longer its view (rebound by the user, a checkpoint load, or a
  move to another device or dtype) makes the group re-pack before it steps: new flat buffers on
  the parameters' device and dtype, current values copied in, state moved along.

Caveat of the flat gradient buffer: with `zero_grad(set_to_none=True)` the next backward writes
into the same memory, so a `.grad` Tensor kept from an earlier iteration sees the new values
(PyTorch allocates a fresh tensor). Copy a gradient (`p.grad.numpy().copy()`) to keep it.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from gpunn.autograd.grad_sink import register_grad_sink
from gpunn.autograd.tensor import Tensor, enable_grad
from gpunn.backend import device_of, get_array_module, is_array, is_cupy_array
from gpunn.kernels import ops as _kops
from gpunn.kernels.ops import ops_for

__all__ = ["Optimizer", "required"]


class _Required:
    """Marks a hyperparameter that every param group must give (PyTorch's `required`)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()


def _convert(a, like_xp, dtype, device_id=None):
    """`a` (NumPy/CuPy array, Tensor or number) as an array of `like_xp` with `dtype`."""
    if isinstance(a, Tensor):
        a = a.data
    if like_xp is np:
        if is_cupy_array(a):
            a = a.get()
        return np.asarray(a, dtype=dtype)
    if device_id is not None:
        with like_xp.cuda.Device(device_id):
            return like_xp.asarray(a, dtype=dtype)
    return like_xp.asarray(a, dtype=dtype)


class _FlatGroup:
    """The flat buffers of one param group: params, grads, state, per-parameter step counts."""

    __slots__ = ("params", "n", "shapes", "bounds", "views", "gviews", "flat", "grad", "bufs", "fills",
                 "steps", "uniform", "synced", "xp", "dtype", "device_id", "index")

    def __init__(self, params, index: int):
        self.params = params
        self.n = len(params)
        self.index = index
        self.bufs = {}
        self.fills = {}  # buffer -> its initial value when not 0 (Adagrad's initial_accumulator_value)
        self.steps = np.zeros(self.n, dtype=np.float64)  # host-side, whatever the device
        self.uniform = True
        self.synced = True
        self.flat = None
        self._pack()

    # ------------------------------------------------------------------ layout
    def _check_uniform(self):
        """All params of a group share one dtype and one device (they share one buffer)."""
        first = self.params[0].data
        for j, p in enumerate(self.params):
            a = p.data
            if a.dtype.kind != "f":
                raise TypeError(f"param group {self.index}: parameter {j} has dtype {a.dtype}; "
                                "optimizers update float parameters only")
            if a.dtype != first.dtype:
                raise ValueError(f"param group {self.index} mixes dtypes: parameter 0 is {first.dtype} "
                                 f"but parameter {j} (shape {a.shape}) is {a.dtype}; one group shares "
                                 "one flat buffer, so convert them or put them in separate param groups")
            if type(a) is not type(first) or device_of(a) != device_of(first):
                raise ValueError(f"param group {self.index} mixes devices: parameter 0 is on "
                                 f"{device_of(first)} but parameter {j} (shape {a.shape}) is on "
                                 f"{device_of(a)}; move them to one device or use separate param groups")

    def _pack(self):
        """(Re)build the flat buffers from the parameters' current arrays, carrying state along."""
        self._check_uniform()
        first = self.params[0].data
        xp = get_array_module(first)
        dtype = first.dtype
        device_id = None if xp is np else getattr(first.device, "id", 0)
        shapes = [tuple(p.data.shape) for p in self.params]
        bounds = []
        off = 0
        for s in shapes:
            size = 1
            for d in s:
                size *= d
            bounds.append((off, off + size))
            off += size
        old = self.flat is not None
        if old:
            for j, (s, o) in enumerate(zip(shapes, self.shapes)):
                if s != o and self.steps[j] != 0:
                    raise RuntimeError(
                        f"param group {self.index}: parameter {j} changed shape from {o} to {s} after the "
                        "optimizer created state for it; build a new optimizer for the new shapes")

        def alloc(fill=0.0):
            if device_id is None:
                return xp.full(off, fill, dtype=dtype)
            with xp.cuda.Device(device_id):
                return xp.full(off, fill, dtype=dtype)

        flat = alloc()
        grad = alloc()
        views, gviews = [], []
        for p, s, (a, b) in zip(self.params, shapes, bounds):
            v = flat[a:b].reshape(s)
            v[...] = p.data  # same dtype and device (checked above)
            views.append(v)
            gviews.append(grad[a:b].reshape(s))
        bufs = {}
        for name, buf in self.bufs.items():
            nb = alloc(self.fills.get(name, 0.0))
            for j, ((a, b), (oa, ob)) in enumerate(zip(bounds, self.bounds)):
                if shapes[j] == self.shapes[j]:  # (a parameter with state cannot change shape)
                    nb[a:b] = _convert(buf[oa:ob], xp, dtype, device_id)
            bufs[name] = nb
        # gradients present now follow their parameters into the new buffer (converted if moved)
        has_grad = []
        for j, (p, gv) in enumerate(zip(self.params, gviews)):
            g = p.grad
            if g is not None:
                if tuple(g.data.shape) != gv.shape:
                    raise RuntimeError(f"param group {self.index}: parameter {j} has shape {gv.shape} but its "
                                       f".grad has shape {tuple(g.data.shape)}")
                gv[...] = _convert(g.data, xp, dtype, device_id)
            has_grad.append(g is not None)
        # commit: rebind params and grads to their views
        for p, v, gv, hg in zip(self.params, views, gviews, has_grad):
            if hg:
                p.grad = Tensor(gv)
            p.data = v
            register_grad_sink(p, gv)
        self.flat, self.grad, self.views, self.gviews = flat, grad, views, gviews
        self.shapes, self.bounds, self.bufs = shapes, bounds, bufs
        self.xp, self.dtype, self.device_id = xp, dtype, device_id
        self.synced = False

    # ------------------------------------------------------------------ copy / pickle
    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__ if k not in ("views", "gviews", "xp")}

    def __setstate__(self, state):
        """After deepcopy/unpickle the arrays are independent copies: rebuild the views into the
        copied flat buffers and rebind the (copied) parameters to them."""
        for k, v in state.items():
            setattr(self, k, v)
        self.xp = get_array_module(self.flat)
        self.views, self.gviews = [], []
        for p, s, (a, b) in zip(self.params, self.shapes, self.bounds):
            v = self.flat[a:b].reshape(s)
            gv = self.grad[a:b].reshape(s)
            g = p.grad
            if g is not None and g.data.shape == s and g.data.dtype == self.dtype and type(g.data) is type(gv):
                gv[...] = g.data
                p.grad = Tensor(gv)
            if p.data.shape == s and p.data.dtype == self.dtype and type(p.data) is type(v):
                v[...] = p.data
                p.data = v
            register_grad_sink(p, gv)
            self.views.append(v)
            self.gviews.append(gv)
        self.synced = False

    def buffer(self, name: str, fill: float = 0.0):
        """The flat state buffer `name`, allocated on first use and filled with `fill`."""
        buf = self.bufs.get(name)
        if buf is None:
            if self.device_id is None:
                buf = self.xp.full(self.flat.size, fill, dtype=self.dtype)
            else:
                with self.xp.cuda.Device(self.device_id):
                    buf = self.xp.full(self.flat.size, fill, dtype=self.dtype)
            self.bufs[name] = buf
            if fill != 0:
                self.fills[name] = fill
            self.synced = False
        return buf

    # ------------------------------------------------------------------ per step
    def collect(self):
        """Prepare a step. Returns None when every parameter has a gradient (the fused path may
        run), else the indices of the parameters that have one."""
        have = None
        i = 0
        for p, v, gv in zip(self.params, self.views, self.gviews):
            if p.data is not v:
                self._pack()
                return self.collect()
            g = p.grad
            if g is None:
                if have is None:
                    have = list(range(i))
            else:
                if g.data is not gv:
                    gd = g.data
                    if gd.shape != gv.shape:
                        raise RuntimeError(f"param group {self.index}: parameter {i} has shape {gv.shape} "
                                           f"but its .grad has shape {gd.shape}")
                    if gd.dtype != gv.dtype or type(gd) is not type(gv):
                        raise TypeError(f"param group {self.index}: parameter {i} is {gv.dtype} on {device_of(gv)} "
                                        f"but its .grad is {gd.dtype} on {device_of(gd)}; assign a gradient of the "
                                        "parameter's dtype and device")
                    gv[...] = gd
                if have is not None:
                    have.append(i)
            i += 1
        return have

    def zero_grad(self, set_to_none: bool):
        if set_to_none:
            for p in self.params:
                p.grad = None
            return
        in_buffer = False
        for p, gv in zip(self.params, self.gviews):
            g = p.grad
            if g is None:
                continue
            if g.data is gv:
                in_buffer = True
            else:
                g.data[...] = 0
        if in_buffer:
            self.grad.fill(0)


def _loaded_step(pid: int, value) -> float:
    """A saved "step" entry (Tensor, array or number) as a whole float >= 0."""
    v = value.data if isinstance(value, Tensor) else value
    v = np.asarray(v.get() if is_cupy_array(v) else v)
    if v.size != 1:
        raise ValueError(f"state of parameter {pid}: 'step' must be a number, got shape {v.shape}")
    step = float(v.reshape(()))
    if not (step >= 0 and step == int(step)):
        raise ValueError(f"state of parameter {pid}: 'step' must be a whole number >= 0, got {step}")
    return step


def _number(name: str, value) -> float:
    """A hyperparameter as a float; TypeError naming it otherwise."""
    if isinstance(value, Tensor):
        if value.data.size != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {value.shape}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def check_range(name: str, what: str, value, low=0.0, high=None, high_open=False) -> None:
    """ValueError in PyTorch's words, naming the hyperparameter: `Invalid learning rate: -1 (lr ...)`."""
    v = _number(name, value)
    ok = low <= v
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        rng = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"Invalid {what}: {value} ({name} must be {rng})")


class Optimizer:
    """Base class of all optimizers (PyTorch's interface; flat buffers inside, see the module doc).

    Subclasses give `defaults`, `_ranges` and `_validate(options)` (ValueError naming a bad
    hyperparameter; the base checks `_ranges`),
    `_state_buffers` (every flat state buffer, in PyTorch's state order, mapped to the group
    option that turns it on, or None for always), `_counts_step(group)` (whether a step advances
    the per-parameter step count) and `_update(group, ops, p, g, state, step)` (one fused kernel
    call over 1-D arrays). `_step_in_state` says whether `state[p]` exposes "step" (PyTorch's SGD
    keeps none). `_initial_state` (buffer -> the group option holding its initial value) makes the
    state exist from construction, step 0 (PyTorch's Adagrad); otherwise a parameter has state
    from its first step and buffers start at zero.
    """

    _state_buffers: dict = {}
    _step_in_state = True
    _initial_state: dict = {}
    # (option, what PyTorch's error calls it[, low[, high]]): the ranges the base _validate checks
    _ranges: tuple = ()

    def __init__(self, params, defaults: dict):
        if not isinstance(defaults, dict):
            raise TypeError(f"defaults must be a dict, got {type(defaults).__name__}")
        self.defaults = defaults
        self._validate(defaults)
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            f"but got {type(params).__name__}")
        if isinstance(params, (set, frozenset)):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the ordering "
                            "of tensors in sets will change between runs. Please use a list instead.")
        self.state = defaultdict(dict)
        self.param_groups = []
        self._flat = []
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    # ------------------------------------------------------------------ hooks for subclasses
    def _validate(self, options: dict) -> None:
        for name, what, *bounds in self._ranges:
            check_range(name, what, options[name], *bounds)

    def _state_names(self, group) -> list:
        """The state buffers this group's options need, in state order."""
        return [name for name, option in self._state_buffers.items() if option is None or group[option]]

    def _counts_step(self, group) -> bool:
        return True

    def _update(self, group, ops, p, g, state, step) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own options (missing ones come from `defaults`)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the ordering "
                            "of tensors in sets will change between runs. Please use a list instead.")
        else:
            params = list(params)
        if len(params) == 0:
            raise ValueError(f"param group {len(self.param_groups)} has no parameters")
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids):
            first = next(i for i, k in enumerate(ids) if ids.count(k) > 1)
            raise ValueError(f"optimizer contains a parameter group with duplicate parameters "
                             f"(parameter {first}, shape {params[first].shape}, appears more than once)")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if not seen.isdisjoint(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        group = dict(param_group)
        group["params"] = params
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            group.setdefault(name, default)
        self._validate(group)
        flat = _FlatGroup(params, len(self.param_groups))
        self.param_groups.append(group)
        self._flat.append(flat)
        if self._initial_state:
            for name, option in self._initial_state.items():
                flat.buffer(name, float(group[option]))
            self._sync_state(group, flat)

    # ------------------------------------------------------------------ gradients
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients: to None (default), or to zeros in place (one fill per group)."""
        for fg in self._flat:
            fg.zero_grad(set_to_none)

    # ------------------------------------------------------------------ step
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns closure()'s loss if given."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        rec = _kops._recorder
        if rec is None:
            self._step_groups()
        else:  # a profiler is active: the updates are its "optimizer" phase (and end a training step)
            with rec.phase("optimizer"):
                self._step_groups()
        return loss

    def _step_groups(self) -> None:
        """The updates of `step()`: one fused kernel call per group (see the module doc)."""
        for group, fg in zip(self.param_groups, self._flat):
            have = fg.collect()
            names = self._state_names(group)
            bufs = fg.bufs
            for name in names:
                if name not in bufs:
                    fg.buffer(name)
            ops = ops_for(fg.flat)
            counts = self._counts_step(group)
            steps = fg.steps
            if have is None and fg.uniform:
                if counts:
                    steps += 1.0
                t = float(steps[0]) if fg.n else 0.0
                self._update(group, ops, fg.flat, fg.grad, bufs, t)
            else:
                if have is None:
                    have = range(fg.n)
                flat, grad = fg.flat, fg.grad
                for i in have:
                    a, b = fg.bounds[i]
                    if counts:
                        steps[i] += 1.0
                    self._update(group, ops, flat[a:b], grad[a:b], {k: v[a:b] for k, v in bufs.items()},
                                 float(steps[i]))
                fg.uniform = bool((steps == steps[0]).all()) if fg.n else True
                fg.synced = False
            if not fg.synced:
                self._sync_state(group, fg)

    def _sync_state(self, group, fg) -> None:
        """Expose per-parameter views of the flat state as `state[p]` (params with steps only)."""
        names = [n for n in self._state_names(group) if n in fg.bufs] + \
                [n for n in fg.bufs if n not in self._state_names(group)]
        for i, p in enumerate(fg.params):
            if fg.steps[i] == 0 and not self._initial_state:
                self.state.pop(p, None)
                continue
            a, b = fg.bounds[i]
            entry = {}
            if self._step_in_state:
                entry["step"] = fg.steps[i:i + 1].reshape(())
            for n in names:
                entry[n] = fg.bufs[n][a:b].reshape(fg.shapes[i])
            self.state[p] = entry
        fg.synced = True

    # ------------------------------------------------------------------ state dict
    def state_dict(self) -> dict:
        """PyTorch's layout: {"state": {index: {"step": Tensor, "exp_avg": Tensor, ...}},
        "param_groups": [{options..., "params": [indices]}]}. Parameters are numbered in order
        across groups; only parameters with state appear in "state". Values are copies."""
        out_state = {}
        groups = []
        index = 0
        for group, fg in zip(self.param_groups, self._flat):
            if not fg.synced:
                self._sync_state(group, fg)
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = list(range(index, index + fg.n))
            groups.append(g)
            for i, p in enumerate(fg.params):
                if fg.steps[i] != 0 or self._initial_state:
                    a, b = fg.bounds[i]
                    entry = {}
                    if self._step_in_state:
                        entry["step"] = Tensor(np.array(fg.steps[i], dtype=np.float32))
                    for name in self.state[p]:
                        if name != "step":
                            entry[name] = Tensor(fg.bufs[name][a:b].reshape(fg.shapes[i]).copy())
                    out_state[index + i] = entry
            index += fg.n
        return {"state": out_state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a `state_dict()` (values as gpunn Tensors, NumPy or CuPy arrays, numbers): the
        groups' options and every parameter's state, copied into this optimizer's buffers on the
        parameters' device. Everything is checked and converted before anything changes:
        `_loaded_layout` (the groups and their sizes), `_loaded_groups` (the options),
        `_loaded_state` (each parameter's entries), then `_commit_loaded` writes them."""
        saved_groups, saved_state = self._loaded_layout(state_dict)
        new_groups = self._loaded_groups(saved_groups)
        staged = self._loaded_state(saved_groups, saved_state, new_groups)
        self._commit_loaded(new_groups, staged)

    def _loaded_layout(self, state_dict: dict):
        """The (param_groups, state) of a state dict whose groups match this optimizer's in number and size."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("optimizer state_dict must be a dict with 'state' and 'param_groups' entries")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has a different number of parameter groups "
                             f"({len(saved_groups)}) than the optimizer ({len(self.param_groups)})")
        for k, (sg, fg) in enumerate(zip(saved_groups, self._flat)):
            if len(sg["params"]) != fg.n:
                raise ValueError(f"loaded state dict contains a parameter group that doesn't match the size of "
                                 f"optimizer's group: group {k} has {len(sg['params'])} parameters in the state "
                                 f"dict but {fg.n} in the optimizer")
        return saved_groups, state_dict["state"]

    def _loaded_groups(self, saved_groups) -> list:
        """Each group's options: the current ones updated from the saved group, validated."""
        new_groups = []
        for sg, group in zip(saved_groups, self.param_groups):
            ng = dict(group)
            ng.update({key: val for key, val in sg.items() if key != "params"})
            if isinstance(ng.get("betas"), list):
                ng["betas"] = tuple(ng["betas"])
            self._validate(ng)
            new_groups.append(ng)
        return new_groups

    def _loaded_state(self, saved_groups, saved_state, new_groups) -> list:
        """[(group, position, step, {name: array})] for every saved parameter state, checked
        against the parameter it belongs to and the options of its (new) group."""
        where = {}  # saved parameter id -> (group, position)
        for k, sg in enumerate(saved_groups):
            for i, pid in enumerate(sg["params"]):
                where[int(pid)] = (k, i)
        staged = []
        for raw_id, entry in saved_state.items():
            try:
                pid = int(raw_id)
            except (TypeError, ValueError):
                raise ValueError(f"state_dict 'state' keys must be parameter indices, got {raw_id!r}") from None
            if pid not in where:
                raise ValueError(f"state_dict has state for parameter {pid}, but its param_groups list "
                                 f"{len(where)} parameters and not this one")
            if not isinstance(entry, dict):
                raise ValueError(f"state of parameter {pid} must be a dict, got {type(entry).__name__}")
            k, i = where[pid]
            step, arrays = self._loaded_entry(pid, entry, self._flat[k].params[i].data.shape)
            for name in self._state_names(new_groups[k]):
                if step and name not in arrays:
                    raise ValueError(f"state of parameter {pid} lacks {name!r}, which the group's options need")
            staged.append((k, i, step, arrays))
        return staged

    def _loaded_entry(self, pid: int, entry: dict, shape) -> tuple:
        """(step, {name: array}) of one parameter's saved state, each value checked."""
        step = None
        arrays = {}
        for name, value in entry.items():
            if value is None:  # PyTorch's SGD may store momentum_buffer=None
                continue
            if name == "step":
                step = _loaded_step(pid, value)
                continue
            if name not in self._state_buffers:
                raise ValueError(f"state of parameter {pid} has an entry {name!r} that "
                                 f"{type(self).__name__} does not use (it uses {sorted(self._state_buffers)})")
            arr = value.data if isinstance(value, Tensor) else value
            if not is_array(arr):
                raise ValueError(f"state of parameter {pid}: {name!r} must be an array or Tensor, "
                                 f"got {type(value).__name__}")
            if tuple(arr.shape) != tuple(shape):
                raise ValueError(f"state of parameter {pid}: {name!r} has shape {tuple(arr.shape)} but the "
                                 f"parameter has shape {tuple(shape)}")
            if arr.dtype.kind != "f":
                raise ValueError(f"state of parameter {pid}: {name!r} must be a float array, got {arr.dtype}")
            arrays[name] = arr
        if not self._step_in_state:
            step = 1.0 if arrays else 0.0
        elif step is None:
            raise ValueError(f"state of parameter {pid} has no 'step' entry")
        return step, arrays

    def _commit_loaded(self, new_groups, staged) -> None:
        """Write checked options and state into the groups and flat buffers (nothing here can fail
        on the state dict's account)."""
        for k, group in enumerate(new_groups):
            self.param_groups[k].clear()
            self.param_groups[k].update(group)
        for fg in self._flat:
            fg.collect()  # re-pack first if a parameter was rebound, so the layout is current
            fg.steps[:] = 0
            for name, buf in fg.bufs.items():
                buf.fill(fg.fills.get(name, 0.0))
        for k, i, step, arrays in staged:
            fg = self._flat[k]
            a, b = fg.bounds[i]
            fg.steps[i] = step
            for name, arr in arrays.items():
                buf = fg.buffer(name)
                buf[a:b] = _convert(arr, fg.xp, fg.dtype, fg.device_id).reshape(-1)
        loaded = {name for _, _, _, arrays in staged for name in arrays}
        for group, fg in zip(self.param_groups, self._flat):
            needed = self._state_names(group)
            for name in [n for n in fg.bufs if n not in needed and n not in loaded]:
                del fg.bufs[name]  # left from options the loaded groups no longer use
        self.state.clear()
        for group, fg in zip(self.param_groups, self._flat):
            fg.uniform = bool((fg.steps == fg.steps[0]).all()) if fg.n else True
            self._sync_state(group, fg)

    # ------------------------------------------------------------------ copy / pickle
    def __setstate__(self, state):
        self.__dict__.update(state)
        self.state = defaultdict(dict)
        for group, fg in zip(self.param_groups, self._flat):
            self._sync_state(group, fg)

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)
