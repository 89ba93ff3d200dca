"""gn.train: fit/evaluate/predict, History, callbacks, divergence, determinism, input errors."""
import io
import math

import numpy as np
import pytest

import gpunn as gn
from gpunn import datasets, nn, optim
from gpunn.train import Callback, EarlyStopping, History, TrainingDiverged, evaluate, fit, predict


def mlp(sizes=(2, 8, 2), seed=0, activation="tanh", dtype=np.float32):
    gn.manual_seed(seed)
    mods = [nn.Dense(a, b, activation=activation, dtype=dtype) for a, b in zip(sizes[:-2], sizes[1:-1])]
    return nn.Sequential(*mods, nn.Linear(sizes[-2], sizes[-1], dtype=dtype))


def weights(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def blobs(n=64, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = (rng.normal(size=(n, 2)) + 2.5 * y[:, None]).astype(np.float32)
    return X, y.astype(np.int64)


# ----------------------------------------------------------------------------- learning

def test_mlp_solves_xor():
    X, y = datasets.xor()
    model = mlp((2, 8, 2))
    opt = optim.Adam(model.parameters(), lr=0.05)
    h = fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=200, batch_size=4, progress=False, seed=0)
    assert h.history["accuracy"][-1] == 1.0
    assert h.history["loss"][-1] < 0.01 < h.history["loss"][0]
    assert evaluate(model, nn.CrossEntropyLoss(), X, y)["accuracy"] == 1.0
    np.testing.assert_array_equal(predict(model, X).argmax(axis=1), y)


def test_digits_mlp_reaches_97_percent():
    Xtr, ytr, Xte, yte = datasets.digits()
    model = mlp((64, 128, 10), seed=0, activation="relu")
    opt = optim.Adam(model.parameters(), lr=1e-3)
    h = fit(model, nn.CrossEntropyLoss(), opt, Xtr, ytr, epochs=25, batch_size=32, validation=(Xte, yte),
            progress=False, seed=0)
    test = evaluate(model, nn.CrossEntropyLoss(), Xte, yte)
    assert test["accuracy"] >= 0.97, test
    assert h.history["val_accuracy"][-1] == test["accuracy"]
    assert math.isclose(h.history["val_loss"][-1], test["loss"], rel_tol=1e-9)
    assert h.history["accuracy"][-1] > 0.99


def test_regression_history_has_no_accuracy():
    X, y = datasets.sine(n=128, seed=0)
    model = mlp((1, 32, 1), activation="tanh")
    opt = optim.Adam(model.parameters(), lr=1e-2)
    h = fit(model, nn.MSELoss(), opt, X, y, epochs=40, batch_size=16, progress=False, seed=0)
    assert set(h.history) == {"loss", "lr"}
    assert h.history["loss"][-1] < 0.1 * h.history["loss"][0]
    assert "accuracy" not in evaluate(model, nn.MSELoss(), X, y)


def test_binary_bce_accuracy():
    X, y = blobs(128)
    model = mlp((2, 8, 1))
    opt = optim.Adam(model.parameters(), lr=0.05)
    t = y.astype(np.float32).reshape(-1, 1)
    h = fit(model, nn.BCEWithLogitsLoss(), opt, X, t, epochs=20, batch_size=16, progress=False, seed=0)
    assert h.history["accuracy"][-1] > 0.9
    out = predict(model, X)
    assert evaluate(model, nn.BCEWithLogitsLoss(), X, t)["accuracy"] == np.mean((out > 0) == (t > 0.5))


def test_history_layout_and_epoch_loss_is_the_sample_mean():
    X, y = blobs(10)
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights fixed, so the epoch loss is checkable
    h = fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=3, batch_size=4, validation=(X, y),
            progress=False, seed=0)
    assert isinstance(h, History) and len(h) == 3 and h.epochs == [0, 1, 2]
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert all(len(v) == 3 for v in h.history.values())
    full = evaluate(model, nn.CrossEntropyLoss(), X, y)
    assert math.isclose(h["loss"][0], full["loss"], rel_tol=1e-6)  # batches of 4, 4, 2 weighted by size
    assert h["accuracy"][0] == full["accuracy"] == h["val_accuracy"][2]
    assert h["lr"] == [0.0, 0.0, 0.0]
    assert "loss=" in repr(h)


# ----------------------------------------------------------------------------- determinism and resume

def _run(seed, epochs=3, start=0, model=None, opt=None):
    X, y = blobs(50)
    model = model or mlp()
    opt = opt or optim.Adam(model.parameters(), lr=0.01)
    h = fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=epochs, start_epoch=start, batch_size=8,
            progress=False, seed=seed)
    return model, opt, h


def test_same_seed_bit_identical_weights_and_losses():
    m1, _, h1 = _run(7)
    m2, _, h2 = _run(7)
    m3, _, h3 = _run(8)
    w1, w2, w3 = weights(m1), weights(m2), weights(m3)
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert h1.history["loss"] == h2.history["loss"]
    assert h1.seed == 7
    assert not all(np.array_equal(w1[k], w3[k]) for k in w1)


def test_seed_none_follows_manual_seed():
    X, y = blobs(40)
    out = []
    for _ in range(2):
        model = mlp(seed=0)
        gn.manual_seed(123)
        opt = optim.SGD(model.parameters(), lr=0.1)
        h = fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=8, progress=False)
        out.append((h.seed, h.history["loss"]))
    assert out[0] == out[1]


def test_start_epoch_resumes_the_same_batches():
    straight, _, h = _run(5, epochs=4)
    model, opt, h1 = _run(5, epochs=2)
    model, opt, h2 = _run(5, epochs=4, start=2, model=model, opt=opt)
    assert h2.epochs == [2, 3]
    assert h1.history["loss"] + h2.history["loss"] == h.history["loss"]
    a, b = weights(straight), weights(model)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_no_shuffle_is_the_data_order():
    X, y = blobs(12)
    seen = []

    class Spy(Callback):
        def on_batch_end(self, step, logs=None):
            seen.append(step)

    model = mlp()
    fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), X, y, epochs=2, batch_size=5,
        shuffle=False, callbacks=[Spy()], progress=False)
    assert seen == [0, 1, 2, 0, 1, 2]


# ----------------------------------------------------------------------------- schedulers

def test_scheduler_steps_per_epoch_and_per_batch():
    X, y = blobs(20)
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    h = fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=3, batch_size=10, scheduler=sched, progress=False)
    assert h["lr"] == pytest.approx([0.1, 0.05, 0.025])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0125)

    opt = optim.SGD(model.parameters(), lr=0.1)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=10, scheduler=sched,
        scheduler_step="batch", progress=False)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 4)  # 2 epochs x 2 steps


def test_adagrad_trains_through_fit_eager_and_compiled_alike():
    """Adagrad (state from construction, lr decayed per step) with a per-batch scheduler: fit and
    fit(compile=True) give the same losses and weights, and the loss falls."""
    X, y = blobs(40)
    runs = []
    for compiled in (False, True):
        model = mlp(seed=2)
        opt = optim.Adagrad(model.parameters(), lr=0.2, lr_decay=0.01, initial_accumulator_value=0.1)
        sched = optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7)
        h = fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=4, batch_size=16, scheduler=sched,
                scheduler_step="batch", progress=False, seed=1, compile=compiled)
        runs.append((h["loss"], weights(model)))
    assert runs[0][0] == runs[1][0] and runs[0][0][-1] < runs[0][0][0]
    for k, w in runs[0][1].items():
        np.testing.assert_array_equal(w, runs[1][1][k])


def test_on_batch_end_gets_the_rate_the_step_used():
    X, y = blobs(20)
    seen = []

    class Rates(Callback):
        def on_batch_end(self, step, logs=None):
            seen.append(logs["lr"])

    for scheduler_step, expected in (("batch", [0.1, 0.05, 0.025, 0.0125]), ("epoch", [0.1, 0.1, 0.05, 0.05])):
        seen.clear()
        model = mlp()
        opt = optim.SGD(model.parameters(), lr=0.1)
        sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        h = fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=10, scheduler=sched,
                scheduler_step=scheduler_step, callbacks=[Rates()], progress=False)
        assert seen == pytest.approx(expected)
        assert h["lr"] == pytest.approx([expected[1], expected[3]])  # the rate of each epoch's last step


def test_reduce_on_plateau_gets_the_monitored_loss():
    X, y = blobs(20)
    Xv, yv = blobs(12, seed=1)
    got = []

    class Spy(optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics):
            got.append(metrics)
            super().step(metrics)

    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    h = fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=3, batch_size=10, scheduler=Spy(opt),
            validation=(Xv, yv), progress=False)
    assert got == h["val_loss"]
    got.clear()
    h = fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=10, scheduler=Spy(opt), progress=False)
    assert got == h["loss"]


# ----------------------------------------------------------------------------- callbacks

def test_early_stopping_stops_after_patience():
    X, y = blobs(20)
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.0)  # validation loss never improves after epoch 0
    es = EarlyStopping(monitor="val_loss", patience=2)
    h = fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=50, batch_size=8, validation=(X, y),
            callbacks=[es], progress=False)
    assert h.epochs == [0, 1, 2]
    assert es.stopped_epoch == 2 and es.best_epoch == 0


def test_early_stopping_restores_best_weights():
    X, y = blobs(40)
    model = mlp()
    snapshots = {}

    class Snap(Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch] = weights(self.model)

    # mode="max" on a falling loss: epoch 0 is the best and is never beaten
    es = EarlyStopping(monitor="loss", mode="max", patience=3, restore_best_weights=True)
    h = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.05), X, y, epochs=20,
            batch_size=8, callbacks=[Snap(), es], progress=False, seed=0)
    assert len(h) == 4
    final = weights(model)
    assert all(np.array_equal(final[k], snapshots[0][k]) for k in final)
    assert not all(np.array_equal(final[k], snapshots[3][k]) for k in final)


def test_early_stopping_min_delta_and_errors():
    es = EarlyStopping(monitor="val_accuracy", min_delta=0.1)
    assert es.mode == "max"
    es.set_context(None, None, None)
    es.on_train_begin()
    es.on_epoch_end(0, {"val_accuracy": 0.5})
    es.on_epoch_end(1, {"val_accuracy": 0.55})  # not better by more than min_delta
    assert es.best == 0.5 and es.wait == 1
    with pytest.raises(ValueError, match="validation="):
        es.on_epoch_end(2, {"loss": 1.0})
    for bad in (dict(patience=-1), dict(min_delta=-0.1), dict(mode="up")):
        with pytest.raises(ValueError):
            EarlyStopping(**bad)


def test_callback_hooks_and_stop_training():
    X, y = blobs(20)
    calls = []

    class Rec(Callback):
        def on_train_begin(self, logs=None):
            calls.append("begin")

        def on_epoch_begin(self, epoch, logs=None):
            calls.append(f"e{epoch}")

        def on_batch_end(self, step, logs=None):
            assert isinstance(logs["loss"], gn.Tensor) and logs["lr"] == 0.1
            calls.append("b")

        def on_epoch_end(self, epoch, logs=None):
            assert self.history.epochs[-1] == epoch and "loss" in logs
            self.stop_training = epoch == 1

        def on_train_end(self, logs=None):
            calls.append("end")

    model = mlp()
    h = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), X, y, epochs=5, batch_size=10,
            callbacks=Rec(), progress=False)
    assert calls == ["begin", "e0", "b", "b", "e1", "b", "b", "end"]
    assert len(h) == 2
    with pytest.raises(TypeError, match="Callback"):
        fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), X, y, callbacks=[print])


# ----------------------------------------------------------------------------- divergence

def test_huge_learning_rate_stops_with_training_diverged():
    X, y = blobs(64)
    model = mlp(activation="relu")  # (tanh saturates and keeps even a 1e30 step's loss finite)
    opt = optim.SGD(model.parameters(), lr=1e30)
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged) as info:
        fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=5, batch_size=8, progress=False, seed=0)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.what == "loss" and err.lr == 1e30
    msg = str(err)
    assert f"epoch {err.epoch + 1}/5" in msg and f"step {err.step + 1}/8" in msg
    assert "lr=1e+30" in msg and "loss became" in msg and "lower the learning rate" in msg
    assert err.epoch == 0 and err.step >= 1  # the first step's loss was finite


def test_non_finite_input_batch_is_named_before_it_is_used():
    X, y = blobs(16)
    X[9, 1] = np.nan
    X[11, 0] = np.inf
    model = mlp()
    before = weights(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged) as info:
        fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=4, shuffle=False, progress=False)
    err = info.value
    assert err.what == "input" and (err.epoch, err.step) == (0, 2)
    assert "step 3/4" in str(err) and "X rows 9, 11" in str(err) and "epoch 1/2" in str(err)
    after = weights(model)
    assert all(np.isfinite(v).all() for v in after.values())  # the bad batch never ran
    assert not all(np.array_equal(before[k], after[k]) for k in before)  # two steps did


def test_non_finite_target_is_named():
    X, y = datasets.sine(n=8, seed=0)
    y[5, 0] = np.nan
    model = mlp((1, 4, 1))
    with pytest.raises(TrainingDiverged, match="target batch") as info:
        fit(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.1), X, y, epochs=1, batch_size=4,
            shuffle=True, seed=3, progress=False)
    assert info.value.what == "target"


# ----------------------------------------------------------------------------- input errors

def test_input_errors():
    X, y = blobs(8)
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    ce = nn.CrossEntropyLoss()
    with pytest.raises(TypeError, match=r"X.astype\(np.float32\)"):
        fit(model, ce, opt, X.astype(np.float64), y)
    with pytest.raises(TypeError, match=r"X.astype\(np.float32\)"):
        fit(model, ce, opt, X.astype(np.int32), y)
    with pytest.raises(TypeError, match=r"y.astype\(np.int64\)"):
        fit(model, ce, opt, X, y.astype(np.float32))
    with pytest.raises(ValueError, match=r"len\(X\) = 8, len\(y\) = 7"):
        fit(model, ce, opt, X, y[:7])
    with pytest.raises(ValueError, match="targets y are required"):
        fit(model, ce, opt, X, None)
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, ce, opt, X, y, batch_size=0)
    with pytest.raises(ValueError, match="start_epoch"):
        fit(model, ce, opt, X, y, epochs=2, start_epoch=3)
    with pytest.raises(ValueError, match="scheduler_step"):
        fit(model, ce, opt, X, y, scheduler_step="step")
    with pytest.raises(ValueError, match="seed"):
        fit(model, ce, opt, X, y, seed=-1)
    with pytest.raises(TypeError, match=r"X_val.astype"):
        fit(model, ce, opt, X, y, validation=(X.astype(np.float64), y))
    with pytest.raises(TypeError, match="pair"):
        fit(model, ce, opt, X, y, validation=X)
    with pytest.raises(TypeError, match=r"y.astype\(np.float32\)"):
        fit(mlp((2, 4, 1)), nn.MSELoss(), opt, X, y.astype(np.float64).reshape(-1, 1))


def test_float64_model_trains_on_float64_data():
    X, y = blobs(16)
    model = mlp(dtype=np.float64)
    h = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01), X.astype(np.float64), y,
            epochs=2, batch_size=8, progress=False, seed=0)
    assert len(h) == 2
    with pytest.raises(TypeError, match="float64"):
        fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters()), X, y)


def test_device_argument_must_match_the_model():
    X, y = blobs(8)
    model = mlp()
    h = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), X, y, device="cpu",
            progress=False)
    assert len(h) == 1
    usable, _ = gn.gpu_status()
    with pytest.raises(ValueError if usable else gn.DeviceError, match="model.to" if usable else "GPU"):
        fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), X, y, device="gpu")


# ----------------------------------------------------------------------------- evaluate / predict / progress

def test_evaluate_and_predict_restore_mode_and_record_no_graph():
    X, y = blobs(300)
    model = mlp()
    model.train()
    out = predict(model, X, batch_size=64)
    assert model.training
    with gn.no_grad():
        direct = model(gn.tensor(X)).numpy()
    np.testing.assert_allclose(out, direct, rtol=1e-6, atol=1e-6)
    assert out.shape == (300, 2) and isinstance(out, np.ndarray)
    model.eval()
    evaluate(model, nn.CrossEntropyLoss(), X, y, batch_size=7)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert predict(model, X[:0]).shape[0] == 0


class _FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_shows_loss_and_lr_on_a_terminal_only(monkeypatch):
    X, y = blobs(40)
    model = mlp()
    tty = _FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)
    fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), X, y, epochs=2, batch_size=8)
    text = tty.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "loss=" in text and "lr=0.1" in text
    quiet = _FakeTTY()
    monkeypatch.setattr("sys.stderr", quiet)
    fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), X, y, epochs=1, batch_size=8,
        progress=False)
    assert quiet.getvalue() == ""
    pipe = io.StringIO()  # not a terminal: tqdm(disable=None) stays silent
    monkeypatch.setattr("sys.stderr", pipe)
    fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), X, y, epochs=1, batch_size=8)
    assert pipe.getvalue() == ""


# ----------------------------------------------------------------------------- GPU (where one is usable)

gpu = pytest.mark.skipif(not gn.gpu_status()[0], reason="no usable GPU: " + gn.gpu_status()[1])


@gpu
def test_gpu_fit_matches_cpu_and_detects_divergence():
    X, y = blobs(64)
    cpu_model, _, h_cpu = _run(1)
    model = mlp().to("gpu")
    opt = optim.Adam(model.parameters(), lr=0.01)
    X2, y2 = blobs(50)
    h = fit(model, nn.CrossEntropyLoss(), opt, X2, y2, epochs=3, batch_size=8, progress=False, seed=1)
    np.testing.assert_allclose(h.history["loss"], h_cpu.history["loss"], rtol=1e-3, atol=1e-4)
    w_gpu, w_cpu = weights(model), weights(cpu_model)
    for k in w_cpu:
        np.testing.assert_allclose(w_gpu[k], w_cpu[k], rtol=1e-3, atol=1e-4)
    out = predict(model, X)
    assert isinstance(out, np.ndarray)
    import cupy

    assert isinstance(predict(model, cupy.asarray(X)), cupy.ndarray)
    bad = mlp(activation="relu").to("gpu")
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged, match="loss became") as info:
        fit(bad, nn.CrossEntropyLoss(), optim.SGD(bad.parameters(), lr=1e30), X, y, epochs=3, batch_size=8,
            progress=False, seed=0)
    assert info.value.what == "loss"
