"""gn.save / gn.load: layout, round trips, bit-exact resume, atomic saves, damaged files."""
import json
import os
import pickle

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import gpunn as gn
from gpunn import nn, optim
from gpunn.checkpoint import CheckpointError
from gpunn.optim import lr_scheduler
from gpunn.train import fit


def mlp(seed=0, sizes=(2, 16, 2), dtype=np.float32):
    gn.manual_seed(seed)
    return nn.Sequential(nn.Dense(sizes[0], sizes[1], activation="relu", dtype=dtype),
                         nn.Linear(sizes[1], sizes[2], dtype=dtype))


def weights(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def blobs(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = (rng.normal(size=(n, 2)) + 2.0 * y[:, None]).astype(np.float32)
    return X, y.astype(np.int64)


def header(path):
    data = open(path, "rb").read()
    n = int.from_bytes(data[:8], "little")
    return data, n, json.loads(data[8:8 + n])


@pytest.fixture
def trained(tmp_path):
    """A model, optimizer and scheduler after a few steps, saved to ck.safetensors."""
    X, y = blobs()
    model = mlp()
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=16, scheduler=sched, progress=False, seed=0)
    path = tmp_path / "ck.safetensors"
    gn.save(model, path, optimizer=opt, scheduler=sched, metadata={"epoch": 2, "note": "hi"})
    return model, opt, sched, path


# ----------------------------------------------------------------------------- layout and round trips

def test_file_layout_is_plain_safetensors(trained):
    model, opt, _, path = trained
    tensors = load_file(str(path))  # any safetensors reader opens it
    assert {"model.0.weight", "model.0.bias", "model.1.weight", "model.1.bias"} <= tensors.keys()
    assert "optimizer.state.0.exp_avg" in tensors and "optimizer.state.3.exp_avg_sq" in tensors
    np.testing.assert_array_equal(tensors["model.0.weight"], model[0].weight.numpy())
    _, _, head = header(path)
    meta = head["__metadata__"]
    assert meta["format"] == "gpunn.checkpoint" and len(meta["sha256"]) == 64
    assert all(isinstance(v, str) for v in meta.values())
    groups = json.loads(meta["optimizer"])["param_groups"]
    assert groups[0]["lr"] == opt.param_groups[0]["lr"] and groups[0]["params"] == [0, 1, 2, 3]
    assert json.loads(meta["metadata"]) == {"epoch": 2, "note": "hi"}
    assert json.loads(meta["model"]) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_round_trip_into_fresh_objects(trained):
    model, opt, sched, path = trained
    model2 = mlp(seed=5)
    opt2 = optim.Adam(model2.parameters(), lr=0.5)
    sched2 = lr_scheduler.StepLR(opt2, step_size=3, gamma=0.1)
    meta = gn.load(path, model2, optimizer=opt2, scheduler=sched2)
    assert meta == {"epoch": 2, "note": "hi"}
    assert same(weights(model), weights(model2))
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt2.param_groups[0]["betas"] == (0.9, 0.999)
    a, b = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert a.keys() == b.keys()
    for i in a:
        for name in a[i]:
            np.testing.assert_array_equal(a[i][name].numpy(), b[i][name].numpy())
    assert sched2.state_dict() == sched.state_dict()


def test_state_dict_without_a_model(trained):
    model, _, _, path = trained
    out = gn.load(path)
    assert out["epoch"] == 2
    assert list(out["state_dict"]) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert same(out["state_dict"], weights(model))
    assert out["state_dict"]["0.weight"].flags.writeable
    assert set(out["optimizer_state_dict"]) == {"state", "param_groups"}
    assert out["scheduler_state_dict"]["last_epoch"] == 2
    # a state dict saves like a model
    gn.save(out["state_dict"], path.with_name("sd.safetensors"))
    assert same(gn.load(path.with_name("sd.safetensors"))["state_dict"], weights(model))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_survive(tmp_path, dtype):
    model = mlp(dtype=dtype)
    gn.save(model, tmp_path / "m.safetensors")
    sd = gn.load(tmp_path / "m.safetensors")["state_dict"]
    assert all(v.dtype == dtype for v in sd.values())
    assert same(sd, weights(model))


def test_metadata_values_round_trip(tmp_path):
    meta = {"epoch": 3, "loss": 0.1 + 0.2, "inf": float("inf"), "nested": {"a": [1, 2.5, None, True]},
            "pair": (1, "x"), "scalar": np.float32(1.5), "arr": np.arange(3, dtype=np.int64),
            "ids": {1: "a", 2: "b"}, "tags": {"x", "y"}}
    gn.save(mlp(), tmp_path / "m.safetensors", metadata=meta)
    out = gn.load(tmp_path / "m.safetensors", mlp(seed=1))
    assert out.keys() == meta.keys()
    assert out["loss"] == 0.1 + 0.2 and out["inf"] == float("inf") and out["pair"] == (1, "x")
    assert out["nested"] == meta["nested"] and out["ids"] == meta["ids"] and out["tags"] == {"x", "y"}
    assert out["scalar"] == np.float32(1.5) and out["scalar"].dtype == np.float32
    np.testing.assert_array_equal(out["arr"], meta["arr"])


def test_save_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        gn.save(mlp(), tmp_path / "a.safetensors", metadata={"state_dict": 1})
    with pytest.raises(TypeError, match="function"):
        gn.save(mlp(), tmp_path / "a.safetensors", metadata={"fn": print})
    with pytest.raises(TypeError, match="Module or a state dict"):
        gn.save(42, tmp_path / "a.safetensors")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("make", [
    lambda o: lr_scheduler.MultiStepLR(o, milestones=[1, 3, 3], gamma=0.5),
    lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2),
    lambda o: lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5),
    lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, total_iters=2),
                                            lr_scheduler.ExponentialLR(o, gamma=0.9)], milestones=[2]),
], ids=["multistep", "warm_restarts", "plateau", "sequential"])
def test_scheduler_state_round_trip_continues_identically(tmp_path, make):
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    sched = make(opt)
    plateau = isinstance(sched, lr_scheduler.ReduceLROnPlateau)
    step = (lambda s, i: s.step(1.0)) if plateau else (lambda s, i: s.step())
    for i in range(3):
        step(sched, i)
    gn.save(model, tmp_path / "s.safetensors", optimizer=opt, scheduler=sched)
    model2 = mlp()
    opt2 = optim.SGD(model2.parameters(), lr=0.1)
    sched2 = make(opt2)
    gn.load(tmp_path / "s.safetensors", model2, optimizer=opt2, scheduler=sched2)
    for i in range(3, 9):
        step(sched, i)
        step(sched2, i)
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


# ----------------------------------------------------------------------------- bit-exact resume

@pytest.mark.parametrize("make_opt", [
    lambda p: optim.Adam(p, lr=0.01),
    lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.05),
    lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    lambda p: optim.RMSprop(p, lr=0.005, momentum=0.5),
    lambda p: optim.Adagrad(p, lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
], ids=["adam", "adamw", "sgd_nesterov", "rmsprop", "adagrad"])
def test_resume_from_checkpoint_is_bit_identical(tmp_path, make_opt):
    X, y = blobs(70)

    def setup():
        model = mlp(seed=3)
        opt = make_opt(model.parameters())
        return model, opt, lr_scheduler.CosineAnnealingLR(opt, T_max=4)

    def run(model, opt, sched, epochs, start=0):
        return fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=epochs, start_epoch=start, batch_size=16,
                   scheduler=sched, progress=False, seed=11)

    straight = setup()
    h = run(*straight, epochs=4)

    first = setup()
    h1 = run(*first, epochs=2)
    path = tmp_path / "resume.safetensors"
    gn.save(first[0], path, optimizer=first[1], scheduler=first[2], metadata={"epoch": 2})
    del first
    resumed = setup()
    meta = gn.load(path, resumed[0], optimizer=resumed[1], scheduler=resumed[2])
    h2 = run(*resumed, epochs=4, start=meta["epoch"])

    assert same(weights(straight[0]), weights(resumed[0]))
    assert h1.history["loss"] + h2.history["loss"] == h.history["loss"]
    assert h1.history["lr"] + h2.history["lr"] == h.history["lr"]


# ----------------------------------------------------------------------------- atomic saves

def test_crash_in_os_replace_keeps_the_old_checkpoint(trained, monkeypatch):
    model, opt, _, path = trained
    before = open(path, "rb").read()

    def boom(*args):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        gn.save(mlp(seed=9), path, optimizer=opt, metadata={"epoch": 99})
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert gn.load(path)["epoch"] == 2
    assert os.listdir(path.parent) == ["ck.safetensors"]  # no temp file left behind


def test_crash_while_writing_keeps_the_old_checkpoint(trained, monkeypatch):
    _, _, _, path = trained
    before = open(path, "rb").read()

    def boom(fd):
        raise KeyboardInterrupt  # even an interrupt between write and rename

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        gn.save(mlp(seed=9), path)
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert os.listdir(path.parent) == ["ck.safetensors"]


def test_save_overwrites_and_keeps_permissions(trained):
    _, _, _, path = trained
    os.chmod(path, 0o640)
    gn.save(mlp(seed=4), path, metadata={"epoch": 5})
    assert gn.load(path)["epoch"] == 5
    assert os.stat(path).st_mode & 0o777 == 0o640


# ----------------------------------------------------------------------------- damaged and foreign files

def test_truncated_files_are_refused(trained):
    _, _, _, path = trained
    data = open(path, "rb").read()
    _, n, _ = header(path)
    for size in (0, 5, 8, 8 + n // 2, 8 + n, 8 + n + 3, len(data) - 1):
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError) as info:
            gn.load(path)
        assert str(path) in str(info.value)


def test_every_header_byte_flip_is_refused(trained):
    _, _, _, path = trained
    data, n, _ = header(path)
    model = mlp()
    w0 = weights(model)
    for i in range(0, 8 + n):
        bad = bytearray(data)
        bad[i] ^= (0x01, 0x20, 0x80)[i % 3]  # a changed character, a case/space flip, a non-ASCII byte
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match="ck.safetensors"):
            gn.load(path, model)
    assert same(weights(model), w0)  # nothing was loaded from a damaged file


def test_flipped_data_bytes_are_caught_by_the_digest(trained):
    _, _, _, path = trained
    data, n, _ = header(path)
    for i in (8 + n, 8 + n + 17, len(data) - 1):
        bad = bytearray(data)
        bad[i] ^= 0x04
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match="digest"):
            gn.load(path)


def test_random_bytes_and_text_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    for k, blob in enumerate([rng.bytes(4096), b"hello world, not a checkpoint", b"\x10" + b"\x00" * 7 + b"{}"]):
        p = tmp_path / f"r{k}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(CheckpointError, match=f"r{k}.safetensors"):
            gn.load(p)


class _Evil:
    def __reduce__(self):
        return (os.mkdir, (os.environ["GPUNN_TEST_MARKER"],))


def test_pickle_files_are_refused_without_running_them(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("GPUNN_TEST_MARKER", str(marker))
    for proto in (2, 4, 5):
        p = tmp_path / f"evil{proto}.ckpt"
        p.write_bytes(pickle.dumps({"w": _Evil()}, protocol=proto))
        with pytest.raises(CheckpointError, match="pickle"):
            gn.load(p, mlp())
    assert not marker.exists()
    p = tmp_path / "zip.pt"
    p.write_bytes(b"PK\x03\x04" + b"\x00" * 100)  # torch.save's zip container
    with pytest.raises(CheckpointError, match="never unpickles"):
        gn.load(p)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        gn.load("/nonexistent/dir/ck.safetensors")


# ----------------------------------------------------------------------------- mismatches

def test_wrong_architecture_is_a_clear_error_and_changes_nothing(trained):
    _, _, _, path = trained
    other = mlp(sizes=(2, 8, 2))
    before = weights(other)
    with pytest.raises(CheckpointError, match=r"(?s)does not fit the model.*size mismatch for '0.weight'"):
        gn.load(path, other)
    assert same(weights(other), before)
    deeper = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(CheckpointError, match="Missing key"):
        gn.load(path, deeper)


def test_optimizer_mismatch_rolls_the_model_back(trained):
    _, _, _, path = trained
    model = mlp(seed=8)
    before = weights(model)
    sgd = optim.SGD(model.parameters(), lr=0.1)  # Adam state does not fit SGD
    with pytest.raises(CheckpointError, match="does not fit the optimizer"):
        gn.load(path, model, optimizer=sgd)
    assert same(weights(model), before)


def test_asking_for_state_the_file_lacks(tmp_path):
    model = mlp()
    gn.save(model, tmp_path / "m.safetensors")
    opt = optim.Adam(model.parameters())
    with pytest.raises(CheckpointError, match="no optimizer state"):
        gn.load(tmp_path / "m.safetensors", model, optimizer=opt)
    with pytest.raises(CheckpointError, match="no scheduler state"):
        gn.load(tmp_path / "m.safetensors", model, scheduler=lr_scheduler.StepLR(opt, 1))


def test_plain_safetensors_state_dict_from_pytorch_loads(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as torch_save_file

    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    torch_save_file(tm.state_dict(), str(tmp_path / "torch.safetensors"))
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))  # torch's keys: 0.*, 2.*
    assert gn.load(tmp_path / "torch.safetensors", model) == {}
    X = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    with gn.no_grad():
        ours = model(gn.tensor(X)).numpy()
    np.testing.assert_allclose(ours, tm(torch.from_numpy(X)).detach().numpy(), rtol=1e-5, atol=1e-6)
    save_file({"0.weight": np.zeros((3, 3), np.float32)}, str(tmp_path / "plain.safetensors"))
    assert list(gn.load(tmp_path / "plain.safetensors")["state_dict"]) == ["0.weight"]


gpu = pytest.mark.skipif(not gn.gpu_status()[0], reason="no usable GPU: " + gn.gpu_status()[1])


@gpu
def test_gpu_model_saves_and_loads(trained, tmp_path):
    model, opt, sched, path = trained
    g = mlp(seed=6).to("gpu")
    gopt = optim.Adam(g.parameters(), lr=1.0)
    gn.load(path, g, optimizer=gopt)
    assert g[0].weight.device.is_gpu
    assert same(weights(g), weights(model))
    gn.save(g, tmp_path / "g.safetensors", optimizer=gopt)
    assert same(gn.load(tmp_path / "g.safetensors")["state_dict"], weights(model))
