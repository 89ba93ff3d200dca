"""gn.utils.data: TensorDataset, DataLoader (len, seeded shuffling, drop_last, batches as Tensors on the
dataset's device), random_split, default_collate, and fit taking a DataLoader."""
from __future__ import annotations

import numpy as np
import pytest

import gpunn as gn
from gpunn.utils.data import DataLoader, Dataset, Subset, TensorDataset, random_split


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _ds(n=10, backend=None):
    X = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n)
    if backend is not None:
        X, y = backend.asarray(X), backend.asarray(y)
    return TensorDataset(gn.Tensor(X), gn.Tensor(y))


def test_tensor_dataset_len_indexing_and_errors():
    ds = _ds()
    assert len(ds) == 10
    x, y = ds[3]
    assert x.tolist() == [6.0, 7.0] and y.item() == 3
    xs, ys = ds[2:4]
    assert xs.shape == (2, 2) and ys.tolist() == [2, 3]
    assert len(TensorDataset(np.zeros((4, 1)))) == 4  # arrays are accepted
    with pytest.raises(ValueError, match=r"size mismatch.*\[3, 4\]"):
        TensorDataset(gn.zeros(3, 2), gn.zeros(4))
    with pytest.raises(ValueError, match="at least one"):
        TensorDataset()
    with pytest.raises(TypeError, match="tensor 1 is a list"):
        TensorDataset(gn.zeros(3), [1, 2, 3])
    with pytest.raises(ValueError, match="0-d"):
        TensorDataset(gn.tensor(1.0))


def test_dataloader_batches_len_and_device(backend):
    ds = _ds(10, backend)
    for drop_last, sizes in ((False, [4, 4, 2]), (True, [4, 4])):
        dl = DataLoader(ds, batch_size=4, drop_last=drop_last)
        batches = list(dl)
        assert len(dl) == len(sizes) and [len(b[0]) for b in batches] == sizes
        for xb, yb in batches:
            assert isinstance(xb, gn.Tensor) and xb.device == ds.tensors[0].device
        assert [int(v) for b in batches for v in backend.to_numpy(b[1])] == list(range(sum(sizes)))


def test_dataloader_shuffle_is_seeded_and_new_each_pass():
    ds = _ds(12)

    def order(dl):
        return [int(v) for _, yb in dl for v in yb.numpy()]

    gn.manual_seed(7)
    dl = DataLoader(ds, batch_size=5, shuffle=True)
    first, second = order(dl), order(dl)
    assert sorted(first) == list(range(12)) and first != second  # a new order every epoch
    gn.manual_seed(7)
    assert order(dl) == first and order(dl) == second
    g = DataLoader(ds, batch_size=5, shuffle=True, generator=np.random.default_rng(3))
    h = DataLoader(ds, batch_size=5, shuffle=True, generator=np.random.default_rng(3))
    assert order(g) == order(h)
    assert len(DataLoader(ds, batch_size=5, shuffle=True, drop_last=True)) == 2


def test_random_split_and_subsets():
    ds = _ds(10)
    gn.manual_seed(0)
    a, b = random_split(ds, [7, 3])
    assert isinstance(a, Subset) and (len(a), len(b)) == (7, 3)
    rows = sorted(int(ds_i[1].item()) for part in (a, b) for ds_i in (part[i] for i in range(len(part))))
    assert rows == list(range(10))
    gn.manual_seed(0)
    assert random_split(ds, [7, 3])[0].indices == a.indices
    assert [len(p) for p in random_split(ds, [0.5, 0.3, 0.2])] == [5, 3, 2]
    assert [len(p) for p in random_split(_ds(11), [0.5, 0.5], generator=np.random.default_rng(1))] == [6, 5]
    # a loader over a subset of a subset sees exactly its rows
    inner = random_split(a, [4, 3])[0]
    got = sorted(int(v) for _, yb in DataLoader(inner, batch_size=3, shuffle=True) for v in yb.numpy())
    assert got == sorted(a.indices[i] for i in inner.indices)
    with pytest.raises(ValueError, match="sum to the dataset length 10"):
        random_split(ds, [5, 4])
    with pytest.raises(ValueError, match="fractions"):
        random_split(ds, [0.5, 0.6])


def test_default_collate_over_a_plain_dataset():
    class Squares(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return gn.tensor([float(i), float(i * i)]), i, float(i) / 2

    batches = list(DataLoader(Squares(), batch_size=2))
    assert len(batches) == 3
    x, i, h = batches[0]
    assert x.tolist() == [[0.0, 0.0], [1.0, 1.0]] and i.dtype == gn.int64 and h.dtype == gn.float64
    pairs = list(DataLoader(Squares(), batch_size=3, collate_fn=lambda s: [t[1] for t in s]))
    assert pairs == [[0, 1, 2], [3, 4]]


def test_dataloader_bad_arguments():
    ds = _ds()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            DataLoader(ds, batch_size=bad)
    with pytest.raises(TypeError, match="__getitem__ and __len__"):
        DataLoader(5)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        DataLoader(ds, generator=3)


def _model():
    gn.manual_seed(0)
    return gn.nn.Sequential(gn.nn.Linear(2, 8), gn.nn.ReLU(), gn.nn.Linear(8, 3))


def test_fit_accepts_a_dataloader_and_matches_the_array_form():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 2)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    runs = []
    for use_loader in (True, False):
        model = _model()
        opt = gn.optim.SGD(model.parameters(), lr=0.1)
        loss = gn.nn.CrossEntropyLoss()
        if use_loader:
            dl = DataLoader(TensorDataset(gn.tensor(X), gn.tensor(y)), batch_size=8, shuffle=True)
            hist = gn.train.fit(model, loss, opt, dl, epochs=3, progress=False, seed=5)
        else:
            hist = gn.train.fit(model, loss, opt, X, y, epochs=3, batch_size=8, progress=False, seed=5)
        runs.append(hist["loss"])
    assert runs[0] == runs[1]


def test_fit_with_drop_last_and_errors():
    X = np.random.default_rng(1).standard_normal((10, 2)).astype(np.float32)
    y = np.arange(10) % 3
    model = _model()
    opt = gn.optim.SGD(model.parameters(), lr=0.1)
    dl = DataLoader(TensorDataset(gn.tensor(X), gn.tensor(y)), batch_size=4, shuffle=True, drop_last=True,
                    generator=np.random.default_rng(0))
    hist = gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt, dl, epochs=2, progress=False)
    assert len(hist["loss"]) == 2 and np.isfinite(hist["loss"]).all()
    with pytest.raises(TypeError, match="not a DataLoader and y"):
        gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt, dl, y, progress=False)
    with pytest.raises(ValueError, match="targets y are required"):
        gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt, X, progress=False)
    with pytest.raises(TypeError, match="needs two"):
        gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt, DataLoader(TensorDataset(gn.tensor(X))), progress=False)
    with pytest.raises(ValueError, match="leaves no batch"):
        gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt,
                     DataLoader(TensorDataset(gn.tensor(X), gn.tensor(y)), batch_size=16, drop_last=True), progress=False)


def test_lengths_match_torch(torch):
    tdata = torch.utils.data
    for n, bs, drop in ((10, 4, False), (10, 4, True), (8, 4, True), (3, 5, False)):
        tds = tdata.TensorDataset(torch.zeros(n, 1))
        assert len(DataLoader(_ds(n), batch_size=bs, drop_last=drop)) == len(tdata.DataLoader(tds, bs, drop_last=drop))
    for n, fracs in ((10, [0.5, 0.3, 0.2]), (11, [0.5, 0.5]), (7, [0.1, 0.2, 0.7])):
        want = [len(p) for p in tdata.random_split(range(n), fracs)]
        assert [len(p) for p in random_split(_ds(n), fracs)] == want
