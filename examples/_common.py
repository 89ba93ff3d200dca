"""What every example shares: its command line, the device it runs on, and where its figure goes.

Each example is `python examples/NAME.py [--device cpu|gpu|auto] [--seed N] [--out PATH] [--no-plot]`:
- `--device cpu` (default) runs on the CPU; `--device gpu` runs on the GPU and, where none is
  usable, exits with status 1 and gpunn's reason (CuPy not installed, no driver, ...);
  `--device auto` takes the GPU when one is usable and otherwise falls back to the CPU, saying why.
- the figure goes to examples/figures/NAME.png unless `--out` says otherwise; it needs matplotlib
  (`pip install "gpunn[plot]"`), and `--no-plot` skips it.

Every example also exposes `run(...)` (the measurements, as a dict) and `plot(result, path)`, which
is how tests/test_examples.py runs each one small and checks its claim.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import gpunn as gn

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options every example takes; an example adds its own before parsing."""
    p = argparse.ArgumentParser(prog=f"{name}.py", description=description)
    p.add_argument("--device", default="cpu",
                   help="cpu (default), gpu (exit with the reason when no GPU is usable) or auto "
                        "(the GPU when usable, else the CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed for gn.manual_seed (default 0)")
    p.add_argument("--out", default=os.path.join(FIGURES, f"{name}.png"), help="where to write the PNG figure")
    p.add_argument("--no-plot", action="store_true", help="print the results only, draw no figure")
    return p


def pick_device(spec: str) -> gn.Device:
    """gn.device(spec); a GPU that was asked for but is not usable ends the program with the reason."""
    try:
        dev = gn.device(spec)
    except (gn.DeviceError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if dev.reason:
        print(dev.reason)
    return dev


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no window), or a clear exit without it."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("error: the figures need matplotlib: pip install \"gpunn[plot]\" "
                         "(or pass --no-plot to print the results only)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str) -> str:
    """Write the figure as a PNG (creating its folder) and close it. With Pillow (which matplotlib
    installs) the image is reduced to a 256-colour palette: a third of the size, the same look."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    pyplot().close(fig)
    buf.seek(0)
    try:
        from PIL import Image
    except ImportError:
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        return path
    median_cut = Image.Quantize.MEDIANCUT if hasattr(Image, "Quantize") else Image.MEDIANCUT  # Pillow < 9.1
    Image.open(buf).convert("RGB").quantize(colors=256, method=median_cut).save(path, optimize=True)
    return path


def start(name: str, description: str, argv=None, extra=None):
    """Parse argv, check the plotting extra early (before any training), pick the device.

    `extra(parser)` adds example-specific options. Returns (args, device)."""
    p = parser(name, description)
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    if not args.no_plot:
        pyplot()
    dev = pick_device(args.device)
    print(f"{name}: device {dev}, seed {args.seed}")
    return args, dev


def finish(args, plot, result) -> None:
    """Draw the figure unless --no-plot."""
    if not args.no_plot:
        print(f"figure: {plot(result, args.out)}")
    sys.stdout.flush()


def run_example(name: str, doc: str, run, report, plot, argv=None, epochs: int | None = None,
                steps: int | None = None):
    """The main() of an example whose only own option is --epochs (or --steps): parse the command
    line, run(epochs=..., device=..., seed=...), print the report, draw the figure. Returns run's result."""
    opt, default = ("epochs", epochs) if epochs is not None else ("steps", steps)
    args, dev = start(name, doc.splitlines()[0], argv,
                      lambda p: p.add_argument(f"--{opt}", type=int, default=default))
    result = run(**{opt: getattr(args, opt)}, device=dev, seed=args.seed)
    report(result)
    finish(args, plot, result)
    return result

