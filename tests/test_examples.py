"""The examples in examples/ run, and what each one claims holds.

Every example exposes run(...) (its measurements) and plot(result, path); each claim test runs it
SMALL (fewer epochs, samples or steps than the script's defaults, except digits, whose 0.97 claim
needs its real settings and takes about a second) and asserts the example's claim on the numbers;
test_figure_is_drawn draws each figure from the same run into tmp_path (skipped without
matplotlib). The margins were checked over several seeds: run the file with
GPUNN_EXAMPLES_SEED=1 (2, 3, ...) to repeat that, and with -s to see the measured numbers.

Also checked: --device gpu without a usable GPU exits with gpunn's reason (every example), --device
auto falls back to the CPU saying why, the examples use gpunn's public API only (no torch), and
examples/README.md lists every example with its committed figure.
"""
from __future__ import annotations

import ast
import importlib
import math
import os
import sys

import numpy as np
import pytest

import gpunn as gn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES_DIR = os.path.join(ROOT, "examples")
if EXAMPLES_DIR not in sys.path:
    sys.path.insert(0, EXAMPLES_DIR)

SEED = int(os.environ.get("GPUNN_EXAMPLES_SEED", "0"))
EXAMPLES = ("perceptron_logic", "xor_mlp", "universal_approximation", "activations", "vanishing_gradients",
            "dead_relu", "losses_outliers", "loss_landscape", "learning_rates", "optimizers", "schedules",
            "digits", "backprop_by_hand", "gpu_vs_cpu", "linear_collapse", "first_layer_features", "ce_vs_mse",
            "sgd_noise", "overparameterization")
GPU_USABLE, GPU_REASON = gn.gpu_status()

# each example's SMALL settings (its run(...) arguments besides the seed)
SMALL = {
    "perceptron_logic": dict(epochs=30),
    "xor_mlp": dict(epochs=150),
    "universal_approximation": dict(widths=(2, 16, 64), steps=1500),
    "activations": dict(points=100),
    "vanishing_gradients": dict(depths=(2, 10, 20), inits=2, epochs=30, n=300),
    "dead_relu": dict(epochs=10, n=300),
    "losses_outliers": dict(n=100, epochs=300),
    "loss_landscape": dict(epochs=60, resolution=11, n=400),
    "learning_rates": dict(epochs=10, n=256),
    "optimizers": dict(epochs=40, n=300),
    "schedules": dict(epochs=30, n=300),
    "digits": dict(),  # its real settings: the 0.97 claim needs them (about a second)
    "backprop_by_hand": dict(),
    "gpu_vs_cpu": dict(epochs=1, n=512, width=32),
    "linear_collapse": dict(steps=400, n=128),
    "first_layer_features": dict(epochs=10),
    "ce_vs_mse": dict(steps=120, lrs=(1.0, 10.0), shown_lr=10.0),
    "sgd_noise": dict(steps=500, runs=100, batches=(1, 4, 64), gen_seeds=(0,), gen_n=200),
    "overparameterization": dict(widths=(2, 64), steps=300, starts=4, n=300),
}
NEEDS_SKLEARN = ("digits", "first_layer_features", "ce_vs_mse", "sgd_noise", "overparameterization")
_results = {}


def example(name):
    return importlib.import_module(name)


def result(name):
    """example(name).run(**SMALL[name], seed=SEED), once per session: the claim test and the figure
    test of an example share it."""
    if name not in _results:
        _results[name] = example(name).run(**SMALL[name], seed=SEED)
    return _results[name]


def show(name, **numbers):
    print(f"[{name} seed {SEED}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in numbers.items()))


# ----------------------------------------------------------------------------------- the claims

def test_perceptron_learns_and_or_but_not_xor():
    r = result("perceptron_logic")
    show("perceptron", **{f"{g}_acc": r[g]["accuracy"] for g in r}, xor_epochs=len(r["XOR"]["mistakes"]))
    for gate in ("AND", "OR"):
        assert r[gate]["accuracy"] == 1.0 and r[gate]["converged"]
        assert r[gate]["best_line_accuracy"] == 1.0
    xor = r["XOR"]
    assert xor["accuracy"] <= 0.75
    assert not xor["converged"] and len(xor["mistakes"]) == 30 and min(xor["mistakes"]) >= 1
    assert xor["best_line_accuracy"] == 0.75  # no line does better than 3 of 4


def test_xor_mlp_solves_xor():
    r = result("xor_mlp")
    show("xor_mlp", accuracy=r["accuracy"], loss=r["loss"])
    assert r["accuracy"] == 1.0
    assert np.array_equal(r["pred"], r["y"])
    assert r["loss"] < 0.05


def test_universal_approximation_error_falls_with_width_and_depth_helps():
    r = result("universal_approximation")
    spread = [s["mse"] for s in r["spread"]]
    default = [s["mse"] for s in r["shallow"]]
    d, s = r["deep"], r["same_size_shallow"]
    show("universal", spread=" ".join(f"{v:.2e}" for v in spread), default=" ".join(f"{v:.2e}" for v in default),
         deep=d["mse"], same_size=s["mse"], depth_gain=s["mse"] / d["mse"])
    assert spread[0] > spread[1] > spread[2]  # strictly falls with width
    assert spread[-1] < spread[0] / 10
    assert min(default[1:]) < default[0] / 5
    assert abs(d["params"] - s["params"]) <= 2  # the same parameter count
    assert d["mse"] < s["mse"] / 3


def test_activation_derivatives_match_finite_differences():
    r = result("activations")
    show("activations", **{k.split(" ")[0]: c["max_err"] for k, c in r["curves"].items()},
         jacobian=r["softmax_jacobian_err"])
    assert len(r["curves"]) == 6
    for name, c in r["curves"].items():
        assert c["max_err"] < 1e-6, name
    relu = r["curves"]["ReLU"]
    assert np.array_equal(relu["dy"], (r["x"] > 0).astype(float))  # the derivative itself, exactly
    sig = r["curves"]["sigmoid"]
    np.testing.assert_allclose(sig["dy"], sig["y"] * (1 - sig["y"]), atol=1e-12)
    assert r["softmax_jacobian_err"] < 1e-12


def test_vanishing_gradients_sigmoid_vs_relu():
    r = result("vanishing_gradients")
    first = r["first_layer"]
    ratio = {a: v[-1] / v[0] for a, v in first.items()}
    c = r["curves"]
    show("vanishing", **{f"{a}_ratio": v for a, v in ratio.items()},
         sigmoid_loss=c["sigmoid"]["loss"][-1], relu_loss=c["ReLU"]["loss"][-1], relu_init=c["ReLU"]["initial"])
    assert ratio["sigmoid"] < 1e-6  # six orders of magnitude and more from 2 to 20 layers
    assert first["sigmoid"][0] > first["sigmoid"][1] > first["sigmoid"][2]
    assert ratio["ReLU"] > 0.1  # within one order of magnitude
    # the deepest sigmoid network stays at chance; the ReLU one learns
    assert c["sigmoid"]["loss"][-1] > 0.95 * math.log(3)
    assert c["ReLU"]["loss"][-1] < 0.7 * c["ReLU"]["initial"]


def test_dead_relu_large_lr_kills_relu_units_not_leaky_or_gelu():
    ex = example("dead_relu")
    r = result("dead_relu")
    runs = r["runs"]
    small, big = "sensible lr 3e-3", "too large lr 0.1"
    dead = {(a, k): runs[(a, k)]["dead"] for a in ex.ACTIVATIONS for k in (small, big)}
    show("dead_relu", relu_small=dead[("ReLU", small)], relu_big=dead[("ReLU", big)],
         leaky_big=dead[("Leaky ReLU", big)], gelu_big=dead[("GELU", big)],
         relu_revived=runs[("ReLU", big)]["revived"], leaky_silent=runs[("Leaky ReLU", big)]["silent"])
    assert dead[("ReLU", big)] >= 0.3
    assert dead[("ReLU", big)] >= 1.8 * dead[("ReLU", small)]
    assert dead[("Leaky ReLU", big)] == 0.0 and dead[("Leaky ReLU", small)] == 0.0
    assert dead[("GELU", big)] <= 0.15
    assert runs[("ReLU", big)]["revived"] <= 0.05  # dead ReLU units stay dead
    assert runs[("Leaky ReLU", big)]["silent"] > 0  # silenced, yet not dead: they still get a gradient


def test_losses_outliers_mae_stays_near_true_line():
    r = result("losses_outliers")
    (wm, bm), (wa, ba) = r["fits"]["MSE"], r["fits"]["MAE"]
    show("losses_outliers", mse_err=r["MSE_line_error"], mae_err=r["MAE_line_error"], mse_slope=wm, mae_slope=wa)
    assert r["MAE_line_error"] < 0.15
    assert r["MSE_line_error"] > 0.5
    assert r["MSE_line_error"] > 5 * r["MAE_line_error"]
    ls_w, ls_b = r["least_squares"]  # the MSE fit is least squares, pulled by the outliers
    assert abs(wm - ls_w) < 0.02 and abs(bm - ls_b) < 0.02


def test_loss_landscape_trained_point_is_the_bottom_of_the_slice():
    r = result("loss_landscape")
    show("loss_landscape", centre=r["centre_loss"], min=r["min_loss"], border=r["border_mean"],
         border_min=r["border_min"], first=r["trajectory_losses"][0], pca=r["pca"]["explained"])
    assert r["centre_loss"] <= 1.02 * r["min_loss"]  # the trained point is (within 2%) the plane's lowest
    assert r["border_min"] > 1.05 * r["centre_loss"]  # and the loss is higher all around the plane's edge
    assert r["border_mean"] >= 1.3 * r["centre_loss"]
    assert r["trajectory_losses"][0] > 2 * r["trajectory_losses"][-1]
    assert np.allclose(r["trajectory"][-1], 0)
    # filter normalisation: every weight row of each direction has the norm of that row of theta*
    for d in r["directions"]:
        offset = 0
        for p in r["params"]:
            piece = d[offset:offset + p.size].reshape(p.shape)
            if p.ndim == 2:
                np.testing.assert_allclose(np.linalg.norm(piece, axis=1), np.linalg.norm(p, axis=1), rtol=1e-5)
            else:
                assert not piece.any()
            offset += p.size
    assert r["pca"]["explained"] > 0.8


def test_learning_rates_small_right_and_diverging(capsys):
    ex = example("learning_rates")
    r = result("learning_rates")
    small, right, large = r["too small"], r["about right"], r["too large"]
    ex.report(r)
    printed = capsys.readouterr().out
    show("learning_rates", small=small["last"] / small["first"], right=right["last"] / right["first"],
         ratio=small["last"] / right["last"], stopped_at=len(large["losses"]) + 1)
    assert right["last"] < 0.15 * right["first"]
    assert small["last"] > 0.5 * small["first"]
    assert small["last"] > 3 * right["last"]
    assert not small["diverged"] and not right["diverged"]
    assert large["diverged"] and large["what"] == "loss"
    assert "diverged" in large["message"] and "lower the learning rate" in large["message"]
    assert large["message"] in printed  # the example prints the divergence check's message


def test_optimizers_adam_reaches_the_target_first():
    r = result("optimizers")
    steps = {name: (d["steps_to_target"] or math.inf) for name, d in r["runs"].items()}
    sgd, momentum, adam = steps.values()
    show("optimizers", sgd=sgd, momentum=momentum, adam=adam)
    assert adam < momentum < sgd
    assert adam <= 0.7 * momentum


def test_schedules_curves_and_warmup_cosine_beats_constant():
    r = result("schedules")
    c = r["curves"]
    assert len(c) == 13
    np.testing.assert_allclose(c["StepLR(step_size=25, gamma=0.5)"][[0, 24, 25, 50, 99]],
                               [0.1, 0.1, 0.05, 0.025, 0.0125])
    cos = c["CosineAnnealingLR(T_max=100)"]
    np.testing.assert_allclose(cos, 0.05 * (1 + np.cos(np.pi * np.arange(100) / 100)), atol=1e-12)
    warm = c["SequentialLR(LinearLR warm-up 10, Cosine 90)"]
    assert np.all(np.diff(warm[:11]) > 0) and warm[10] == pytest.approx(0.1) and np.all(np.diff(warm[10:]) < 0)
    const, wc = r["constant"], r["warmup_cosine"]
    tail_c, tail_w = np.mean(const["loss"][-3:]), np.mean(wc["loss"][-3:])
    show("schedules", constant=tail_c, warmup_cosine=tail_w, gain=tail_c / tail_w)
    assert wc["lrs"][0] < 0.05 * r["peak_lr"] and max(wc["lrs"]) == pytest.approx(r["peak_lr"])
    assert wc["lrs"][-1] < 0.01 * r["peak_lr"]
    assert tail_w < 0.6 * tail_c


def test_digits_test_accuracy_at_least_097():
    pytest.importorskip("sklearn")
    r = result("digits")
    show("digits", test_accuracy=r["test_accuracy"])
    assert r["test_accuracy"] >= 0.97
    cm = r["confusion"]
    assert cm.sum() == r["n_test"] and np.trace(cm) / cm.sum() == pytest.approx(r["test_accuracy"])


def test_backprop_by_hand_equals_autodiff_and_finite_differences():
    r = result("backprop_by_hand")
    show("backprop", hand_auto=r["max_hand_vs_autodiff"], hand_fd=r["max_hand_vs_numeric"])
    assert len(r["hand"]) == 26
    assert r["loss"] == pytest.approx(r["gn_loss"], abs=1e-14)
    assert r["max_hand_vs_autodiff"] < 1e-12
    assert r["max_hand_vs_numeric"] < 1e-7
    assert r["max_autodiff_vs_numeric"] < 1e-7


def test_gpu_vs_cpu_cpu_half_and_skip_reason(capsys):
    ex = example("gpu_vs_cpu")
    r = result("gpu_vs_cpu")
    cpu = r["cpu"]
    assert cpu["seconds"] > 0 and cpu["samples_per_second"] > 0 and np.isfinite(cpu["loss"]).all()
    ex.report(r)
    printed = capsys.readouterr().out
    if GPU_USABLE:
        assert r["gpu"] is not None
        assert r["gpu"]["loss"][-1] == pytest.approx(cpu["loss"][-1], rel=1e-3)
    else:
        assert r["gpu"] is None
        assert GPU_REASON in r["skipped"] and GPU_REASON in printed
        with pytest.raises(gn.DeviceError, match="no GPU is usable"):
            ex.run(epochs=1, n=64, width=8, require_gpu=True, seed=SEED)


def test_linear_collapse_is_one_matrix_and_stalls_at_least_squares():
    r = result("linear_collapse")
    lin, relu = r["linear"], r["relu"]
    show("linear_collapse", max_diff=lin["max_diff"], linear=lin["loss"], lsq=r["lsq_loss"], relu=relu["loss"])
    assert lin["max_diff"] < 1e-5  # W x + b from the multiplied-out weights is the network, to float32 rounding
    assert r["lsq_loss"] * (1 - 1e-5) <= lin["loss"] <= 1.01 * r["lsq_loss"]  # stalls at the best line
    assert abs(lin["W"] - r["lsq"][0]) < 0.01 and abs(lin["b"] - r["lsq"][1]) < 0.01
    assert relu["loss"] < r["lsq_loss"] / 20


def test_first_layer_filters_become_smooth_and_layer_two_combines_them():
    pytest.importorskip("sklearn")
    r = result("first_layer_features")
    show("first_layer_features", corr0=float(r["corr0"].mean()), corr=float(r["corr"].mean()),
         pr=float(np.median(r["pr"])), test_accuracy=r["test_accuracy"])
    assert abs(r["corr0"].mean()) < 0.1  # independent draws at initialisation
    assert r["corr"].mean() > 0.2 and r["corr"].mean() > r["corr0"].mean() + 0.2
    assert np.median(r["pr"]) > 8  # each second-layer unit is driven by many first-layer units
    assert r["test_accuracy"] > 0.9


def test_ce_keeps_its_gradient_when_confidently_wrong_and_learns_faster():
    pytest.importorskip("sklearn")
    r = result("ce_vs_mse")
    g, m = r["grads"], r["margins"]
    sig = 1 / (1 + np.exp(m))
    np.testing.assert_allclose(g[("sigmoid", "cross-entropy")], sig - 1, atol=1e-12)
    np.testing.assert_allclose(g[("sigmoid", "MSE")], 2 * (sig - 1) * sig * (1 - sig), atol=1e-12)
    far = m >= 8
    for out in ("sigmoid", "softmax"):
        assert np.all(np.abs(g[(out, "cross-entropy")][far]) > 0.99)
        assert np.all(np.abs(g[(out, "MSE")][far]) < 2e-3)
    steps = {k: v["steps_to_target"] for k, v in r["runs"].items()}
    show("ce_vs_mse", start_p=r["start_p_correct"], **{f"{k}_{lr:g}": s for (k, lr), s in steps.items()})
    assert r["start_accuracy"] < 0.05
    for lr in (1.0, 10.0):
        ce, mse = steps[("cross-entropy", lr)], steps[("MSE", lr)]
        assert ce is not None and ce <= 40
        assert mse is None or mse >= 4 * ce


def test_sgd_noise_escapes_the_shallow_minimum_full_batch_does_not():
    pytest.importorskip("sklearn")
    r = result("sgd_noise")
    e = r["escaped"]
    small, full = r["gen"][r["gen_small"]][0], r["gen"][r["gen_n"]][0]
    show("sgd_noise", b1=e[1], b4=e[4], full=e[64], left_deep=r["left_deep"], test_small=small[1], test_full=full[1])
    assert r["barrier"] < 0.1 * r["deep_barrier"]
    assert e[64] == 0.0  # full-batch gradient descent rests at the minimum
    assert e[1] >= 0.8 and e[1] > e[4] + 0.2
    assert r["left_deep"] <= 0.02
    assert small[0] == 1.0 and full[0] == 1.0  # both fit the training images
    assert abs(small[1] - full[1]) < 0.04  # and generalise alike here (what the example reports)


def test_overparameterised_networks_memorise_and_end_alike():
    pytest.importorskip("sklearn")
    r = result("overparameterization")
    (narrow, wide), (narrow_s, wide_s) = r["labels"]["true"], r["labels"]["shuffled"]
    L2, L64 = r["final_losses"][2], r["final_losses"][64]
    show("overparameterization", wide_shuffled_train=wide_s["train_accuracy"],
         wide_shuffled_test=wide_s["test_accuracy"],
         wide_test=wide["test_accuracy"], spread2=float(L2.max() - L2.min()), spread64=float(L64.max() - L64.min()))
    assert wide_s["train_accuracy"] >= 0.99 and wide_s["test_accuracy"] <= 0.2  # memorised, at chance
    assert wide["train_accuracy"] == 1.0 and wide["test_accuracy"] >= 0.85
    assert narrow_s["train_accuracy"] < 0.5
    assert L2.max() - L2.min() > 0.05 and L2.min() > 0.3
    assert L64.max() < 0.01 and L64.max() - L64.min() < 1e-3


# ------------------------------------------------------------------------- command line and rules

@pytest.mark.skipif(GPU_USABLE, reason="a GPU is usable here")
@pytest.mark.parametrize("name", EXAMPLES)
def test_device_gpu_without_a_gpu_exits_with_the_reason(name, capsys):
    with pytest.raises(SystemExit) as info:
        example(name).main(["--device", "gpu", "--no-plot"])  # --no-plot: this holds without matplotlib too
    message = str(info.value.code)
    assert message.startswith("error:") and "no GPU is usable" in message and GPU_REASON in message
    assert capsys.readouterr().out == ""  # it stopped before running anything


@pytest.mark.parametrize("name", EXAMPLES)
def test_figure_is_drawn(name, tmp_path):
    """plot(result, path) writes a PNG (from the claim test's run when it came first)."""
    pytest.importorskip("matplotlib")
    if name in NEEDS_SKLEARN:
        pytest.importorskip("sklearn")
    path = tmp_path / f"{name}.png"
    example(name).plot(result(name), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_writes_the_figure_and_auto_falls_back(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    ex = example("perceptron_logic")
    out = tmp_path / "fig" / "p.png"
    r = ex.main(["--device", "auto", "--epochs", "20", "--out", str(out)])
    printed = capsys.readouterr().out
    assert r["AND"]["accuracy"] == 1.0
    if not GPU_USABLE:
        assert "using the CPU" in printed and GPU_REASON in printed
    assert out.exists() and f"figure: {out}" in printed


def test_main_without_matplotlib_says_how_to_get_the_figure(tmp_path, monkeypatch):
    """Checked before any training: the error names the extra and --no-plot."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    ex = example("perceptron_logic")
    out = tmp_path / "p.png"
    with pytest.raises(SystemExit, match=r"the figures need matplotlib: pip install \"gpunn\[plot\]\".*--no-plot"):
        ex.main(["--epochs", "2", "--out", str(out)])
    r = ex.main(["--epochs", "2", "--out", str(out), "--no-plot"])  # the numbers need no matplotlib
    assert {"AND", "OR", "XOR"} <= set(r) and not out.exists()


def _gn_attribute_chains(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts = []
            cur = node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "gn":
                yield ".".join(["gn", *reversed(parts)])


@pytest.mark.parametrize("name", EXAMPLES + ("_common", "run_all"))
def test_examples_use_the_public_api_only(name):
    path = os.path.join(EXAMPLES_DIR, f"{name}.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    allowed = {"__future__", "argparse", "io", "math", "os", "subprocess", "sys", "time", "numpy", "gpunn",
               "_common", "matplotlib", "matplotlib.pyplot", "matplotlib.colors", "PIL"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                assert a.name in allowed, f"{name}.py imports {a.name}"
                if a.name == "gpunn":
                    assert a.asname == "gn"
        elif isinstance(node, ast.ImportFrom):
            assert node.module in allowed and node.module != "gpunn", f"{name}.py imports from {node.module}"
    for chain in _gn_attribute_chains(tree):
        assert not any(part.startswith("_") for part in chain.split(".")), f"{name}.py uses {chain}"
        assert not chain.startswith(("gn.kernels", "gn.backend", "gn.autograd")), f"{name}.py uses {chain}"


def test_readme_lists_every_example_with_its_figure():
    with open(os.path.join(EXAMPLES_DIR, "README.md")) as f:
        readme = f.read()
    run_all = example("run_all")
    assert tuple(run_all.EXAMPLES) == EXAMPLES
    for name in EXAMPLES:
        assert f"{name}.py" in readme and f"figures/{name}.png" in readme, name
        assert os.path.exists(os.path.join(EXAMPLES_DIR, "figures", f"{name}.png")), name
    assert "python examples/run_all.py" in readme
