"""CLI: ``alexnet experiment relu-tanh|ablations``, ``alexnet filters``, ``alexnet features``, ``alexnet neighbors``.

The experiment modules (and torch, matplotlib) are imported inside the handlers: every
``alexnet`` invocation builds this parser, and ``alexnet --help`` should not pay for them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..data.resolve import ensure_prepared
from ..errors import UserError
from ..train.config import load_config
from .common import plus_minus

# Figure 1's nets (alexnet.analysis.relu_tanh.NETS; here so that --help does not import torch).
NETS = ("ours", "cuda-convnet-19pct", "cuda-convnet-18pct", "cuda-convnet-conv-local-13pct",
        "cuda-convnet-conv-local-11pct")

DEFAULT_CIFAR = "../shared/data/cifar10-jpg.tar.gz"   # beside a checkout; alexnet.locations.expand_source


def _progress(args) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--lr-grid {text!r}: expected comma-separated numbers, e.g. 0.003,0.01,0.03") from None
    if not values or min(values) <= 0:
        raise UserError(f"--lr-grid {text!r}: give at least one positive learning rate")
    return values


# ----------------------------------------------------------------------------- experiment relu-tanh

def _relu_tanh(args) -> int:
    from .relu_tanh import CUDA_CONVNET_DEFAULTS, CUDA_CONVNET_LR_GRID, DEFAULT_LR_GRID, Settings, run_experiment

    ours = args.net == "ours"
    # Defaults per net: ours keeps its protocol (and its stored runs); cuda-convnet's nets get
    # cuda-convnet's (batch 128, one fixed order, error per 10,000 images, lr by epochs to 25%).
    own = {"batch_size": 64, "train_subset": 5000, "max_epochs": 25} if ours else CUDA_CONVNET_DEFAULTS
    for name in ("batch_size", "train_subset", "max_epochs"):
        if getattr(args, name) is None:
            setattr(args, name, own[name])
    if not ours and args.init is not None:
        raise UserError(f"--init: {args.net} is initialised from its configuration's per-layer initW")
    if not ours and args.inputs not in (None, "mean"):
        raise UserError(f"--inputs: {args.net} takes cuda-convnet's inputs (the per-pixel mean subtracted)")
    cache = ensure_prepared(args.data, 32, quiet=args.quiet)
    settings = Settings(train_subset=args.train_subset, batch_size=args.batch_size, max_epochs=args.max_epochs,
                        extra_epochs=args.extra_epochs, max_steps=args.max_steps,
                        inputs=args.inputs or "mean", init=args.init or ("gaussian" if ours else "config"),
                        net=args.net)
    if not ours:
        settings.report_every, settings.order = CUDA_CONVNET_DEFAULTS["report_every"], CUDA_CONVNET_DEFAULTS["order"]
    if args.seeds < 1 or args.max_epochs < 1 or args.search_epochs < 1:
        raise UserError("--seeds, --max-epochs and --search-epochs must be at least 1")
    grid = _floats(args.lr_grid) if args.lr_grid else (DEFAULT_LR_GRID if ours else CUDA_CONVNET_LR_GRID)
    out = args.out or ("experiments/relu-tanh" if ours else f"experiments/relu-tanh-{args.net}")
    result = run_experiment(cache, out, seeds=args.seeds, lr_grid=grid,
                            search_epochs=args.search_epochs, lr_relu=args.lr_relu, lr_tanh=args.lr_tanh,
                            settings=settings, device=args.device or None, quiet=args.quiet,
                            search="final" if ours else "crossing",
                            activations=(args.activation,) if args.activation else ("relu", "tanh"))
    s = result.summary
    for act in ("relu", "tanh"):
        a = s["activations"][act]
        if not a["runs"]:
            continue
        e = a["epochs_to_target_mean"]
        text = "-" if e is None else f"{'>=' if a['lower_bound'] else ''}{e:.2f}{plus_minus(a['epochs_to_target_std'])}"
        print(f"{act:<5} lr {a['lr']:<7g} epochs to {100 * s['target_error']:.0f}% training error: {text} "
              f"({a['reached']}/{a['runs']} runs reached it)")
    if s["ratio_mean"] is not None:
        print(f"tanh / ReLU: {'>=' if s['ratio_is_lower_bound'] else ''}{s['ratio_mean']:.2f}{plus_minus(s['ratio_std'])} "
              f"per seed (ratio of means {s['ratio_of_means']:.2f}); the paper: 6")
    elif args.activation:
        print(f"tanh / ReLU: no ratio ({args.activation} only; run without --activation for both)")
    else:
        print("tanh / ReLU: no ratio (ReLU did not reach the target within the budget)")
    for t, o in ((s.get("other_targets") or {}) if not args.activation else {}).items():
        ratio = "-" if o["ratio_mean"] is None else \
            f"{'>=' if o['ratio_is_lower_bound'] else ''}{o['ratio_mean']:.2f}{plus_minus(o['ratio_std'])}"
        bound = {act: ">=" if o[f"{act}_reached"] < args.seeds else "" for act in ("relu", "tanh")}
        print(f"  at {100 * float(t):.0f}% training error: ReLU {bound['relu']}{o['relu_epochs_mean']:.2f} epochs "
              f"({o['relu_reached']}/{args.seeds} reached it), tanh {bound['tanh']}{o['tanh_epochs_mean']:.2f} "
              f"({o['tanh_reached']}/{args.seeds}); ratio {ratio}")
    for n in s.get("neighbour_ratios") or []:
        print(f"  seed 0, ReLU lr {n['relu_lr']:g} ({n['relu_epochs']:.2f} epochs), tanh lr {n['tanh_lr']:g} "
              f"({n['tanh_epochs']:.2f}): ratio {n['bound']}{n['ratio']:.2f}{' (chosen)' if n['chosen'] else ''}")
    for kind, path in result.files.items():
        print(f"{kind}: {path}")
    return 0


# ----------------------------------------------------------------------------- experiment ablations

def _ablations(args) -> int:
    from .ablations import Budget, run_ablations

    budget = Budget.quick() if args.quick else Budget()
    for name in ("epochs", "train_subset", "val_subset", "max_steps", "batch_size", "test_views", "val_every"):
        value = getattr(args, name)
        if value is not None:
            setattr(budget, name, value)
    if budget.epochs < 1 or budget.batch_size < 1:
        raise UserError("--epochs and --batch-size must be at least 1")
    preset = load_config(args.preset)
    if args.data:
        cache = ensure_prepared(args.data, preset.data.size, quiet=args.quiet)
    else:   # the preset's own cache, by the same rule as `alexnet train`
        cache = ensure_prepared(preset.data.source, preset.data.size, name=preset.data.name or None,
                                cache=preset.data.cache or None, quiet=args.quiet, what="data.source")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    result = run_ablations(cache, args.out, arms=arms, seeds=args.seeds, budget=budget, preset=args.preset,
                           model=args.model, device=args.device, quiet=args.quiet)
    print(Path(result["files"]["md"]).read_text(), end="")
    for kind, path in result["files"].items():
        print(f"{kind}: {path}")
    return 0


# ----------------------------------------------------------------------------- filters / features / neighbors

def _filters(args) -> int:
    import torch

    from .filters import change_statistics, conv1_weight, draw_filters, initial_conv1

    if args.checkpoint:
        from ..checkpoint import load_checkpoint, load_model
        model, info = load_model(args.checkpoint, "cpu")
        seed = int(((load_checkpoint(args.checkpoint).meta.get("config") or {}).get("train") or {}).get("seed", 0))
        name, kwargs = info["name"], info.get("kwargs") or {}
        num_classes, in_channels = info["num_classes"], info["in_channels"]
    elif args.model:
        from ..models import build_model
        name, kwargs, num_classes, in_channels, seed = args.model, {}, 1000, args.in_channels, 0
        torch.manual_seed(seed)
        model = build_model(name, num_classes=num_classes, in_channels=in_channels)
    else:
        raise UserError("give a CHECKPOINT (or --model NAME for an untrained network)")
    result = draw_filters(model, args.out, cols=args.cols, scale=args.scale)
    result.update(change_statistics(conv1_weight(model), initial_conv1(name, num_classes, in_channels, kwargs, seed)))
    result["source"] = str(args.checkpoint) if args.checkpoint else f"untrained {name}"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['png']}: {result['kernels']} kernels {result['kernel_size']}x{result['kernel_size']}x"
              f"{result['channels']} in {result['towers']} tower block(s) of {result['rows_per_tower']} x "
              f"{result['cols']}, {result['width']}x{result['height']} px")
        print(f"change from the initialisation (re-created from seed {seed}): relative change "
              f"{result['relative_change']:.3f}, correlation {result['correlation_with_init']:.3f}, smoothness of "
              f"the change {result['update_smoothness']:.3f}; kernel smoothness {result['smoothness']:.3f} "
              f"(at init {result['smoothness_at_init']:.3f})")
    return 0


def _features(args) -> int:
    from .features import extract_features

    meta = extract_features(args.checkpoint, args.data, args.out, split=args.split, batch_size=args.batch_size,
                            device=args.device or None, limit=args.limit, progress=_progress(args))
    print(f"{meta['path']}: {meta['count']:,} x {meta['dim']} fc7 features of split '{meta['split']}' "
          f"({meta['count'] * meta['dim'] * 4 / 2 ** 20:.1f} MiB)")
    return 0


def _neighbors(args) -> int:
    from .neighbors import neighbors_figure

    result = neighbors_figure(args.checkpoint, args.data, args.query, args.out, k=args.k, metric=args.metric,
                              features=args.features, split=args.split, chunk_size=args.chunk,
                              batch_size=args.batch_size, device=args.device or None, table=args.table,
                              progress=_progress(args))
    print(Path(result["md"]).read_text(), end="")
    print(f"figure: {result['png']}\ntable: {result['csv']} and {result['md']}\n"
          f"search memory bound: {result['memory_bound_bytes'] / 2 ** 20:.1f} MiB per chunk of {args.chunk} rows")
    return 0


def _towers(args) -> int:
    from .towers import format_towers, measure_towers
    if bool(args.checkpoint) == bool(args.theano):
        raise UserError("give a CHECKPOINT or --theano DIR (the released theano_alexnet weights), not both or neither")
    result = measure_towers(args.theano or args.checkpoint, args.out, theano=bool(args.theano),
                            sort=not args.no_sort, threshold=args.threshold, cols=args.cols)
    print(json.dumps(result, indent=2) if args.json else format_towers(result))
    return 0


def register(sub) -> None:
    p = sub.add_parser("experiment", help="the paper's experiments: relu-tanh (Figure 1), ablations",
                       description="Run one of the paper's experiments end to end on real data.")
    exp = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", parser_class=type(p))
    exp.required = True

    q = exp.add_parser("relu-tanh", help="Figure 1: epochs to 25%% training error, ReLU vs tanh, CIFAR-10",
                       description="Figure 1: a four-layer CNN on CIFAR-10 with ReLU and with tanh units, each lr "
                                   "chosen by a grid search; epochs to reach 25%% training error, their ratio "
                                   "(paper: 6x), over several seeds. Writes figure1.png/.csv/.json in --out.")
    q.add_argument("--net", choices=NETS, default="ours",
                   help="ours: our four-layer net, 4-epoch lr search; cuda-convnet-*: Krizhevsky's CIFAR-10 "
                        "configurations, trained as cuda-convnet did (batch 128, one fixed order, training error "
                        "per 10,000 images, lr by epochs to 25%% on a x2 grid) (default: %(default)s)")
    q.add_argument("--data", default=DEFAULT_CIFAR,
                   help="CIFAR-10 cache folder, or the source archive to prepare at 32 px (default: %(default)s)")
    q.add_argument("--out", help="output folder (default: experiments/relu-tanh, or experiments/relu-tanh-NET)")
    q.add_argument("--seeds", type=int, default=3, help="runs per activation (default: %(default)s)")
    q.add_argument("--train-subset", type=int, metavar="N",
                   help="train on a seeded random subset of N images (0 = all 50,000; default: 5000 for ours, "
                        "0 for cuda-convnet's nets)")
    q.add_argument("--max-epochs", type=int,
                   help="epoch budget per run, the cap (default: 25 for ours, 40 for cuda-convnet's nets)")
    q.add_argument("--extra-epochs", type=int, default=2,
                   help="epochs to continue after reaching the target, for the plot (default: %(default)s)")
    q.add_argument("--batch-size", type=int, help="(default: 64 for ours, 128 for cuda-convnet's nets)")
    q.add_argument("--inputs", choices=("standardized", "mean"),
                   help="standardized: per-channel mean/std; mean: the paper's per-pixel mean subtraction on the "
                        "0..255 scale (default: mean)")
    q.add_argument("--init", choices=("default", "gaussian"),
                   help="ours: default: PyTorch's fan-in uniform; gaussian: the paper's N(0, 0.01) (default: "
                        "gaussian); cuda-convnet's nets use their configuration's")
    q.add_argument("--lr-grid",
                   help="lrs tried per activation, extended past an edge the winner sits on (default: "
                        "0.0003,0.001,0.003,0.01 for ours, 0.0005,0.001,0.002 for cuda-convnet's nets)")
    q.add_argument("--search-epochs", type=int, default=4, help="ours: epochs per lr-search run (default: %(default)s)")
    q.add_argument("--activation", choices=("relu", "tanh"),
                   help="train only this activation's runs (one process each); a later call without it re-uses "
                        "them and gives the ratio")
    q.add_argument("--lr-relu", type=float, help="skip the search for ReLU and use this lr")
    q.add_argument("--lr-tanh", type=float, help="skip the search for tanh and use this lr")
    q.add_argument("--max-steps", type=int, default=0, help="stop every run after this many steps (smoke tests)")
    q.add_argument("--device", default="", help="torch device (default: cuda if available, else cpu)")
    q.add_argument("--quiet", action="store_true", help="no progress messages")
    q.set_defaults(func=_relu_tanh)

    q = exp.add_parser("ablations", help="the baseline and one trick removed at a time, >= 2 seeds each",
                       description="Train the baseline and each ablation (no LRN, 2x2 pooling, no dropout, no PCA "
                                   "noise, no crop/flip, tanh, conv3 removed, one tower at half width: the paper's one-GPU net) "
                                   "with the same budget and seeds; "
                                   "writes ablations.md/.csv/.json/.png in --out. Finished runs are re-used, "
                                   "interrupted ones resumed.")
    q.add_argument("--data", help="cache folder or data source (default: the preset's data.source)")
    q.add_argument("--out", default="experiments/ablations", help="output folder (default: %(default)s)")
    q.add_argument("--preset", default="cifar10-ablations",
                   help="training preset the arms start from (default: %(default)s)")
    q.add_argument("--model", help="model name (default: the preset's)")
    q.add_argument("--arms", help="comma-separated subset of arms (the baseline is always included)")
    q.add_argument("--seeds", type=int, default=2, help="seeds per arm (default: %(default)s)")
    q.add_argument("--epochs", type=int, help="epochs per run (default 6; --quick: 1)")
    q.add_argument("--train-subset", type=int, help="training images per run (default 10000; 0 = all)")
    q.add_argument("--val-subset", type=int, help="validation/test images (default 0 = all)")
    q.add_argument("--val-every", type=int, help="validate every N epochs (default 0: after the last only)")
    q.add_argument("--max-steps", type=int, help="stop each run after this many steps")
    q.add_argument("--batch-size", type=int, help="(default 128)")
    q.add_argument("--test-views", choices=("center", "ten"), help="test views (default: center)")
    q.add_argument("--quick", action="store_true", help="a seconds-long budget to check the pipeline (numbers meaningless)")
    q.add_argument("--device", default="", help="torch device (default: cuda if available, else cpu)")
    q.add_argument("--quiet", action="store_true", help="no progress output")
    q.set_defaults(func=_ablations)

    p = sub.add_parser("filters", help="Figure 3: the conv1 kernels as an image grid, one block per tower",
                       description="Draw the first-layer kernels of a checkpoint (or of an untrained --model) as a "
                                   "PNG grid, each kernel normalised for display, towers in separate blocks.")
    p.add_argument("checkpoint", nargs="?", help="checkpoint file or run folder")
    p.add_argument("-o", "--out", default="filters.png", help="output PNG (default: %(default)s)")
    p.add_argument("--model", help="draw an untrained registered model instead of a checkpoint")
    p.add_argument("--in-channels", type=int, default=3, help="with --model: input channels (default: 3)")
    p.add_argument("--cols", type=int, default=16, help="kernels per row in a block (default: %(default)s)")
    p.add_argument("--scale", type=int, help="pixels per weight (default: about 44 px per kernel)")
    p.add_argument("--json", action="store_true", help="print geometry and statistics as JSON")
    p.set_defaults(func=_filters)

    p = sub.add_parser("features", help="fc7 features of every image of a cache split, saved as .npy",
                       description="Compute the last hidden layer (fc7) for every image of a split in batches and "
                                   "save it as a float32 .npy (memory-mapped while written) with a .json sidecar.")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--data", required=True, help="prepared cache folder")
    p.add_argument("--out", required=True, help="output .npy")
    p.add_argument("--split", default="train", help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="(default: %(default)s)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (default: all)")
    p.add_argument("--device", default="", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_features)

    p = sub.add_parser("neighbors", help="Figure 4 (right): the k nearest training images in fc7 space",
                       description="Exact k-nearest-neighbour search of query images among a cache split by fc7 "
                                   "distance, streaming the database in chunks; writes an image grid and a table.")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--data", required=True, help="prepared cache folder (the database is its --split)")
    p.add_argument("--query", nargs="+", required=True, metavar="IMAGE", help="query image files")
    p.add_argument("-k", type=int, default=6, help="neighbours per query (default: %(default)s)")
    p.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean", help="(default: %(default)s)")
    p.add_argument("--features", help="database features saved by 'alexnet features' (default: compute them)")
    p.add_argument("--split", default="train", help="database split (default: %(default)s)")
    p.add_argument("-o", "--out", default="neighbors.png", help="output PNG (default: %(default)s)")
    p.add_argument("--table", help="output CSV (default: OUT with .csv; a .md beside it)")
    p.add_argument("--chunk", type=int, default=4096, help="database rows per search chunk (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: %(default)s)")
    p.add_argument("--device", default="", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_neighbors)

    p = sub.add_parser("towers", help="colour specificity of conv1 per tower (section 6.1, Figure 3)",
                       description="s = fraction of a kernel's energy outside the grey (R=G=B) direction (0 grey, 1 pure "
                                   "colour contrast, 2/3 untrained); per tower mean/median/spread/fraction above "
                                   "--threshold, the split's Mann-Whitney probability and permutation p; for a run's "
                                   "checkpoint also what training added. With --out: towers.png (paper layout, sorted "
                                   "by s), specificity.png, towers.json.")
    p.add_argument("checkpoint", nargs="?", help="checkpoint file or run folder")
    p.add_argument("--theano", metavar="DIR", help="the released theano_alexnet weights (e.g. ../shared/data/theano-alexnet-conv)")
    p.add_argument("--out", metavar="DIR", help="write towers.png, specificity.png and towers.json here")
    p.add_argument("--no-sort", action="store_true", help="draw kernels in stored order (default: by s within each tower)")
    p.add_argument("--threshold", type=float, default=0.5, help="(default: %(default)s)")
    p.add_argument("--cols", type=int, default=16, help="kernels per row in a tower's block (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func=_towers)
