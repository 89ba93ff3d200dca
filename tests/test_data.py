"""gn.data.batches: coverage, drop_last, determinism, array kinds, errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpunn as gn
from gpunn.data import batches, num_batches, permutation


def _data(n, features=3):
    X = np.arange(n * features, dtype=np.float32).reshape(n, features)
    y = np.arange(n, dtype=np.int64)
    return X, y


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 60), batch_size=st.integers(1, 25), shuffle=st.booleans(), drop_last=st.booleans(),
       seed=st.integers(0, 2**32))
def test_every_sample_once_per_epoch_and_pairs_stay_aligned(n, batch_size, shuffle, drop_last, seed):
    X, y = _data(n)
    seen = []
    sizes = []
    for xb, yb in batches(X, y, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last):
        assert xb.dtype == X.dtype and yb.dtype == y.dtype
        np.testing.assert_array_equal(xb, X[yb])  # rows travel with their labels
        seen.extend(yb.tolist())
        sizes.append(len(yb))
    assert len(sizes) == num_batches(n, batch_size, drop_last)
    if drop_last:
        assert all(s == batch_size for s in sizes)
        assert len(seen) == n - n % batch_size
        assert len(set(seen)) == len(seen)
    else:
        assert sorted(seen) == list(range(n))
        assert all(s == batch_size for s in sizes[:-1])
    if not shuffle:
        assert seen == list(range(len(seen)))


def test_drop_last_skips_only_the_short_batch():
    X, y = _data(10)
    out = [yb for _, yb in batches(X, y, 4, shuffle=False, drop_last=True)]
    assert [b.tolist() for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    out = [yb for _, yb in batches(X, y, 4, shuffle=False)]
    assert [b.tolist() for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_same_seed_same_order_other_seed_other_order():
    X, y = _data(100)
    order = lambda s: np.concatenate([yb for _, yb in batches(X, y, 7, seed=s)])  # noqa: E731
    np.testing.assert_array_equal(order(3), order(3))
    assert not np.array_equal(order(3), order(4))
    # a [seed, epoch] pair (what fit passes) is a seed too, and `permutation` predicts the order
    np.testing.assert_array_equal(order([3, 1]), permutation(100, [3, 1]))
    assert not np.array_equal(order([3, 1]), order([3, 2]))


def test_seed_none_follows_manual_seed():
    X, y = _data(50)
    gn.manual_seed(11)
    a = np.concatenate([yb for _, yb in batches(X, y, 8)])
    gn.manual_seed(11)
    b = np.concatenate([yb for _, yb in batches(X, y, 8)])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, np.arange(50))


def test_generator_seed_is_used_as_is():
    X, y = _data(30)
    a = np.concatenate([yb for _, yb in batches(X, y, 8, seed=np.random.default_rng(5))])
    np.testing.assert_array_equal(a, np.random.default_rng(5).permutation(30))


def test_unshuffled_batches_are_views_and_inputs_untouched():
    X, y = _data(9)
    X0, y0 = X.copy(), y.copy()
    for xb, yb in batches(X, y, 4, shuffle=False):
        assert np.shares_memory(xb, X) and np.shares_memory(yb, y)
        assert xb.flags.c_contiguous
    for xb, _ in batches(X, y, 4, shuffle=True, seed=0):
        assert xb.flags.c_contiguous
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


def test_y_none_yields_x_only_pairs():
    X, _ = _data(5)
    out = list(batches(X, None, 2, shuffle=False))
    assert [yb for _, yb in out] == [None, None, None]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in out]), X)


def test_tensors_and_lists_are_accepted():
    X, y = _data(6)
    out = list(batches(gn.tensor(X), gn.tensor(y), 6, shuffle=False))
    assert isinstance(out[0][0], np.ndarray)
    np.testing.assert_array_equal(out[0][0], X)
    out = list(batches([[1.0], [2.0]], [0, 1], 1, shuffle=False))
    assert [float(xb[0, 0]) for xb, _ in out] == [1.0, 2.0]


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError),
                                      ("4", TypeError), (None, TypeError)])
def test_bad_batch_size_raises_at_the_call(bad, err):
    X, y = _data(4)
    with pytest.raises(err, match="batch_size"):
        batches(X, y, bad)  # raised before iterating


def test_length_mismatch_names_both_lengths():
    X, _ = _data(5)
    with pytest.raises(ValueError, match=r"len\(X\) = 5, len\(y\) = 4"):
        batches(X, np.zeros(4, np.int64), 2)


def test_zero_d_and_non_arrays_are_refused():
    with pytest.raises(ValueError, match="dimension"):
        batches(np.array(1.0, dtype=np.float32), None, 1)
    with pytest.raises(TypeError, match="NumPy or CuPy"):
        batches({"a": 1}, None, 1)
    with pytest.raises(TypeError, match="seed"):
        list(batches(np.zeros((3, 1)), None, 1, seed="abc"))
