"""torch.utils.data's names over gpunn Tensors: Dataset, TensorDataset, Subset, DataLoader, random_split.

    ds = gn.utils.data.TensorDataset(gn.tensor(X), gn.tensor(y))
    train, val = gn.utils.data.random_split(ds, [0.8, 0.2])
    for xb, yb in gn.utils.data.DataLoader(train, batch_size=32, shuffle=True):
        ...

Batches are gpunn Tensors on the dataset's device. Shuffling draws one permutation per epoch (per
`iter(loader)`) on the host from `generator` (a numpy.random.Generator) or, by default, from
gpunn's generator, so `gn.manual_seed(n)` fixes the order. Over a TensorDataset (or a Subset of
one) a loader gathers each tensor once per epoch in permuted order and yields row slices; other
datasets are read sample by sample and stacked (`default_collate`).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from gpunn.autograd.tensor import Tensor
from gpunn.backend import device_of, get_array_module, is_array
from gpunn.data import num_batches, rng_from

__all__ = ["Dataset", "TensorDataset", "Subset", "DataLoader", "random_split", "default_collate", "loader_arrays"]


class Dataset:
    """A map-style dataset: subclasses define __getitem__(i) and __len__()."""

    def __getitem__(self, index):  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} has no __getitem__")

    def __len__(self):  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} has no __len__")


def _as_tensor(t, i):
    if isinstance(t, Tensor):
        return t
    if is_array(t):
        return Tensor(t)
    raise TypeError(f"TensorDataset: tensor {i} is a {type(t).__name__}; expected a gpunn Tensor or an array")


class TensorDataset(Dataset):
    """Samples are rows: dataset[i] = (t0[i], t1[i], ...); every tensor has the same first dimension."""

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset needs at least one tensor")
        self.tensors = tuple(_as_tensor(t, i) for i, t in enumerate(tensors))
        for i, t in enumerate(self.tensors):
            if t.ndim == 0:
                raise ValueError(f"TensorDataset: tensor {i} is 0-d; samples run along the first dimension")
        sizes = [t.shape[0] for t in self.tensors]
        if len(set(sizes)) > 1:
            raise ValueError(f"TensorDataset: size mismatch between tensors: first dimensions {sizes}")
        devices = {str(t.device) for t in self.tensors}
        if len(devices) > 1:
            raise ValueError(f"TensorDataset: tensors on different devices: {sorted(devices)}")

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return self.tensors[0].shape[0]


class Subset(Dataset):
    """The samples of `dataset` at `indices`, in that order."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __getitem__(self, index):
        if isinstance(index, (list, np.ndarray)):
            return self.dataset[[self.indices[i] for i in index]]
        return self.dataset[self.indices[index]]

    def __len__(self) -> int:
        return len(self.indices)


def _lengths(n, lengths):
    """Integer lengths summing to n; fractions summing to 1 are turned into counts as PyTorch does
    (floor each, then hand the remainder out one by one from the first)."""
    lengths = list(lengths)
    if not lengths:
        raise ValueError("random_split: lengths is empty")
    if all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in lengths):
        if any(x < 0 for x in lengths) or sum(lengths) != n:
            raise ValueError(f"random_split: lengths {lengths} must be non-negative and sum to the dataset "
                             f"length {n} (or be fractions summing to 1)")
        return [int(x) for x in lengths]
    if not all(isinstance(x, numbers.Real) and not isinstance(x, bool) and 0 <= x <= 1 for x in lengths) \
            or not math.isclose(sum(lengths), 1.0, abs_tol=1e-9):
        raise ValueError(f"random_split: lengths {lengths} must be ints summing to {n} or fractions in [0, 1] "
                         "summing to 1")
    counts = [int(math.floor(n * f)) for f in lengths]
    for i in range(n - sum(counts)):
        counts[i % len(counts)] += 1
    return counts


def random_split(dataset, lengths, generator=None):
    """Split into non-overlapping Subsets of the given lengths (ints, or fractions summing to 1),
    in an order drawn from `generator` (default: gpunn's generator, seeded by gn.manual_seed)."""
    n = len(dataset)
    counts = _lengths(n, lengths)
    perm = rng_from(generator).permutation(n)
    out, start = [], 0
    for c in counts:
        out.append(Subset(dataset, perm[start:start + c]))
        start += c
    return out


def default_collate(samples):
    """Stack a list of samples into a batch: tuples element by element; Tensors, arrays and numbers
    into one Tensor with a new first dimension."""
    first = samples[0]
    if isinstance(first, (tuple, list)):
        return type(first)(default_collate([s[i] for s in samples]) for i in range(len(first)))
    if isinstance(first, Tensor):
        return Tensor(get_array_module(first.data).stack([s.data for s in samples]))
    if is_array(first):
        return Tensor(get_array_module(first).stack(samples))
    if isinstance(first, (numbers.Number, np.generic)):  # Python floats give float64, as PyTorch's collate
        return Tensor(np.asarray(samples))
    raise TypeError(f"default_collate: cannot batch samples of type {type(first).__name__}; pass collate_fn")


def _tensor_source(dataset):
    """(arrays, row indices or None) when `dataset` is a TensorDataset or a Subset chain over one."""
    rows = None
    while isinstance(dataset, Subset):
        idx = np.asarray(dataset.indices, dtype=np.int64)
        rows = idx if rows is None else idx[rows]
        dataset = dataset.dataset
    if isinstance(dataset, TensorDataset):
        return [t.data for t in dataset.tensors], rows
    return None, None


def loader_arrays(loader):
    """(arrays, batch_size, shuffle, drop_last, generator) of a DataLoader over a TensorDataset (or a
    Subset of one), for training loops that batch arrays themselves (gn.train.fit)."""
    if not isinstance(loader, DataLoader):
        raise TypeError(f"expected a DataLoader, got {type(loader).__name__}")
    arrays, rows = _tensor_source(loader.dataset)
    if arrays is None or loader.collate_fn is not None:
        raise TypeError("fit accepts a DataLoader over a TensorDataset (or a random_split/Subset of one) without "
                        f"a collate_fn; this one reads a {type(loader.dataset).__name__}: write the loop yourself")
    if rows is not None:
        arrays = _gather(arrays, rows)
    return arrays, loader.batch_size, loader.shuffle, loader.drop_last, loader.generator


def _gather(arrays, rows):
    """Each array's rows `rows` (host indices), gathered on the arrays' device: one copy per array."""
    dev = device_of(arrays[0])
    idx = dev.xp.asarray(rows) if dev.is_gpu else rows
    return [a[idx] for a in arrays]


class DataLoader:
    """Mini-batches over a dataset: `len(loader)` batches per pass, each a tuple of Tensors (for a
    TensorDataset) or whatever `collate_fn` makes of a list of samples.

    batch_size >= 1; shuffle draws a new order each pass from `generator` (a numpy Generator) or
    gpunn's generator; drop_last skips a final short batch.
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False, drop_last: bool = False,
                 generator=None, collate_fn=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be an int >= 1, got {batch_size!r}")
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"DataLoader: dataset must have __getitem__ and __len__, got {type(dataset).__name__}")
        if generator is not None and not isinstance(generator, np.random.Generator):
            raise TypeError(f"DataLoader: generator must be a numpy.random.Generator, got {type(generator).__name__}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.generator = generator
        self.collate_fn = collate_fn

    def __len__(self) -> int:
        return num_batches(len(self.dataset), self.batch_size, self.drop_last)

    def _order(self):
        n = len(self.dataset)
        return rng_from(self.generator).permutation(n) if self.shuffle else None

    def __iter__(self):
        arrays, rows = _tensor_source(self.dataset) if self.collate_fn is None else (None, None)
        order = self._order()
        n = len(self.dataset)
        stop = n - n % self.batch_size if self.drop_last else n
        if arrays is not None:
            yield from self._slices(arrays, rows, order, stop)
            return
        collate = self.collate_fn or default_collate
        for start in range(0, stop, self.batch_size):
            idx = range(start, min(start + self.batch_size, n)) if order is None else order[start:start + self.batch_size]
            yield collate([self.dataset[int(i)] for i in idx])

    def _slices(self, arrays, rows, order, stop):
        """One gather per tensor per pass (in permuted order), then row slices: views, no copies per batch."""
        idx = rows if order is None else (order if rows is None else rows[order])
        if idx is not None:
            arrays = _gather(arrays, idx)
        n = len(arrays[0])
        for start in range(0, stop, self.batch_size):
            end = min(start + self.batch_size, n)
            yield tuple(Tensor(a[start:end]) for a in arrays)
