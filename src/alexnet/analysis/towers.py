"""The two towers specialise: colour-agnostic kernels on one GPU, colour-specific on the other.

The paper (section 6.1, Figure 3): "the kernels on GPU 1 are largely color-agnostic,
while the kernels on GPU 2 are largely color-specific. This kind of specialization
occurs during every run and is independent of any particular random weight
initialization (modulo a renumbering of the GPUs)." conv1 itself is one layer; its
first half of output maps feeds tower 0 (conv2's first group), the second half tower 1.

**The measure** (:func:`colour_specificity`): the fraction of a kernel's energy that
lies outside the grey direction of colour space,

    s(w) = sum_{c,y,x} (w[c,y,x] - g[y,x])^2 / sum_{c,y,x} w[c,y,x]^2,   g[y,x] = mean_c w[c,y,x].

At every pixel the kernel's RGB weight vector is split into its projection on
(1, 1, 1)/sqrt(3) (the part that responds to brightness, identical in R, G and B) and
the rest (colour contrast: the part that a grey input cannot excite); s is the share of
the squared norm in the rest. Why this one:

* It answers the paper's question directly: a kernel is colour-agnostic exactly when
  its response to an image depends on the image's grey level only, i.e. when its three
  channels are equal (s = 0); it is purely colour-opponent when its channels sum to
  zero at every pixel (a red-green or blue-yellow kernel, s = 1), which makes it blind
  to brightness. A kernel that looks at one channel only (pure red) gets 2/3: it
  responds to brightness too (red light is bright), and the measure says so.
* It is invariant to the kernel's scale (the paper's kernels differ in norm a lot) and
  to its sign, and it sums over space, so a kernel's spatial shape (edge, blob, grating)
  does not enter, only how its three colour planes differ.
* The per-channel DC (spatial mean) is kept on purpose: most colour-specific kernels of
  Figure 3 are low-frequency colour blobs whose colour lives in their DC; removing
  each channel's mean would call a uniform red-minus-green blob grey.
* It needs no data. A data-driven alternative (the luminance axis as the first
  principal component of the training pixels, as in the PCA colour noise of section
  4.1) is within a few degrees of (1, 1, 1) for natural images, and would make the
  number depend on the data set.

The grey direction is the grey of the *pixels*: a kernel trained on per-channel scaled
inputs (``data.scale = "std"``) sees x_c' = (x_c - m_c) * scale_c, so its response to raw
pixels is that of the kernel w_c * scale_c; ``channel_scale`` applies that before the
measure (the checkpoint's input spec gives it). Mean subtraction does not change a
kernel's weights, and whether an implementation flips its kernels (true convolution
vs correlation) does not change s either (it permutes pixels, the same for all channels).

**Per tower** (:func:`tower_summary`): mean, median, standard deviation, quartiles and
the fraction of kernels above ``threshold`` (default 0.5: more energy in colour
contrast than in brightness). **The split** (:func:`split_statistics`): the
Mann-Whitney probability that a kernel of tower 1 is more colour-specific than one of
tower 0 (0.5 = no split, 1 or 0 = complete separation; which tower becomes the colour
one is chance, as the paper says) and a permutation test of the difference of the
towers' means (seeded, so the p-value is reproducible).

**Early in training** conv1 is still mostly its random initialisation, whose s is 2/3
in both towers whatever training has begun to do; for a checkpoint of our training
loop :func:`measure_towers` therefore also measures what training has added
(trained minus the initial conv1, re-created from the run's seed with
:func:`alexnet.analysis.filters.initial_conv1`): the split shows there first.

**The figure** (:func:`draw_towers`): conv1 in the paper's layout, tower 0's kernels
in a block above tower 1's (``alexnet.analysis.filters.filter_grid``: 3 rows of 16
kernels per tower, each kernel min-max normalised on its own, as the paper draws
them), optionally sorted within each tower from least to most colour-specific; and
:func:`plot_specificity`, the two towers' distributions of s side by side.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from PIL import Image

from ..checkpoint import load_checkpoint, load_model
from ..errors import UserError
from ..options import output_file
from ..report import save_figure, write_json
from ..weights.theano import read_theano_alexnet
from .filters import conv1_weight, filter_grid, initial_conv1, tower_count

COLOUR_THRESHOLD = 0.5          # more energy in colour contrast than in brightness
PERMUTATIONS = 20_000


def _as_array(weight) -> np.ndarray:
    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    return w.astype(np.float64)


def colour_specificity(weight, channel_scale=None) -> np.ndarray:
    """s for every kernel of an (N, 3, k, k) RGB weight: 0 = grey (R = G = B), 1 = pure colour contrast.

    ``channel_scale``: the input's per-channel multipliers (the kernel's response to raw
    pixels is that of ``w[:, c] * channel_scale[c]``); None for unscaled inputs. An
    all-zero kernel has no colour and gets 0.
    """
    w = _as_array(weight)
    if w.ndim != 4 or w.shape[1] != 3:
        raise UserError(f"colour specificity needs RGB kernels (N, 3, k, k), got shape {tuple(w.shape)}")
    if channel_scale is not None:
        scale = np.asarray(channel_scale, dtype=np.float64).reshape(-1)
        if scale.size != 3:
            raise UserError(f"channel scale needs 3 values, got {scale.size}")
        w = w * scale[None, :, None, None]
    grey = w.mean(axis=1, keepdims=True)
    total = (w ** 2).sum(axis=(1, 2, 3))
    colour = ((w - grey) ** 2).sum(axis=(1, 2, 3))
    return np.where(total > 0, colour / np.where(total > 0, total, 1.0), 0.0)


def tower_summary(values, threshold: float = COLOUR_THRESHOLD) -> dict:
    """Mean, median, standard deviation (ddof 1), quartiles and the fraction above ``threshold``."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise UserError("no kernels to summarise")
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return {"kernels": int(v.size), "mean": float(v.mean()), "median": float(median),
            "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "q1": float(q1), "q3": float(q3),
            "min": float(v.min()), "max": float(v.max()),
            "threshold": threshold, "fraction_above": float((v > threshold).mean())}


def split_statistics(values, towers: int = 2, threshold: float = COLOUR_THRESHOLD,
                     permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Per-tower summaries of s (kernels in tower order), and how strongly the towers differ."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if towers < 1 or v.size % towers:
        raise UserError(f"{v.size} kernels cannot be split into {towers} towers")
    parts = v.reshape(towers, -1)
    result = {"towers": [tower_summary(p, threshold) for p in parts], "all": tower_summary(v, threshold)}
    if towers != 2:
        return result
    a, b = parts
    # Mann-Whitney: P(a kernel of tower 1 is more colour-specific than one of tower 0), ties count half.
    greater = (b[:, None] > a[None, :]).mean()
    ties = (b[:, None] == a[None, :]).mean()
    auc = float(greater + 0.5 * ties)
    observed = float(b.mean() - a.mean())
    rng = np.random.default_rng(seed)
    n = a.size
    diffs = np.empty(permutations)
    for i in range(permutations):
        p = rng.permutation(v)
        diffs[i] = p[n:].mean() - p[:n].mean()
    p_value = float(((np.abs(diffs) >= abs(observed) - 1e-12).sum() + 1) / (permutations + 1))
    result.update({"p_tower1_more_colour": auc, "separation": abs(2 * auc - 1), "mean_difference": observed,
                   "permutation_p": p_value, "permutations": permutations,
                   "colour_tower": int(observed > 0) if observed != 0 else None})
    return result


def theano_conv1(folder: str | os.PathLike) -> np.ndarray:
    """conv1 of the released theano_alexnet weights as (96, 3, 11, 11) float32, read by the importer
    (:func:`alexnet.weights.theano.read_theano_alexnet`: c01b -> OIHW, kernels flipped to its true
    convolution). Flipping does not change s; it only orients the drawing as the network sees it."""
    state, _mean, _files = read_theano_alexnet(folder)
    return state["features.conv1.weight"].numpy()


def checkpoint_conv1(path: str | os.PathLike) -> dict:
    """conv1 of a checkpoint (file or run folder), its number of towers and its input's channel scale,
    and, for a checkpoint of our training loop (its config names the seed), conv1 as it was initialised."""
    model, info = load_model(path, "cpu")
    spec = info.get("input_spec")
    scale = getattr(spec, "scale", None)
    seed = ((load_checkpoint(path).meta.get("config") or {}).get("train") or {}).get("seed")
    init = None if seed is None else initial_conv1(info["name"], info["num_classes"], info["in_channels"],
                                                   info.get("kwargs") or {}, int(seed)).numpy()
    return {"weight": conv1_weight(model).numpy(), "towers": tower_count(model), "channel_scale": scale,
            "model": info.get("name"), "kwargs": info.get("kwargs") or {}, "initial": init, "seed": seed}


def draw_towers(weight, out: str | os.PathLike, towers: int = 2, values=None, sort: bool = True,
                cols: int = 16, scale: int | None = None) -> dict:
    """conv1 as the paper draws it, tower 0 above tower 1; sorted by s within each tower when ``sort``."""
    w = _as_array(weight)
    if w.ndim != 4 or w.shape[0] % towers:
        raise UserError(f"{tuple(w.shape)}: cannot draw {towers} tower(s) of conv1 kernels")
    order = np.arange(len(w))
    if sort:
        s = colour_specificity(w) if values is None else np.asarray(values)
        per = len(w) // towers
        order = np.concatenate([t * per + np.argsort(s[t * per:(t + 1) * per], kind="stable") for t in range(towers)])
    image, layout = filter_grid(w[order], towers, cols, scale)
    out = output_file(out)
    Image.fromarray(image).save(out, optimize=True)
    return {"png": str(out), "order": order.tolist(), "sorted": sort, "width": layout.width, "height": layout.height,
            "rows_per_tower": layout.rows_per_tower, "cols": layout.cols}


def plot_specificity(values, out: str | os.PathLike, towers: int = 2, title: str = "",
                     threshold: float = COLOUR_THRESHOLD) -> str:
    """The towers' distributions of s: one row of dots per tower, its median marked."""
    import matplotlib   # lazy: ~0.5 s of start-up that only the figure needs
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = np.asarray(values, dtype=np.float64).reshape(towers, -1)
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.7 * towers))
    rng = np.random.default_rng(0)          # vertical jitter only, to show overlapping dots
    for t, p in enumerate(parts):
        y = towers - 1 - t
        ax.scatter(p, y + rng.uniform(-0.18, 0.18, p.size), s=12, alpha=0.7, color=("tab:blue", "tab:orange")[t % 2])
        ax.plot([np.median(p)] * 2, [y - 0.3, y + 0.3], color="black", lw=2)
    ax.axvline(threshold, color="tab:blue", ls=":", lw=1)
    ax.set_yticks(range(towers)[::-1], [f"tower {t}" for t in range(towers)])
    ax.set(xlim=(0, 1), xlabel="colour specificity s (0 = grey kernel, 1 = pure colour contrast)", title=title)
    fig.tight_layout()
    return str(save_figure(fig, out, dpi=90))


def measure_towers(source: str | os.PathLike, out: str | os.PathLike | None = None, *, theano: bool = False,
                   sort: bool = True, threshold: float = COLOUR_THRESHOLD, cols: int = 16) -> dict:
    """Colour specificity of conv1 per tower for a checkpoint (or, ``theano=True``, the released
    theano_alexnet weights in folder ``source``); with ``out`` (a folder) also ``towers.png``
    (the kernels in the paper's layout), ``specificity.png`` and ``towers.json``."""
    if not 0 < threshold < 1:
        raise UserError(f"threshold {threshold}: must lie between 0 and 1 (s is a fraction of energy)")
    if theano:
        weight, towers, channel_scale, what = theano_conv1(source), 2, None, "theano_alexnet (ImageNet), epoch 65"
    else:
        got = checkpoint_conv1(source)
        weight, towers, channel_scale = got["weight"], got["towers"], got["channel_scale"]
        what = f"{got['model']} checkpoint"
    if weight.shape[1] != 3:
        raise UserError(f"{source}: conv1 has {weight.shape[1]} input channel(s); colour needs 3")
    values = colour_specificity(weight, channel_scale)
    result = {"source": str(source), "what": what, "kernels": int(len(weight)), "kernel_size": int(weight.shape[-1]),
              "channel_scale": list(channel_scale) if channel_scale is not None else None,
              "specificity": [round(float(v), 6) for v in values], **split_statistics(values, towers, threshold)}
    initial = None if theano else got["initial"]
    if initial is not None:
        # Early in training conv1 is still mostly its random initialisation (s ~ 2/3 in both towers);
        # what training has added so far shows a split long before the kernels themselves do.
        change = weight - initial
        norm0 = float(np.linalg.norm(initial))
        result["learned_change"] = {
            "seed": got["seed"], "relative_change": float(np.linalg.norm(change)) / norm0 if norm0 else None,
            "specificity": [round(float(v), 6) for v in colour_specificity(change, channel_scale)],
            **split_statistics(colour_specificity(change, channel_scale), towers, threshold)}
    if out is not None:

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        # the drawing shows the kernels as stored (the measure used the channel-scaled ones for s)
        result["figure"] = draw_towers(weight, out / "towers.png", towers, values=values, sort=sort, cols=cols)
        result["plot"] = plot_specificity(values, out / "specificity.png", towers, title=what, threshold=threshold)
        write_json(out / "towers.json", result)
    return result


def format_towers(result: dict) -> str:
    """The per-tower numbers as the ``towers`` command prints them."""
    lines = [f"{result['what']} ({result['source']}): {result['kernels']} conv1 kernels "
             f"{result['kernel_size']}x{result['kernel_size']}x3; colour specificity s (0 = grey, 1 = pure colour contrast)"]
    for t, summary in enumerate(result["towers"]):
        lines.append(f"  tower {t}: mean {summary['mean']:.3f}, median {summary['median']:.3f}, std {summary['std']:.3f}, "
                     f"quartiles {summary['q1']:.3f}-{summary['q3']:.3f}, {100 * summary['fraction_above']:.0f}% of "
                     f"{summary['kernels']} above {summary['threshold']}")
    if "p_tower1_more_colour" in result:
        lines.append(f"  P(a tower-1 kernel is more colour-specific than a tower-0 one) = {result['p_tower1_more_colour']:.3f}; "
                     f"difference of means {result['mean_difference']:+.3f}, permutation p = {result['permutation_p']:.2g}")
    change = result.get("learned_change")
    if change and change.get("relative_change"):
        lines.append(f"  what training added (trained - initial conv1, seed {change['seed']}; "
                     f"||change|| / ||initial|| = {change['relative_change']:.3f}):")
        for t, summary in enumerate(change["towers"]):
            lines.append(f"    tower {t}: mean {summary['mean']:.3f}, median {summary['median']:.3f}, "
                         f"{100 * summary['fraction_above']:.0f}% above {summary['threshold']}")
        if "p_tower1_more_colour" in change:
            lines.append(f"    P(tower 1 more colour-specific) = {change['p_tower1_more_colour']:.3f}, "
                         f"permutation p = {change['permutation_p']:.2g}")
    if result.get("figure"):
        lines.append(f"wrote {result['figure']['png']}, {result['plot']}")
    return "\n".join(lines)
