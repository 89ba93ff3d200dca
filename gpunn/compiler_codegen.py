"""A kernel program as one straight-line Python function (gn.compile's unprofiled CPU/GPU replay).

`_run_steps` (gpunn/compiler.py) interprets a kernel program: for every step it unpacks a tuple,
fills the arguments that change from their specs, and dispatches on the step's kind. For a small
network that interpretation is a large part of a step (64-128-10 at batch 64: 19 steps, 87-92 -> 79-84
us per step, kernels/results/cpu-compile-2026-11-29-f.txt). `straight_line(steps, n, keep)` writes
the same program as the source of one function, compiled once per signature::

    def replay(a0, a1, res):
        m4(o5)  # Optimizer.zero_grad
        r1 = k11(a0, c7, c8, c9, c10)  # dense_forward_cpu
        r2 = k17(r1[1], c13, c14, c15, c16)  # dense_forward_cpu
        r3 = k24(r2[1], a1, c20, c21, c22, c23)  # softmax_cross_entropy_forward_cpu
        r4 = k31(c25, c26, c27, a1, r3[2], c30)  # _check_labels
        token = _begin_pass()
        try:
            r6 = k40(c32, r3[1], a1, c35, c36, r3[2], c38, c39)  # softmax_cross_entropy_backward_cpu
            r7 = _claim(leaf41)
            r8 = _claim(leaf42)
            r9 = k52(r6, r1[1], c45, r2[1], c47, c48, need_dx=c49, ..., dW_out=r7, db_out=r8)  # dense_backward_cpu
            ...
            acc65(r12[1])  # Tensor._accumulate_grad
            ...
        finally:
            _end_pass(token)
        m69(o70)  # Optimizer.step
        res[3] = r3

(the 64-128-10 training step: the two traces' constants, a kernel, a parameter array, an activation
code, are globals of that function; its arguments and results are locals; res keeps what fn's
return value is built from). The same calls, with the same arguments, in the same order as
`_run_steps` makes them, so results are bit-identical to it (and to eager mode). The profiled
replay keeps `_run_steps`, which routes each call through the profiler.
"""
from __future__ import annotations

import itertools
import linecache
import weakref

from gpunn.autograd import grad_sink as _sink


def straight_line(steps, n_args: int, keep):
    """replay(*arrays, res) running the kernel-program `steps` (see gpunn/compiler.py `_bound_call`
    for a step's layout); results whose index is in `keep` are stored in `res`."""
    from gpunn.compiler import _view_of  # this module is imported by gpunn.compiler when it builds

    names = {"_view_of": _view_of, "_begin_pass": _sink.begin_pass, "_end_pass": _sink.end_pass,
             "_claim": _sink.claim}
    lines, indent = [], "    "

    def const(value, hint):
        name = f"{hint}{len(names)}"
        names[name] = value
        return name

    def expr(spec):
        kind = spec[0]
        if kind == "c":
            return const(spec[1], "c")
        if kind == "arg":
            return f"a{spec[1]}"
        if kind == "res":
            return f"r{spec[1]}" if spec[2] is None else f"r{spec[1]}[{spec[2]}]"
        if kind == "base":
            return (f"r{spec[1]}" if spec[2] is None else f"r{spec[1]}[{spec[2]}]") + ".base"
        if kind == "view":
            _, source, dtype, shape, strides, offset = spec
            return f"_view_of({expr(source)}, {const(dtype, 'd')}, {shape!r}, {strides!r}, {offset!r})"
        parts = "".join(expr(p) + ", " for p in spec[2])
        return f"{const(spec[1], 't')}(({parts}))"

    for st in steps:
        kind = st[0]
        if kind == "k":
            _, fn, args, dyn, kwargs, kdyn, k, _meta = st
            a = [const(v, "c") for v in args]
            for i, spec in dyn:
                a[i] = expr(spec)
            kw = [f"{name}={const(v, 'c')}" for name, v in kwargs.items()]
            kw += [f"{name}={expr(spec)}" for name, spec in kdyn]
            lines.append(f"{indent}r{k} = {const(fn, 'k')}({', '.join(a + kw)})  # {_name(fn)}")
        elif kind == "acc":
            lines.append(f"{indent}{const(st[1], 'acc')}({expr(st[2])})  # {_name(st[1])}")
        elif kind == "claim":
            lines.append(f"{indent}r{st[2]} = _claim({const(st[1], 'leaf')})")
        elif kind == "pass" and st[1] == "begin":
            lines += [f"{indent}token = _begin_pass()", f"{indent}try:"]
            indent += "    "
        elif kind == "pass":
            if lines[-1].endswith("try:"):
                lines.append(f"{indent}pass")
            indent = indent[:-4]
            lines += [f"{indent}finally:", f"{indent}    _end_pass(token)"]
        else:
            _, method, obj, a, kw = st
            extra = (f", *{const(a, 'a')}" if a else "") + (f", **{const(kw, 'kw')}" if kw else "")
            lines.append(f"{indent}{const(method, 'm')}({const(obj, 'o')}{extra})  # {_name(method)}")
    lines += [f"    res[{k}] = r{k}" for k in sorted(keep)]
    params = "".join(f"a{i}, " for i in range(n_args))
    source = f"def replay({params}res):\n" + "\n".join(lines or ["    pass"]) + "\n"
    # a file name of its own, with the source in linecache, so that a traceback through a replay
    # shows the line (and the kernel it names) where it failed
    filename = f"<gn.compile replay {next(_serial)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), names)  # noqa: S102 - made from the program's own steps, no user text
    replay = names["replay"]
    replay.source = source
    weakref.finalize(replay, linecache.cache.pop, filename, None)  # an evicted signature's source goes too
    return replay


_serial = itertools.count(1)


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__
