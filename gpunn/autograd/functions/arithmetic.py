"""Elementwise arithmetic with NumPy broadcasting, and matmul.

Add/Sub/Mul/Div: gradients are summed back over broadcast axes (`unbroadcast`).
Pow (scalar exponent):  d(x^c) = c x^(c-1).   Exp: d e^x = e^x.   Log: d log x = 1/x.
Sqrt: d sqrt x = 1/(2 sqrt x).   Abs: d|x| = sign(x) (0 at 0).   Sign: 0.   Sin: cos x.   Cos: -sin x.
Clamp(lo, hi): g where lo <= x <= hi, else 0 (PyTorch's rule: the bounds themselves pass the gradient).
Where(c, a, b): g to a where c, to b elsewhere.
Maximum/Minimum(a, b): g to the larger (smaller) operand; on ties g/2 to each (as PyTorch).
MatMul (any ndim >= 1, batched over leading axes): dA = dC @ B^T, dB = A^T @ dC.
"""
from __future__ import annotations

from gpunn.autograd.checks import unbroadcast
from gpunn.autograd.tensor import Function
from gpunn.backend import get_array_module


class Add(Function):
    saves_inputs = False
    saves_output = False

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, g):
        sa, sb = self.shapes
        return unbroadcast(g, sa), unbroadcast(g, sb)


class Sub(Function):
    saves_inputs = False
    saves_output = False

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, g):
        sa, sb = self.shapes
        return unbroadcast(g, sa), (unbroadcast(-g, sb) if self.needs_grad[1] else None)


class Mul(Function):
    saves_output = False

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        a, b = self.a, self.b
        return (unbroadcast(g * b, a.shape) if self.needs_grad[0] else None,
                unbroadcast(g * a, b.shape) if self.needs_grad[1] else None)


class Div(Function):
    saves_output = False

    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        a, b = self.a, self.b
        ga = unbroadcast(g / b, a.shape) if self.needs_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if self.needs_grad[1] else None
        return ga, gb


class Neg(Function):
    saves_inputs = False
    saves_output = False

    def forward(self, a):
        return -a

    def backward(self, g):
        return (-g,)


class Clone(Function):
    saves_inputs = False
    saves_output = False

    def forward(self, a):
        return a.copy()

    def backward(self, g):
        return (g,)


class Cast(Function):
    saves_inputs = False
    saves_output = False

    def forward(self, a, dtype):
        self.src = a.dtype
        return a.astype(dtype)

    def backward(self, g):
        return (g.astype(self.src),)


class Pow(Function):
    saves_output = False

    def forward(self, a, exponent):
        self.a, self.c = a, exponent
        return a ** a.dtype.type(exponent)

    def backward(self, g):
        a, c = self.a, self.c
        if c == 0:
            return (g * 0,)
        return (g * (a.dtype.type(c) * a ** a.dtype.type(c - 1)),)


class _OfOutput(Function):
    """y = f(a) whose derivative is a function of y (f names an array-module function); y is saved."""

    saves_inputs = False
    f = ""

    def forward(self, a):
        self.out = getattr(get_array_module(a), self.f)(a)
        return self.out


class Exp(_OfOutput):
    f = "exp"

    def backward(self, g):
        return (g * self.out,)


class Log(Function):
    saves_output = False

    def forward(self, a):
        self.a = a
        return get_array_module(a).log(a)

    def backward(self, g):
        return (g / self.a,)


class Sqrt(_OfOutput):
    f = "sqrt"

    def backward(self, g):
        return (g / (2 * self.out),)


class _OfInput(Function):
    """y = f(a) with dy/da = sign * df(a): f and df name array-module functions (NumPy's = CuPy's)."""

    saves_output = False
    f = df = ""
    sign = 1

    def forward(self, a):
        self.a = a
        return getattr(get_array_module(a), self.f)(a)

    def backward(self, g):
        d = g * getattr(get_array_module(g), self.df)(self.a)
        return (d if self.sign > 0 else -d,)


class Abs(_OfInput):
    f, df = "abs", "sign"


class Sin(_OfInput):
    f, df = "sin", "cos"


class Cos(_OfInput):
    f, df, sign = "cos", "sin", -1


class Sign(Function):
    saves_inputs = False
    saves_output = False

    def forward(self, a):
        self.shape = a.shape
        return get_array_module(a).sign(a)

    def backward(self, g):
        return (get_array_module(g).zeros(self.shape, dtype=g.dtype),)


class Clamp(Function):
    saves_output = False

    def forward(self, a, lo=None, hi=None):
        xp = get_array_module(a)
        inside = xp.ones(a.shape, dtype=bool)
        if lo is not None:
            inside &= a >= lo
        if hi is not None:
            inside &= a <= hi
        self.inside = inside
        return xp.clip(a, lo, hi)

    def backward(self, g):
        return (g * self.inside,)


class Where(Function):
    """out = a where cond else b; cond is a boolean array (a parameter, not an input)."""

    saves_inputs = False
    saves_output = False

    def forward(self, a, b, cond):
        self.cond, self.shapes = cond, (a.shape, b.shape)
        return get_array_module(a).where(cond, a, b)

    def backward(self, g):
        xp, (sa, sb) = get_array_module(g), self.shapes
        zero = g.dtype.type(0)
        return (unbroadcast(xp.where(self.cond, g, zero), sa) if self.needs_grad[0] else None,
                unbroadcast(xp.where(self.cond, zero, g), sb) if self.needs_grad[1] else None)


class Maximum(Function):
    """Elementwise maximum (or minimum with `take_min`)."""

    saves_output = False

    def forward(self, a, b, take_min=False):
        xp = get_array_module(a)
        self.a, self.b, self.take_min = a, b, take_min
        return xp.minimum(a, b) if take_min else xp.maximum(a, b)

    def backward(self, g):
        a, b = self.a, self.b
        a_wins = (a < b) if self.take_min else (a > b)
        share = a_wins + (a == b) * g.dtype.type(0.5)  # 1 where a is chosen, 1/2 on ties, else 0
        return (unbroadcast(g * share, a.shape) if self.needs_grad[0] else None,
                unbroadcast(g * (1 - share), b.shape) if self.needs_grad[1] else None)


class MatMul(Function):
    saves_output = False

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        a, b = self.a, self.b
        xp = get_array_module(g)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g  # restore the axes a 1-D operand dropped: last for b (first), then second-last for a
        if b.ndim == 1:
            g2 = g2[..., None]
        if a.ndim == 1:
            g2 = xp.expand_dims(g2, -2)
        ga = gb = None
        if self.needs_grad[0]:
            ga = g2 @ xp.swapaxes(b2, -1, -2)
            ga = unbroadcast(ga, a2.shape).reshape(a.shape)
        if self.needs_grad[1]:
            gb = xp.swapaxes(a2, -1, -2) @ g2
            gb = unbroadcast(gb, b2.shape).reshape(b.shape)
        return ga, gb
