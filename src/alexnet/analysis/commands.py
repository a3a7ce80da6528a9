"""CLI: ``alexnet experiment relu-tanh|ablations|filters|neighbors|towers`` (the paper's figures and
experiments, one verb) and ``alexnet features``.

The experiment modules (and torch, matplotlib) are imported inside the handlers: every
``alexnet`` invocation builds this parser, and ``alexnet --help`` should not pay for them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..data.resolve import ensure_prepared
from ..errors import UserError
from ..models.registry import list_models
from ..options import DEVICE, SPLIT, Spec, make_parents
from ..train.config import load_config, parse_overrides
from .common import plus_minus

# Figure 1's nets (alexnet.analysis.relu_tanh.NETS; here so that --help does not import torch).
NETS = ("ours", "cuda-convnet-19pct", "cuda-convnet-18pct", "cuda-convnet-conv-local-13pct",
        "cuda-convnet-conv-local-11pct")

DEFAULT_CIFAR = "../shared/data/cifar10-jpg.tar.gz"   # beside a checkout; alexnet.locations.expand_source

CHECKPOINT = Spec(path="checkpoint")
OUTPUT = Spec(path="output")
OUT_DIR = Spec(path="out-dir")
DATA = Spec(path="data")
LR = Spec(float, gt=0)


def _progress(args) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


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
    # The default folder is named per net, so it is checked here, before any work, like a given one.
    out = OUT_DIR.check(args.out_dir or ("experiments/relu-tanh" if ours else f"experiments/relu-tanh-{args.net}"),
                        "--out-dir")
    cache = ensure_prepared(args.data, 32, quiet=args.quiet)
    settings = Settings(train_subset=args.train_subset, batch_size=args.batch_size, max_epochs=args.max_epochs,
                        extra_epochs=args.extra_epochs, max_steps=args.max_steps,
                        inputs=args.inputs or "mean", init=args.init or ("gaussian" if ours else "config"),
                        net=args.net)
    if not ours:
        settings.report_every, settings.order = CUDA_CONVNET_DEFAULTS["report_every"], CUDA_CONVNET_DEFAULTS["order"]
    grid = tuple(args.lr_grid) if args.lr_grid else (DEFAULT_LR_GRID if ours else CUDA_CONVNET_LR_GRID)
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

# Settings that set the budget every arm gets (alexnet.analysis.ablations.Budget), by dotted key.
BUDGET_KEYS = {"train.epochs": "epochs", "data.train_subset": "train_subset", "data.val_subset": "val_subset",
               "train.max_steps": "max_steps", "train.batch_size": "batch_size", "train.test_views": "test_views",
               "train.val_every": "val_every"}


# The plain flags the ablations took before they took settings, and the settings that replaced them.
ABLATION_FLAGS = {"epochs": "train.epochs", "train-subset": "data.train_subset", "val-subset": "data.val_subset",
                  "max-steps": "train.max_steps", "batch-size": "train.batch_size", "test-views": "train.test_views",
                  "val-every": "train.val_every", "model": "model.name", "device": "train.device"}


def _flat(nested: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in nested.items():
        if isinstance(value, dict) and not (prefix + key).endswith("kwargs"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _nested(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _ablations(args) -> int:
    from .ablations import ARM_NAMES, Budget, run_ablations

    # Every setting checked against its declaration (and the preset's) before any work.
    preset = load_config(args.preset, args.settings)
    given = _flat(parse_overrides(args.settings))
    if any(k.startswith("run.") for k in given):
        raise UserError(f"--{next(k for k in given if k.startswith('run.'))}: the experiment names and places its "
                        f"runs itself (OUT_DIR/runs/ARM-sSEED); give --out-dir")
    budget = Budget.quick() if args.quick else Budget()
    for key, attr in BUDGET_KEYS.items():
        if key in given:
            section, name = key.split(".")
            setattr(budget, attr, getattr(getattr(preset, section), name))
    model, device = given.pop("model.name", None), given.pop("train.device", "")
    rest = {k: v for k, v in given.items() if k not in BUDGET_KEYS}
    arms = list(args.arms) if args.arms else None
    unknown = [a for a in arms or [] if a not in ARM_NAMES]
    if unknown:
        raise UserError(f"--arms: unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARM_NAMES)}")
    if args.data:
        cache = ensure_prepared(args.data, preset.data.size, quiet=args.quiet)
    else:   # the preset's own cache, by the same rule as `alexnet train`
        cache = ensure_prepared(preset.data.source, preset.data.size, name=preset.data.name or None,
                                cache=preset.data.cache or None, quiet=args.quiet, what="data.source")
    result = run_ablations(cache, args.out_dir, arms=arms, seeds=args.seeds, budget=budget, preset=args.preset,
                           model=model, device=device, quiet=args.quiet, settings=_nested(rest) or None)
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
    make_parents(args.output)
    result = draw_filters(model, args.output, cols=args.cols, scale=args.scale)
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

    make_parents(args.output)
    meta = extract_features(args.checkpoint, args.data, args.output, split=args.split, batch_size=args.batch_size,
                            device=args.device or None, limit=args.limit, progress=_progress(args))
    print(f"{meta['path']}: {meta['count']:,} x {meta['dim']} fc7 features of split '{meta['split']}' "
          f"({meta['count'] * meta['dim'] * 4 / 2 ** 20:.1f} MiB)")
    return 0


def _neighbors(args) -> int:
    from .neighbors import neighbors_figure

    make_parents(args.output, args.table)
    result = neighbors_figure(args.checkpoint, args.data, args.query, args.output, k=args.k, metric=args.metric,
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
    result = measure_towers(args.theano or args.checkpoint, args.out_dir, theano=bool(args.theano),
                            sort=not args.no_sort, threshold=args.threshold, cols=args.cols)
    print(json.dumps(result, indent=2) if args.json else format_towers(result))
    return 0


def register(sub) -> None:
    p = sub.add_parser("experiment", help="the paper's figures and experiments: relu-tanh (Figure 1), filters "
                                          "(Figure 3), neighbors (Figure 4), towers (section 6.1), ablations",
                       description="Run one of the paper's experiments, or draw one of its figures, on real data.")
    exp = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", parser_class=type(p))
    exp.required = True

    q = exp.add_parser("relu-tanh", help="Figure 1: epochs to 25%% training error, ReLU vs tanh, CIFAR-10",
                       description="Figure 1: a four-layer CNN on CIFAR-10 with ReLU and with tanh units, each lr "
                                   "chosen by a grid search; epochs to reach 25%% training error, their ratio "
                                   "(paper: 6x), over several seeds. Writes figure1.png/.csv/.json in --out-dir.")
    q.add_argument("--net", choices=NETS, default="ours",
                   help="ours: our four-layer net, 4-epoch lr search; cuda-convnet-*: Krizhevsky's CIFAR-10 "
                        "configurations, trained as cuda-convnet did (batch 128, one fixed order, training error "
                        "per 10,000 images, lr by epochs to 25%% on a x2 grid) (default: %(default)s)")
    q.add_argument("--data", default=DEFAULT_CIFAR, type=DATA,
                   help="CIFAR-10 cache folder, or the source archive to prepare at 32 px (default: %(default)s)")
    q.add_argument("--out-dir", type=OUT_DIR, metavar="DIR",
                   help="output folder (default: experiments/relu-tanh, or experiments/relu-tanh-NET)")
    q.add_argument("--seeds", type=Spec(int, ge=1), default=3, help="runs per activation (default: %(default)s)")
    q.add_argument("--train-subset", type=Spec(int, ge=0), metavar="N",
                   help="train on a seeded random subset of N images (0 = all 50,000; default: 5000 for ours, "
                        "0 for cuda-convnet's nets)")
    q.add_argument("--max-epochs", type=Spec(int, ge=1),
                   help="epoch budget per run, the cap (default: 25 for ours, 40 for cuda-convnet's nets)")
    q.add_argument("--extra-epochs", type=Spec(int, ge=0), default=2,
                   help="epochs to continue after reaching the target, for the plot (default: %(default)s)")
    q.add_argument("--batch-size", type=Spec(int, ge=1), help="(default: 64 for ours, 128 for cuda-convnet's nets)")
    q.add_argument("--inputs", choices=("standardized", "mean"),
                   help="standardized: per-channel mean/std; mean: the paper's per-pixel mean subtraction on the "
                        "0..255 scale (default: mean)")
    q.add_argument("--init", choices=("default", "gaussian"),
                   help="ours: default: PyTorch's fan-in uniform; gaussian: the paper's N(0, 0.01) (default: "
                        "gaussian); cuda-convnet's nets use their configuration's")
    q.add_argument("--lr-grid", type=Spec(list[float], gt=0),
                   help="comma-separated lrs tried per activation, extended past an edge the winner sits on "
                        "(default: 0.0003,0.001,0.003,0.01 for ours, 0.0005,0.001,0.002 for cuda-convnet's nets)")
    q.add_argument("--search-epochs", type=Spec(int, ge=1), default=4,
                   help="ours: epochs per lr-search run (default: %(default)s)")
    q.add_argument("--activation", choices=("relu", "tanh"),
                   help="train only this activation's runs (one process each); a later call without it re-uses "
                        "them and gives the ratio")
    q.add_argument("--lr-relu", type=LR, help="skip the search for ReLU and use this lr")
    q.add_argument("--lr-tanh", type=LR, help="skip the search for tanh and use this lr")
    q.add_argument("--max-steps", type=Spec(int, ge=0), default=0, help="stop every run after this many steps (smoke tests)")
    q.add_argument("--device", default="", type=Spec(**DEVICE, special=("",)),
                   help="torch device (default: cuda if available, else cpu)")
    q.add_argument("--quiet", action="store_true", help="no progress messages")
    q.set_defaults(func=_relu_tanh)

    q = exp.add_parser("ablations", renamed={f"--{old}": f"--{new}" for old, new in ABLATION_FLAGS.items()}, help="the baseline and one trick removed at a time, >= 2 seeds each",
                       description="Train the baseline and each ablation (no LRN, 2x2 pooling, no dropout, no PCA "
                                   "noise, no crop/flip, tanh, conv3 removed, one tower at half width: the paper's "
                                   "one-GPU net) with the same budget and seeds; writes ablations.md/.csv/.json/.png "
                                   "in --out-dir. Finished runs are re-used, interrupted ones resumed. Training "
                                   "settings as in 'alexnet train' (--section.key VALUE) apply to every arm, under "
                                   "its own switch: the budget (default: --train.epochs 6 --data.train_subset 10000 "
                                   "--train.batch_size 128 --train.val_every 0; --quick: 1 epoch, 256 images), "
                                   "--model.name, --train.device, any other setting of the preset.")
    q.add_argument("--data", type=DATA, help="cache folder or data source (default: the preset's data.source)")
    q.add_argument("--out-dir", default="experiments/ablations", type=OUT_DIR, metavar="DIR",
                   help="output folder (default: %(default)s)")
    q.add_argument("--preset", default="cifar10-ablations", type=Spec(path="preset"),
                   help="training preset the arms start from (default: %(default)s)")
    q.add_argument("--arms", type=Spec(list[str], pattern=r"[a-z0-9_]+"), metavar="ARM,...",
                   help="comma-separated subset of arms (the baseline is always included)")
    q.add_argument("--seeds", type=Spec(int, ge=1), default=2, help="seeds per arm (default: %(default)s)")
    q.add_argument("--quick", action="store_true", help="a seconds-long budget to check the pipeline (numbers meaningless)")
    q.add_argument("--quiet", action="store_true", help="no progress output")
    q.set_defaults(func=_ablations, takes_settings=True)

    q = exp.add_parser("filters", help="Figure 3: the conv1 kernels as an image grid, one block per tower",
                       description="Draw the first-layer kernels of a checkpoint (or of an untrained --model) as a "
                                   "PNG grid, each kernel normalised for display, towers in separate blocks.")
    q.add_argument("checkpoint", nargs="?", type=CHECKPOINT, help="checkpoint file or run folder")
    q.add_argument("-o", "--output", default="filters.png", type=OUTPUT, metavar="FILE",
                   help="output PNG (default: %(default)s)")
    q.add_argument("--model", choices=list_models(), help="draw an untrained registered model instead of a checkpoint")
    q.add_argument("--in-channels", type=Spec(int, ge=1), default=3, help="with --model: input channels (default: 3)")
    q.add_argument("--cols", type=Spec(int, ge=1), default=16, help="kernels per row in a block (default: %(default)s)")
    q.add_argument("--scale", type=Spec(int, ge=1), help="pixels per weight (default: about 44 px per kernel)")
    q.add_argument("--json", action="store_true", help="print geometry and statistics as JSON")
    q.set_defaults(func=_filters)

    q = exp.add_parser("neighbors", help="Figure 4 (right): the k nearest training images in fc7 space",
                       description="Exact k-nearest-neighbour search of query images among a cache split by fc7 "
                                   "distance, streaming the database in chunks; writes an image grid and a table.")
    q.add_argument("checkpoint", type=CHECKPOINT, help="checkpoint file or run folder")
    q.add_argument("--data", required=True, type=DATA, help="prepared cache folder (the database is its --split)")
    q.add_argument("--query", nargs="+", required=True, metavar="IMAGE", type=Spec(path="file"),
                   help="query image files")
    q.add_argument("-k", type=Spec(int, ge=1), default=6, help="neighbours per query (default: %(default)s)")
    q.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean", help="(default: %(default)s)")
    q.add_argument("--features", type=Spec(path="file"),
                   help="database features saved by 'alexnet features' (default: compute them)")
    q.add_argument("--split", default="train", type=Spec(**SPLIT), help="database split (default: %(default)s)")
    q.add_argument("-o", "--output", default="neighbors.png", type=OUTPUT, metavar="FILE",
                   help="output PNG (default: %(default)s)")
    q.add_argument("--table", type=OUTPUT, metavar="FILE", help="output CSV (default: OUTPUT with .csv; a .md beside it)")
    q.add_argument("--chunk", type=Spec(int, ge=1), default=4096,
                   help="database rows per search chunk (default: %(default)s)")
    q.add_argument("--batch-size", type=Spec(int, ge=1), default=256,
                   help="images per forward pass (default: %(default)s)")
    q.add_argument("--device", default="", type=Spec(**DEVICE, special=("",)),
                   help="torch device (default: cuda if available, else cpu)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_neighbors)

    q = exp.add_parser("towers", help="section 6.1: colour specificity of conv1 per tower (Figure 3)",
                       description="s = fraction of a kernel's energy outside the grey (R=G=B) direction (0 grey, 1 pure "
                                   "colour contrast, 2/3 untrained); per tower mean/median/spread/fraction above "
                                   "--threshold, the split's Mann-Whitney probability and permutation p; for a run's "
                                   "checkpoint also what training added. With --out-dir: towers.png (paper layout, "
                                   "sorted by s), specificity.png, towers.json.")
    q.add_argument("checkpoint", nargs="?", type=CHECKPOINT, help="checkpoint file or run folder")
    q.add_argument("--theano", metavar="DIR", type=Spec(path="dir"),
                   help="the released theano_alexnet weights (e.g. ../shared/data/theano-alexnet-conv)")
    q.add_argument("--out-dir", metavar="DIR", type=OUT_DIR,
                   help="write towers.png, specificity.png and towers.json here")
    q.add_argument("--no-sort", action="store_true", help="draw kernels in stored order (default: by s within each tower)")
    q.add_argument("--threshold", type=Spec(float, gt=0, lt=1), default=0.5, help="(default: %(default)s)")
    q.add_argument("--cols", type=Spec(int, ge=1), default=16, help="kernels per row in a tower's block (default: %(default)s)")
    q.add_argument("--json", action="store_true", help="print everything as JSON")
    q.set_defaults(func=_towers)

    p = sub.add_parser("features", help="fc7 features of every image of a cache split, saved as .npy",
                       description="Compute the last hidden layer (fc7) for every image of a split in batches and "
                                   "save it as a float32 .npy (memory-mapped while written) with a .json sidecar.")
    p.add_argument("checkpoint", type=CHECKPOINT, help="checkpoint file or run folder")
    p.add_argument("--data", required=True, type=DATA, help="prepared cache folder")
    p.add_argument("-o", "--output", required=True, type=OUTPUT, metavar="FILE", help="output .npy")
    p.add_argument("--split", default="train", type=Spec(**SPLIT), help="(default: %(default)s)")
    p.add_argument("--batch-size", type=Spec(int, ge=1), default=256, help="(default: %(default)s)")
    p.add_argument("--limit", type=Spec(int, ge=0), default=0, help="only the first N images (default: all)")
    p.add_argument("--device", default="", type=Spec(**DEVICE, special=("",)),
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_features)
