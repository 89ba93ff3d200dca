"""A 2-D slice of the loss landscape around trained parameters (Li et al., 2018).

A 2-32-32-2 tanh network is trained on the moons (Adam, recording the parameter vector after
every epoch). Around the trained parameters theta*, the loss is evaluated on the plane
theta* + a d1 + b d2 for a, b in [-1, 1], where d1 and d2 are random Gaussian directions,
*filter-normalised* as in Li et al., "Visualizing the Loss Landscape of Neural Nets" (NeurIPS
2018): each row of a direction's weight matrix (the incoming weights of one unit, a "filter") is
rescaled to the norm of the same row of theta*, so a step of 1 along d moves every unit by its own
size, and the picture does not depend on how the weights happen to be scaled; bias entries of the
directions are 0 (Li et al.'s choice for biases). The training trajectory is projected on the
plane by least squares (coordinates (a, b) minimising |theta_t - theta* - a d1 - b d2|).

Random directions in a high-dimensional space are nearly orthogonal to the path training took, so
the projected trajectory is short and most of the path lies off the plane (the printed fraction);
Li et al. use PCA directions of the trajectory for that reason. The slice still shows the basin:
the trained point is the lowest point of the plane and the loss rises in every direction.

    python examples/loss_landscape.py [--device cpu|gpu|auto] [--epochs 60] [--resolution 31]

Parameters are read and written with gn.nn.utils.parameters_to_vector / vector_to_parameters.
Figure: contour plot of the slice with the projected trajectory, and the loss along d1 alone.
"""
from __future__ import annotations

import numpy as np

import gpunn as gn
import _common

to_vector = gn.nn.utils.parameters_to_vector
to_params = gn.nn.utils.vector_to_parameters


class Trajectory(gn.train.Callback):
    """The parameter vector before training and after every epoch (host copies)."""

    def __init__(self):
        self.points = []

    def on_train_begin(self, logs=None):
        self.points.append(np.array(to_vector(self.model.parameters()), dtype=np.float64))

    def on_epoch_end(self, epoch, logs=None):
        self.points.append(np.array(to_vector(self.model.parameters()), dtype=np.float64))


def filter_normalised_direction(model, rng) -> np.ndarray:
    """A random direction shaped like the parameters, each weight row scaled to that row's norm."""
    parts = []
    for p in model.parameters():
        w = np.asarray(p, dtype=np.float64)
        if w.ndim == 2:  # a Linear weight (out_features, in_features): one row per unit
            d = rng.standard_normal(w.shape)
            d *= np.linalg.norm(w, axis=1, keepdims=True) / np.linalg.norm(d, axis=1, keepdims=True)
        else:  # biases are not perturbed
            d = np.zeros(w.shape)
        parts.append(d.ravel())
    return np.concatenate(parts)


def run(epochs: int = 60, resolution: int = 31, span: float = 1.0, n: int = 400, device="cpu",
        seed: int = 0) -> dict:
    gn.manual_seed(seed)
    X, y = gn.datasets.moons(n=n, noise=0.3, seed=seed)  # overlapping classes: the loss has a minimum
    model = gn.nn.Sequential(gn.nn.Linear(2, 32), gn.nn.Tanh(), gn.nn.Linear(32, 32), gn.nn.Tanh(),
                             gn.nn.Linear(32, 2)).to(device)
    loss_fn = gn.nn.CrossEntropyLoss()
    traj = Trajectory()
    opt = gn.optim.Adam(model.parameters(), lr=3e-3)
    sched = gn.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)  # settle into the minimum
    gn.train.fit(model, loss_fn, opt, X, y, epochs=epochs, batch_size=32, scheduler=sched, callbacks=[traj],
                 progress=False, seed=seed)
    theta = traj.points[-1]
    rng = np.random.default_rng(seed)
    d1 = filter_normalised_direction(model, rng)
    d2 = filter_normalised_direction(model, rng)

    def loss_at(vec):
        to_params(vec, model.parameters())
        return gn.train.evaluate(model, loss_fn, X, y)["loss"]

    alphas = np.linspace(-span, span, resolution)
    surface = np.array([[loss_at(theta + a * d1 + b * d2) for a in alphas] for b in alphas])  # [b, a]
    line = np.array([loss_at(theta + a * d1) for a in np.linspace(-span, span, 4 * resolution + 1)])
    # the trajectory, projected on the plane by least squares
    D = np.stack([d1, d2], axis=1)
    offsets = np.stack(traj.points) - theta
    coords, *_ = np.linalg.lstsq(D, offsets.T, rcond=None)
    residual = offsets.T - D @ coords
    with np.errstate(invalid="ignore", divide="ignore"):
        off_plane = float(np.linalg.norm(residual[:, 0]) / np.linalg.norm(offsets[0]))
    traj_losses = [loss_at(p) for p in traj.points]
    # for comparison, Li et al.'s plane for trajectories: the top two PCA directions of theta_t - theta*
    _, sv, vt = np.linalg.svd(offsets[:-1], full_matrices=False)
    explained = float((sv[:2] ** 2).sum() / (sv ** 2).sum())
    pca_coords = offsets @ vt[:2].T
    lo, hi = pca_coords.min(axis=0), pca_coords.max(axis=0)
    pad = 0.25 * (hi - lo)
    pa = np.linspace(lo[0] - pad[0], hi[0] + pad[0], resolution)
    pb = np.linspace(lo[1] - pad[1], hi[1] + pad[1], resolution)
    pca_surface = np.array([[loss_at(theta + a * vt[0] + b * vt[1]) for a in pa] for b in pb])
    to_params(theta, model.parameters())  # leave the model trained
    centre = resolution // 2
    border = np.concatenate([surface[0], surface[-1], surface[:, 0], surface[:, -1]])
    return {"alphas": alphas, "surface": surface, "line_alphas": np.linspace(-span, span, 4 * resolution + 1),
            "line": line, "trajectory": coords.T, "trajectory_losses": traj_losses,
            "centre_loss": float(surface[centre, centre]), "min_loss": float(surface.min()),
            "argmin": tuple(int(i) for i in np.unravel_index(np.argmin(surface), surface.shape)),
            "border_mean": float(border.mean()), "border_min": float(border.min()), "off_plane_fraction": off_plane,
            "pca": {"a": pa, "b": pb, "surface": pca_surface, "trajectory": pca_coords, "explained": explained},
            "directions": (d1, d2), "theta": theta, "params": [np.asarray(p) for p in model.parameters()],
            "epochs": epochs, "n_params": theta.size}


def report(r) -> None:
    res = len(r["alphas"])
    print(f"2-32-32-2 tanh on moons, {r['epochs']} epochs of Adam, {r['n_params']} parameters")
    print(f"loss at the trained point: {r['centre_loss']:.4f}; lowest on the {res}x{res} plane: {r['min_loss']:.4f} "
          f"at grid index {r['argmin']} (centre is ({res // 2}, {res // 2}))")
    print(f"mean loss on the plane's border (|a| or |b| = 1): {r['border_mean']:.3f} "
          f"({r['border_mean'] / r['centre_loss']:.0f}x the trained point's)")
    print(f"trajectory: loss {r['trajectory_losses'][0]:.3f} at initialisation -> {r['trajectory_losses'][-1]:.4f}; "
          f"{r['off_plane_fraction']:.1%} of the initial offset lies off the random plane")
    print(f"the trajectory's top two PCA directions hold {r['pca']['explained']:.1%} of its variance (right panel)")


def plot(r, path):
    plt = _common.pyplot()
    fig, (ax, ax3, ax2) = plt.subplots(1, 3, figsize=(19, 5.4), gridspec_kw={"width_ratios": [1.25, 1.25, 1]})
    a = r["alphas"]
    A, B = np.meshgrid(a, a)
    levels = np.geomspace(max(r["surface"].min(), 1e-4), r["surface"].max(), 25)
    import matplotlib.colors as mcolors

    cs = ax.contourf(A, B, r["surface"], levels=levels, norm=mcolors.LogNorm(), cmap="viridis")
    ax.contour(A, B, r["surface"], levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    fig.colorbar(cs, ax=ax, label="training loss (cross-entropy, log colour scale)", format="%.2g")
    t = r["trajectory"]
    ax.plot(t[:, 0], t[:, 1], "w.-", lw=1.5, ms=4, label="training trajectory (projected)")
    ax.plot(t[0, 0], t[0, 1], "wo", ms=8, mec="k", label="initialisation")
    ax.plot(0, 0, "r*", ms=16, mec="k", label="trained parameters")
    ax.set(xlabel="$\\alpha$ (filter-normalised direction $d_1$)", ylabel="$\\beta$ (filter-normalised direction $d_2$)",
           title=f"Loss on the plane $\\theta^* + \\alpha d_1 + \\beta d_2$, random filter-normalised $d_1, d_2$\n"
                 f"(moons, 2-32-32-2 tanh; the trajectory projects to a short path)")
    ax.legend(loc="upper right", fontsize=8)
    q = r["pca"]
    PA, PB = np.meshgrid(q["a"], q["b"])
    plev = np.geomspace(max(q["surface"].min(), 1e-4), q["surface"].max(), 25)
    cs3 = ax3.contourf(PA, PB, q["surface"], levels=plev, norm=mcolors.LogNorm(), cmap="viridis")
    ax3.contour(PA, PB, q["surface"], levels=plev, colors="k", linewidths=0.3, alpha=0.5)
    fig.colorbar(cs3, ax=ax3, label="training loss (log colour scale)", format="%.2g")
    t3 = q["trajectory"]
    ax3.plot(t3[:, 0], t3[:, 1], "w.-", lw=1.5, ms=4, label="training trajectory (one dot per epoch)")
    ax3.plot(t3[0, 0], t3[0, 1], "wo", ms=8, mec="k", label="initialisation")
    ax3.plot(0, 0, "r*", ms=16, mec="k", label="trained parameters")
    ax3.set(xlabel="PCA direction 1 of the trajectory", ylabel="PCA direction 2",
            title=f"For comparison: the plane of the trajectory's top 2 PCA directions\n"
                  f"({q['explained']:.0%} of its variance; Li et al., sec. 7)")
    ax3.legend(loc="upper right", fontsize=8)
    ax2.semilogy(r["line_alphas"], r["line"], lw=2)
    ax2.axvline(0, color="r", ls="--", lw=1, label="trained parameters")
    ax2.set(xlabel="$\\alpha$", ylabel="training loss (log)", title="1-D slice: $\\theta^* + \\alpha d_1$")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend()
    fig.tight_layout()
    return _common.save(fig, path)


def main(argv=None):
    def extra(p):
        p.add_argument("--epochs", type=int, default=60)
        p.add_argument("--resolution", type=int, default=31)

    args, dev = _common.start("loss_landscape", __doc__.splitlines()[0], argv, extra)
    r = run(epochs=args.epochs, resolution=args.resolution, device=dev, seed=args.seed)
    report(r)
    _common.finish(args, plot, r)
    return r


if __name__ == "__main__":
    main()
