"""The `gpunn` command (also `python -m gpunn`).

    gpunn info                       versions, devices, and why the GPU is or is not used
    gpunn train --data digits        train an MLP on a bundled data set and report its accuracy
    gpunn profile --steps 50         profile the kernels of MLP training steps (--trace, --roofline, --compare)

Subcommands register themselves in `COMMANDS` (name -> (help, add_arguments, run)); a new one
(such as `gpunn profile`) adds an entry there. Errors never show a traceback: a bad flag or value
prints one line, `gpunn: error: ...`, and exits with status 2; a run that fails (training
diverged, a checkpoint cannot be written) prints one line and exits with status 1.

Under an MPI launcher (`mpiexec -n 4 gpunn train ...`, `srun`) `gpunn train` joins the process
group by itself: one data-parallel run, printed once by rank 0; a failing rank names itself and
ends the whole job with its exit status.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from gpunn.kernels import registry

__all__ = ["main", "build_parser", "COMMANDS"]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad")
DATASETS = ("digits", "xor", "and", "or", "spirals", "moons", "circles")


def activation_choices() -> tuple:
    """--activation's choices: every registered activation but identity (read when a parser is built)."""
    return tuple(n for n in registry.ACTIVATIONS if n != "identity")

DEFAULT_LAYERS = {"digits": [64, 128, 10], "xor": [2, 8, 2], "and": [2, 8, 2], "or": [2, 8, 2],
                  "spirals": [2, 64, 64, 2], "moons": [2, 32, 32, 2], "circles": [2, 32, 32, 2]}
DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3, "sgd": 0.05, "adagrad": 1e-2}


class UsageError(Exception):
    """A flag's value does not fit (reported like an argparse error: one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `gpunn: error: <message> (see 'gpunn train --help')`."""

    def error(self, message):
        self.exit(2, f"gpunn: error: {message} (see '{self.prog} --help')\n")


# ----------------------------------------------------------------------------- value parsers

def _number(cast, accept, expected: str):
    """An argparse type: `cast` the text, then require `accept(value)`; else say what was expected."""
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
_nonneg_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def _data_source(text):
    """A bundled data set's name, or the path of a .csv / .npz file (which must exist)."""
    if text in DATASETS:
        return text
    if os.path.splitext(text)[1].lower() in (".csv", ".npz"):
        if not os.path.isfile(text):
            raise argparse.ArgumentTypeError(f"data file {text} does not exist")
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(DATASETS)} or a .csv/.npz file, got {text!r}")


def _layers(text):
    parts = [p.strip() for p in text.split(",")]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths such as 64,128,10, "
                                         f"got {text!r}") from None
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected at least two positive widths (inputs,...,classes) such as "
                                         f"64,128,10, got {text!r}")
    return sizes


# ----------------------------------------------------------------------------- info

def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _add_info_arguments(p):
    p.add_argument("--gpu", action="store_true",
                   help="also report the GPU kernels: why they can or cannot run, Numba/CuPy settings, "
                        "and the compile time of each kernel of a training step (compiles them)")


def _run_info(args) -> int:
    import numpy as np

    import gpunn
    from gpunn.backend import device, gpu_status

    out = sys.stdout
    print(f"gpunn {gpunn.__version__}", file=out)
    print(f"python {platform.python_version()} ({platform.python_implementation()}, {sys.platform})", file=out)
    print(f"numpy {np.__version__}", file=out)
    try:
        import numba

        threads = f", {numba.config.NUMBA_NUM_THREADS} threads"
        print(f"numba {numba.__version__}{threads}", file=out)
    except ImportError as err:
        print(f"numba not importable ({err})", file=out)
    for dist in ("numba-cuda", "tqdm", "safetensors", "scikit-learn"):
        print(f"{dist} {_version(dist)}", file=out)
    cupy_version = next((v for v in (_version(d) for d in ("cupy-cuda12x", "cupy-cuda13x", "cupy"))
                         if v != "not installed"), "not installed")
    print(f"cupy {cupy_version}", file=out)
    from gpunn.kernels import ops

    print(f"kernels: {ops._choice} (GPUNN_KERNELS={os.environ.get('GPUNN_KERNELS', '')!r})", file=out)
    usable, why = gpu_status()
    print(f"gpu: {'usable' if usable else 'not usable'}: {why}", file=out)
    if usable:
        from gpunn.backend import numba_cuda as nc

        kernels_ok, kernels_why = nc.kernel_status()  # runs the probe kernel once
        nc.fallback_warning_said()  # said here (or by the --gpu report), so device("auto") need not warn too
        if not getattr(args, "gpu", False):
            print(f"gpu kernels: {'usable' if kernels_ok else 'not usable, CuPy arrays use the reference kernels'}"
                  f": {kernels_why}", file=out)
    auto = device("auto")
    print(f"device('auto'): {auto}" + (f" ({auto.reason})" if auto.reason else ""), file=out)
    devices = ["cpu"]
    if usable:
        import cupy

        for i in range(cupy.cuda.runtime.getDeviceCount()):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            devices.append(f"gpu:{i} ({name}, {props['totalGlobalMem'] / 2**30:.1f} GiB, "
                           f"compute capability {props['major']}.{props['minor']})")
    print("devices: " + ", ".join(devices), file=out)
    if getattr(args, "gpu", False):
        from gpunn.kernels.cuda_ops import gpu_report

        try:
            gpu_report(out)
        except Exception as err:  # whatever breaks, `gpunn info --gpu` reports it and ends normally
            print(f"gpu report stopped: {type(err).__name__}: {err}", file=out)
    return 0


# ----------------------------------------------------------------------------- train

def _add_train_arguments(p):
    p.add_argument("--data", required=True, type=_data_source, metavar="NAME|PATH",
                   help=f"a bundled data set ({', '.join(DATASETS)}; digits needs scikit-learn) or your own "
                        "file: a .csv (one sample per line, the last column the class label, a header line "
                        "allowed) or a .npz with arrays X (samples, features) and y (labels); 20%% of a file's "
                        "samples are held out for the test figures")
    p.add_argument("--layers", type=_layers, default=None,
                   help="comma-separated widths from inputs to classes, e.g. 64,128,10 "
                        "(default per data set: digits 64,128,10; xor 2,8,2; spirals 2,64,64,2; ...)")
    p.add_argument("--activation", default="relu", choices=activation_choices(), help="hidden-layer activation")
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default 1e-3; 0.05 for sgd)")
    p.add_argument("--momentum", type=_nonneg_float, default=0.9, help="sgd momentum (default 0.9)")
    p.add_argument("--weight-decay", type=_nonneg_float, default=None,
                   help="weight decay (default: the optimizer's own, 0.01 for adamw, else 0)")
    p.add_argument("--epochs", type=_positive_int, default=30)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--device", default="auto", help="auto (GPU when usable), cpu, gpu or gpu:N")
    p.add_argument("--seed", type=_nonneg_int, default=None,
                   help="seed for initialisation and shuffling (default: a random one, printed)")
    p.add_argument("--data-seed", type=_nonneg_int, default=0,
                   help="seed for generating/splitting the data set (default 0: the same data every run)")
    p.add_argument("--save", metavar="PATH", default=None, help="write a checkpoint (.safetensors) after training")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compile", action="store_true",
                   help="run each training step through gn.compile (traced, then replayed without a graph)")


def build_mlp(layers, activation="relu"):
    """Sequential of Dense(activation) layers and a final Linear producing logits."""
    from gpunn import nn

    mods = [nn.Dense(a, b, activation=activation) for a, b in zip(layers[:-2], layers[1:-1])]
    mods.append(nn.Linear(layers[-2], layers[-1]))
    return nn.Sequential(*mods)


def make_optimizer(name, params, lr=None, momentum=0.9, weight_decay=None):
    from gpunn import optim

    lr = DEFAULT_LR[name] if lr is None else lr
    extra = {} if weight_decay is None else {"weight_decay": weight_decay}
    if name == "adam":
        return optim.Adam(params, lr=lr, **extra)
    if name == "adamw":
        return optim.AdamW(params, lr=lr, **extra)
    if name == "rmsprop":
        return optim.RMSprop(params, lr=lr, **extra)
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=momentum, **extra)
    if name == "adagrad":
        return optim.Adagrad(params, lr=lr, **extra)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def _join_launched_job():
    """Under a launcher that started several processes, join them (gpunn.distributed); returns
    (rank, world size) and (0, 1) for a lone process."""
    from gpunn import distributed as dist

    info = dist.launch_info()
    if not dist.is_initialized() and info.launcher is not None and info.world_size != 1:
        dist.init_process_group()
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _run_train(args) -> int:
    import numpy as np

    import gpunn as gn
    from gpunn import datasets, nn
    from gpunn import distributed as dist
    from gpunn.train import evaluate, fit

    rank, world = _join_launched_job()
    print = _print if rank == 0 else _quiet  # noqa: A001 - rank 0 speaks for the job
    if args.save:  # before any training: a run must not fail at its end on a path typed wrong
        _writable("--save", args.save)
    dev = gn.device(args.device)
    if world > 1 and dev.is_gpu and dist.get_backend() == "nccl":
        dev = gn.device(f"gpu:{dist._need('train').device_index}")  # the GPU of this local rank
    how = dev.reason or f"chosen with --device {args.device}"
    print(f"device: {dev} ({how})" + (f"; {world} processes ({dist.get_backend()})" if world > 1 else ""),
          flush=True)

    own_file = args.data not in DATASETS
    if own_file:
        split = datasets.from_file(args.data, seed=args.data_seed)
    else:
        split = datasets.load(args.data, seed=args.data_seed)
    n_features = split.X_train.shape[1]
    n_classes = int(max(split.y_train.max(), split.y_test.max())) + 1
    layers = args.layers or (DEFAULT_LAYERS[args.data] if not own_file else [n_features, 64, n_classes])
    _check_fits_in_memory(layers, args.batch_size, dev)
    if layers[0] != n_features or layers[-1] != n_classes:
        raise UsageError(
            f"--layers {','.join(map(str, layers))} does not fit --data {args.data}, which has {n_features} "
            f"features and {n_classes} classes: the first width must be {n_features} and the last "
            f"{n_classes} (e.g. --layers {n_features},{max(32, 2 * n_classes)},{n_classes})")

    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    if world > 1:
        seed = int(dist.host_broadcast([seed], "gpunn train: broadcast of the seed")[0])
    gn.manual_seed(seed)
    model = build_mlp(layers, args.activation).to(dev)
    replica = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = make_optimizer(args.optimizer, model.parameters(), args.lr, args.momentum, args.weight_decay)
    lr = opt.param_groups[0]["lr"]
    print(f"data: {args.data} ({len(split.X_train)} train, {len(split.X_test)} test samples); "
          f"model: {'-'.join(map(str, layers))} {args.activation}; optimizer: {args.optimizer} lr={lr:g}; "
          f"seed: {seed}", flush=True)
    if args.data in ("xor", "and", "or") or (own_file and len(split.X_train) < 5):
        print(f"note: {args.data} has only {len(split.X_train)} points, so its test set is its training set",
              flush=True)

    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):  # fit reports divergence itself, in one line
        fit(model, loss_fn, opt, split.X_train, split.y_train, epochs=args.epochs, batch_size=args.batch_size,
            progress=not args.no_progress, seed=seed, compile=getattr(args, "compile", False))
    elapsed = time.perf_counter() - t0
    if rank != 0:  # rank 0 evaluates, prints and saves; the replicas are identical
        dist.barrier()
        dist.destroy_process_group()
        return 0
    model = replica
    train = evaluate(model, loss_fn, split.X_train, split.y_train)
    test = evaluate(model, loss_fn, split.X_test, split.y_test)
    print(f"trained {args.epochs} epochs in {elapsed:.2f} s", flush=True)
    print(f"train: loss {train['loss']:.4f}, accuracy {train['accuracy']:.4f}")
    print(f"test:  loss {test['loss']:.4f}, accuracy {test['accuracy']:.4f}")
    if args.save:
        meta = {"epoch": args.epochs, "seed": seed, "data": args.data, "data_seed": args.data_seed,
                "layers": layers, "activation": args.activation, "optimizer": args.optimizer,
                "lr": float(lr), "batch_size": args.batch_size,
                "train_accuracy": train["accuracy"], "test_accuracy": test["accuracy"]}
        gn.save(model, args.save, optimizer=opt, metadata=meta)
        print(f"saved checkpoint: {args.save}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _print(*args, **kwargs):
    print(*args, **kwargs)


def _quiet(*args, **kwargs):
    pass


# ----------------------------------------------------------------------------- profile

def _add_profile_arguments(p):
    from gpunn.profiler import GROUP_BY, SORT_BY

    p.add_argument("--layers", type=_layers, default=[784, 512, 512, 10],
                   help="comma-separated widths from inputs to classes (default 784,512,512,10)")
    p.add_argument("--batch", type=_positive_int, default=256, help="batch size (default 256)")
    p.add_argument("--steps", type=_positive_int, default=50, help="profiled training steps (default 50)")
    p.add_argument("--warmup", type=_nonneg_int, default=5,
                   help="training steps run before profiling: kernel compilation, caches (default 5)")
    p.add_argument("--device", default="auto", help="auto (GPU when usable), cpu, gpu or gpu:N")
    p.add_argument("--activation", default="relu", choices=activation_choices(), help="hidden-layer activation")
    p.add_argument("--group-by", default="kernel", choices=GROUP_BY, help="table rows (default kernel)")
    p.add_argument("--sort", default="total", choices=SORT_BY, help="table order (default total time)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed for the weights and the random data")
    p.add_argument("--trace", metavar="PATH", help="write a Chrome trace (open in ui.perfetto.dev or chrome://tracing)")
    p.add_argument("--roofline", metavar="PATH", help='draw the roofline (PNG; needs pip install "gpunn[plot]")')
    p.add_argument("--compare", action="store_true",
                   help="run the same steps once per kernel choice (CPU: fused, reference; GPU: fused, cublas "
                        "(+ fused epilogue), reference) and print them side by side with ratios")
    p.add_argument("--compile", action="store_true",
                   help="profile the step compiled with gn.compile (traced in the warm-up, at least 2 steps): "
                        "the kernels and launches of its replay, and the Python time left")
    p.add_argument("--remeasure-peaks", action="store_true",
                   help="measure this machine's peak GFLOP/s and GB/s again before profiling instead of using the "
                        "cached figures (a figure is also re-measured when a kernel exceeds 100%% of it)")
    p.add_argument("--sync", action="store_true",
                   help="GPU: every NVTX range and span waits for its kernels (slower, exact ranges)")


def _writable(flag, path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: the folder {folder} is not writable")


def _gib(nbytes) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def _available_bytes(dev):
    """Memory a run may use on `dev`: MemAvailable on the host, free memory on a GPU (None if unknown)."""
    if dev.is_gpu:
        try:
            import cupy

            with cupy.cuda.Device(dev.index):
                return cupy.cuda.runtime.memGetInfo()[0]
        except Exception:
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits_in_memory(layers, batch, dev, itemsize=4):
    """Refuse a model whose float32 training state cannot fit, in one line, before allocating any
    of it (a 40 GB weight matrix would otherwise end in a MemoryError traceback or the OOM killer).
    Counted: weights and biases x4 (values, gradients, Adam's two moments) plus two activations per
    layer for the batch; a lower bound, so a model that passes may still be refused by the allocator."""
    params = sum(a * b + b for a, b in zip(layers[:-1], layers[1:]))
    acts = batch * sum(layers) * 2
    need = (4 * params + acts) * itemsize
    have = _available_bytes(dev)
    if have is not None and need > have:
        raise UsageError(f"--layers {','.join(map(str, layers))} needs at least {_gib(need)} on {dev} "
                         f"({params:,} parameters, with gradients and optimizer state, float32) but only "
                         f"{_gib(have)} is available; choose smaller --layers or --batch")


def _kernel_choices(dev):
    """(label, context manager factory) per kernel choice that --compare runs: gpunn's fused kernels
    and the plain-array reference (gpunn.kernels.use_kernels). On a GPU with the dense dispatcher
    (gpunn/kernels/dense_dispatch.py), its fused dense kernels and cuBLAS + gpunn's fused epilogue
    run separately, chosen through GPUNN_DENSE_IMPL (which it reads at every call)."""
    import contextlib

    from gpunn.kernels import use_kernels

    reference = ("reference", lambda: use_kernels("reference"))
    impls = ()
    if dev.is_gpu:
        try:
            from gpunn.kernels import dense_dispatch
        except ImportError:
            dense_dispatch = None
        if getattr(dense_dispatch, "ENV", None) == "GPUNN_DENSE_IMPL":
            impls = tuple(i for i in getattr(dense_dispatch, "IMPLS", ()) if i != "auto")
    if not impls:
        return [("fused", lambda: use_kernels("fused")), reference]

    @contextlib.contextmanager
    def dense_impl(name):
        old = os.environ.get("GPUNN_DENSE_IMPL")
        os.environ["GPUNN_DENSE_IMPL"] = name
        try:
            with use_kernels("fused"):
                yield
        finally:
            if old is None:
                os.environ.pop("GPUNN_DENSE_IMPL", None)
            else:
                os.environ["GPUNN_DENSE_IMPL"] = old

    return [(name, lambda name=name: dense_impl(name)) for name in impls] + [reference]


def _profile_mlp(args, dev):
    """Build the MLP, run the warm-up steps, profile args.steps training steps (Adam, CE), then
    time as many again without the profiler. Returns (profile, ns per unprofiled step)."""
    import numpy as np

    import gpunn as gn
    from gpunn import nn, profiler

    _check_fits_in_memory(args.layers, args.batch, dev)
    gn.manual_seed(args.seed)
    model = build_mlp(args.layers, args.activation).to(dev)
    opt = make_optimizer("adam", model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(args.seed)
    n_in, n_out, batch = args.layers[0], args.layers[-1], args.batch
    data = [(gn.tensor(rng.standard_normal((batch, n_in)).astype(np.float32), device=dev),
             gn.tensor(rng.integers(0, n_out, batch), device=dev)) for _ in range(4)]

    def train_step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    run = gn.compile(train_step, strict=True) if args.compile else train_step

    def steps(first, n):
        """n training steps on the batches from `first` on; the last one's loss."""
        loss = None
        for i in range(first, first + n):
            loss = run(*data[i % len(data)])
        return loss

    warmup = max(args.warmup, 2) if args.compile else args.warmup  # a trace and its check, then replays
    steps(0, warmup)
    before = run.stats["replays"] if args.compile else 0
    with profiler.profile(sync=args.sync) as prof:
        steps(warmup, args.steps)
    if args.compile and run.stats["replays"] - before != args.steps:  # strict=True: a refusal raised already
        raise UsageError(f"--compile: {run.stats['replays'] - before} of {args.steps} profiled steps were replays")
    # the same steps as they run in training: a profiled step pays for the profiler's hooks, and a
    # profiled replay walks its program step by step where an unprofiled one runs it straight
    t0 = time.perf_counter_ns()
    steps(warmup + args.steps, args.steps).item()  # on a GPU: waits for the last step
    return prof, (time.perf_counter_ns() - t0) / args.steps  # --steps is at least 1


def _unprofiled_line(prof, step_ns) -> str:
    """What a step costs without the profiler, next to the profiled one: the kernel times above
    include the profiler's own per-call work, which matters for steps of tens of microseconds."""
    steps = max(prof.steps, 1)
    return (f"without the profiler: {step_ns / 1e6:.3f} ms/step over {steps} more steps "
            f"(profiled: {prof.wall_ns / 1e6 / steps:.3f} ms/step)")


def _compare_table(results) -> str:
    """Per kernel and per step: each choice's ms per step side by side, and each one's ratio to the first."""
    names = []
    per = []
    for _, prof in results:
        steps = max(prof.steps, 1)
        ms = {}
        for ev in prof.events:
            ms[ev.name] = ms.get(ev.name, 0.0) + ev.duration_ns / 1e6 / steps
            if ev.name not in names:
                names.append(ev.name)
        per.append((ms, prof.wall_ns / 1e6 / steps, prof.launches_per_step()["total"]))
    base = results[0][0]
    labels = [label for label, _ in results]
    ratios = [f"{label}/{base}" for label in labels[1:]]
    width = max(len(n) for n in names + ["launches per step", "step (wall)"]) + 2
    cols = [max(len(c), 10) + 2 for c in labels + ratios]
    head = f"{'ms per step':<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(labels + ratios, cols))
    lines = [f"kernel choices compared (ratio > 1: slower than {base})", head, "-" * len(head)]

    def row(name, values):
        cells = [f"{v:>{w}.3f}" if v is not None else f"{'-':>{w}}" for v, w in zip(values, cols)]
        first = values[0]
        for v, w in zip(values[1:], cols[len(values):]):
            cells.append(f"{v / first:>{w - 1}.2f}x" if v is not None and first else f"{'-':>{w}}")
        return f"{name:<{width}}" + "".join(cells)

    total = {n: sum(ms.get(n, 0.0) for ms, _, _ in per) for n in names}
    for n in sorted(names, key=lambda n: -total[n]):
        lines.append(row(n, [ms.get(n) for ms, _, _ in per]))
    lines.append("-" * len(head))
    lines.append(row("step (wall)", [wall for _, wall, _ in per]))
    lines.append(f"{'launches per step':<{width}}" + "".join(f"{n:>{w}g}" for (_, _, n), w in zip(per, cols)))
    return "\n".join(lines)


def _run_profile(args) -> int:
    import gpunn as gn

    if args.trace:
        _writable("--trace", args.trace)
    if args.roofline:
        _writable("--roofline", args.roofline)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError('--roofline needs matplotlib: pip install "gpunn[plot]"') from None
    dev = gn.device(args.device)
    how = dev.reason or f"chosen with --device {args.device}"
    print(f"device: {dev} ({how})", flush=True)
    if args.remeasure_peaks:
        from gpunn.profiler import calibrate

        print(f"peaks re-measured: {calibrate(str(dev)).describe()}", flush=True)
    warmup = max(args.warmup, 2) if args.compile else args.warmup
    print(f"model: {'-'.join(map(str, args.layers))} {args.activation}, Adam lr=0.001, cross-entropy; batch "
          f"{args.batch}; {warmup} warm-up + {args.steps} profiled steps"
          f"{' (compiled: gn.compile replays)' if args.compile else ''}; seed {args.seed}", flush=True)
    if args.compare:
        choices = _kernel_choices(dev)
    else:
        from gpunn.kernels import use_kernels

        label = "fused"
        if dev.is_gpu:
            label += f" (dense: GPUNN_DENSE_IMPL={os.environ.get('GPUNN_DENSE_IMPL', 'auto')})"
        choices = [(label, lambda: use_kernels("fused"))]
    results = []
    for label, use in choices:
        with use():
            prof, step_ns = _profile_mlp(args, dev)
        results.append((label, prof))
        if len(results) == 1:
            print(f"\nkernels: {label}")
            print(prof.table(sort_by=args.sort, group_by=args.group_by), flush=True)
            print(_unprofiled_line(prof, step_ns), flush=True)
            if args.trace:
                prof.export_chrome_trace(args.trace)
                print(f"wrote trace: {args.trace} (open in https://ui.perfetto.dev or chrome://tracing)")
            if args.roofline:
                prof.roofline(args.roofline)
                print(f"wrote roofline: {args.roofline}")
    if args.compare:
        print()
        print(_compare_table(results))
    return 0


# ----------------------------------------------------------------------------- main

# name -> (help, add_arguments(parser), run(args) -> exit status).
COMMANDS = {
    "info": ("show versions, devices and why the GPU is or is not used", _add_info_arguments, _run_info),
    "train": ("train an MLP classifier on a bundled data set", _add_train_arguments, _run_train),
    "profile": ("profile the kernels of MLP training steps: table, Chrome trace, roofline", _add_profile_arguments,
                _run_profile),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpunn", description="gpunn: a neural-network library with its own fused kernels.")
    from gpunn import __version__

    parser.add_argument("--version", action="version", version=f"gpunn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv=None) -> int:
    """Run the `gpunn` command with `argv` (default: sys.argv[1:]); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        print(f"gpunn: error: choose a command: {', '.join(COMMANDS)} (see 'gpunn --help')", file=sys.stderr)
        return 2

    from gpunn.backend import DeviceError
    from gpunn.checkpoint import CheckpointError
    from gpunn.train import TrainingDiverged

    try:
        return _ended_in_job(args._run(args))
    except BrokenPipeError:  # the reader went away (gpunn info | head): stop quietly, as Unix tools do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except OSError:  # pragma: no cover - no real stdout
            pass
        return 141
    except (UsageError, ValueError, TypeError, DeviceError, ImportError) as err:
        print(f"gpunn: error: {_rank_prefix()}{_one_line(err)}", file=sys.stderr)
        return _ended_in_job(2)
    except (TrainingDiverged, CheckpointError, OSError) as err:
        print(f"gpunn: error: {_rank_prefix()}{_one_line(err)}", file=sys.stderr)
        return _ended_in_job(1)
    except MemoryError as err:  # NumPy's and CuPy's out-of-memory errors say the size asked for
        print(f"gpunn: error: {_rank_prefix()}out of memory: {_one_line(err)}; choose a smaller model or batch",
              file=sys.stderr)
        return _ended_in_job(1)
    except KeyboardInterrupt:
        print("gpunn: interrupted", file=sys.stderr)
        return 130


def _in_job():
    dist = sys.modules.get("gpunn.distributed")
    return dist is not None and dist.is_initialized() and dist.get_world_size() > 1


def _rank_prefix() -> str:
    if not _in_job():
        return ""
    dist = sys.modules["gpunn.distributed"]
    return f"rank {dist.get_rank()} of {dist.get_world_size()}: "


def _ended_in_job(status: int) -> int:
    """A failing rank of a job ends the whole job (the others would wait in a collective), after
    the pause that lets the launcher forward what this rank printed (an abort kills its proxies:
    without it CI saw an empty stderr from a job that failed correctly)."""
    if status != 0 and _in_job():
        from gpunn.distributed._backends import abort_after_grace

        abort_after_grace(sys.modules["gpunn.distributed"]._need("gpunn").abort, status)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
