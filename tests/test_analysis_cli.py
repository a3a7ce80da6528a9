"""The figure and experiment commands end to end, as real subprocesses on real CIFAR-10
images (a 20-per-class subset of ../shared/data/cifar10-jpg.tar.gz) and a checkpoint
trained for a few steps by ``alexnet train``."""

from __future__ import annotations

import csv
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.errors import UserError
from conftest import run_cli

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def tiny_cifar(shared_data, tmp_path_factory):
    """A real cache (20 train + 20 test images per class, 32 px) and three real test JPEGs
    (not in the cache), all from one pass over the archive."""
    from alexnet.data import prepare

    root = tmp_path_factory.mktemp("analysis")
    tree, per_class, queries = root / "cifar-tiny", {}, []
    with tarfile.open(shared_data / "cifar10-jpg.tar.gz") as tf:
        for member in tf:
            parts = member.name.split("/")
            if not (member.isfile() and member.name.endswith(".jpg") and len(parts) >= 3):
                continue
            split, cls = parts[-3], parts[-2]
            n = per_class.get((split, cls), 0)
            if n < 20:
                path = tree / split / cls / parts[-1]
            elif split == "test" and n == 20 and cls in ("cat", "ship", "truck"):
                path = root / f"query-{cls}.jpg"
                queries.append(path)
            else:
                continue
            per_class[(split, cls)] = n + 1
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tf.extractfile(member).read())
    prepare(str(tree), str(root / "cache"), size=32, quiet=True)
    return root, root / "cache", sorted(queries)


@pytest.fixture(scope="module")
def checkpoint(tiny_cifar):
    """alexnet_small trained for 12 real steps with the cifar10 preset."""
    root, cache, _ = tiny_cifar
    run_cli("train", "cifar10", "--data.cache", cache, "--train.epochs", "2", "--train.max_steps", "12",
            "--train.batch_size", "32", "--data.val_subset", "50", "--train.test_views", "center",
            "--run.out", root / "runs", "--run.name", "tiny", "--run.plots", "false", "--quiet", check=True)
    return root / "runs" / "tiny" / "last.safetensors"


def _png(path):
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return im.size


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- Figure 3

@pytest.mark.slow
def test_filters_of_a_trained_checkpoint(checkpoint, tmp_path):
    out = tmp_path / "filters.png"
    proc = run_cli("experiment", "filters", checkpoint, "-o", out, "--json", check=True)
    info = json.loads(proc.stdout)
    # alexnet_small: 48 kernels of 5x5x3, two towers of 24 -> blocks of 2 rows x 16, 8 px per weight
    assert (info["kernels"], info["kernel_size"], info["channels"], info["towers"]) == (48, 5, 3, 2)
    assert (info["rows_per_tower"], info["cols"], info["scale"]) == (2, 16, 8)
    cell = 5 * 8 + 2
    assert _png(out) == (16 * cell + 2, 2 * (2 * cell + 2) + 12) == (info["width"], info["height"])
    # Trained conv1 differs measurably from its (re-created) initialisation: it moved, it is
    # still clearly the same run's weights, and what was learned is spatially smooth
    # (image-like), which random changes never are (~0).
    assert 1e-3 < info["relative_change"]
    assert 0.5 < info["correlation_with_init"] < 0.99999
    assert info["update_smoothness"] > 0.3
    assert abs(info["smoothness_at_init"]) < 0.1


def test_filters_errors_are_one_line(tmp_path):
    proc = run_cli("experiment", "filters", tmp_path / "missing.safetensors", "-o", tmp_path / "x.png")
    assert proc.returncode == 2
    assert proc.stderr.startswith("alexnet: error:") and len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- Figure 4

@pytest.mark.slow
def test_features_and_neighbors_match_brute_force(tiny_cifar, checkpoint, tmp_path):
    from alexnet.analysis.neighbors import brute_force_knn
    from alexnet.data.preprocess import to_network_input
    from alexnet.data import build_loader, open_cache
    from alexnet.checkpoint import load_model

    _, cache_dir, queries = tiny_cifar
    feats_path = tmp_path / "feats.npy"
    run_cli("features", checkpoint, "--data", cache_dir, "-o", feats_path, "--batch-size", "64", "--quiet",
            check=True)
    feats = np.load(feats_path)
    meta = json.loads((tmp_path / "feats.json").read_text())
    assert feats.shape == (200, 1024) and feats.dtype == np.float32
    assert (meta["count"], meta["dim"], meta["split"]) == (200, 1024, "train")

    # Independent reference for the input: the evaluation loader's centre crop, fed to embed().
    model, info = load_model(checkpoint)
    cache = open_cache(cache_dir)
    loader = build_loader(cache, "train", batch_size=50, train=False, crop=info["input_size"], mean=info["mean"],
                          workers=0)
    scale = torch.tensor(info["input_scale"]).view(1, -1, 1, 1) if info.get("input_scale") else 1.0
    with torch.no_grad():
        ref = torch.cat([model.embed(x * scale) for x, _ in loader]).numpy()
        mine = to_network_input(cache.split("train").images[:50], info["input_spec"])
        x0 = next(iter(loader))[0] * scale
    np.testing.assert_allclose(mine.numpy(), x0.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-4)

    out = tmp_path / "nb.png"
    proc = run_cli("experiment", "neighbors", checkpoint, "--data", cache_dir, "--query", *queries, "--features", feats_path,
                   "-k", "4", "-o", out, "--chunk", "37", "--quiet", check=True)
    rows = _csv(tmp_path / "nb.csv")
    assert len(rows) == 3 * 4 and [int(r["rank"]) for r in rows[:4]] == [1, 2, 3, 4]
    md = (tmp_path / "nb.md").read_text().strip().splitlines()
    assert len(md) == 2 + 12
    w, h = _png(out)
    assert w > 400 and h > 300
    assert "memory bound" in proc.stdout

    # Brute force: the query features computed in-process, all 200 distances in numpy.
    from alexnet.analysis.features import load_query_images
    qimg = np.stack(load_query_images([str(q) for q in queries], info["input_spec"]))
    with torch.no_grad():
        qf = model.embed(to_network_input(qimg, info["input_spec"])).numpy()
    d_ref, i_ref = brute_force_knn(qf, feats, k=4)
    got_i = np.array([int(r["index"]) for r in rows]).reshape(3, 4)
    got_d = np.array([float(r["distance"]) for r in rows]).reshape(3, 4)
    np.testing.assert_array_equal(got_i, i_ref)
    np.testing.assert_allclose(got_d, d_ref, rtol=1e-4)
    labels = cache.split("train").labels
    assert [r["class"] for r in rows] == [cache.classes[labels[i]] for i in got_i.ravel()]

    # Cosine, features computed on the fly (Python API), same answer as brute force.
    from alexnet.analysis.neighbors import neighbors_figure
    from alexnet.errors import UserError
    result = neighbors_figure(checkpoint, cache_dir, [str(queries[0])], tmp_path / "cos.png", metric="cosine")
    _, i_cos = brute_force_knn(qf[:1], feats, k=6, metric="cosine")
    assert [r["index"] for r in result["rows"]] == list(i_cos[0])

    # A feature file of the wrong size, a corrupt query image: one-line user errors.
    np.save(tmp_path / "short.npy", feats[:10])
    with pytest.raises(UserError, match="10 feature rows"):
        neighbors_figure(checkpoint, cache_dir, [str(queries[0])], tmp_path / "x.png", features=tmp_path / "short.npy")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(queries[0].read_bytes()[:100])
    with pytest.raises(UserError, match="bad.jpg"):
        neighbors_figure(checkpoint, cache_dir, [str(bad)], tmp_path / "y.png", features=feats_path)


def test_predict_panel_end_to_end(tiny_cifar, checkpoint, tmp_path):
    """Figure 4 (left) through ``alexnet predict --panel``: real images, real checkpoint."""
    _, _, queries = tiny_cifar
    out = tmp_path / "panel.png"
    proc = run_cli("predict", checkpoint, *queries, "--panel", out, check=True)
    assert "panel:" in proc.stdout
    w, h = _png(out)
    assert w > 3 * 150 and h > 250        # three images side by side, bars under them


# ----------------------------------------------------------------------------- Figure 1

@pytest.mark.slow
def test_relu_tanh_end_to_end(tiny_cifar, tmp_path):
    _, cache_dir, _ = tiny_cifar
    out = tmp_path / "fig1"
    args = ("experiment", "relu-tanh", "--data", cache_dir, "--out-dir", out, "--seeds", "2", "--train-subset", "128",
            "--max-epochs", "2", "--search-epochs", "1", "--lr-grid", "0.01,0.05", "--max-steps", "3", "--quiet")
    proc = run_cli(*args, check=True)
    summary = json.loads((out / "figure1.json").read_text())
    assert summary["seeds"] == 2 and summary["train_images"] == 128 and summary["paper_ratio"] == 6.0
    curves = _csv(out / "figure1.csv")
    assert {r["activation"] for r in curves} == {"relu", "tanh"} and {r["seed"] for r in curves} == {"0", "1"}
    assert all(0.0 <= float(r["train_error"]) <= 1.0 for r in curves)
    search = _csv(out / "lr_search.csv")
    for act in ("relu", "tanh"):
        # the grid, plus up to 3 steps past an edge the winner sat on; the chosen lr is the best tried
        rows = [r for r in search if r["activation"] == act]
        lrs = sorted(float(r["lr"]) for r in rows)
        assert {0.01, 0.05} <= set(lrs) and 2 <= len(lrs) <= 5
        best = min(rows, key=lambda r: (float(r["final_train_error"]), float(r["lr"])))
        a = summary["activations"][act]
        assert a["runs"] == 2 and len(a["epochs_to_target"]) == 2
        assert a["lr"] == pytest.approx(float(best["lr"]))
    w, h = _png(out / "figure1.png")
    assert (w, h) == (704, 506)
    assert "tanh / ReLU" in proc.stdout
    # A second call re-uses every finished run: identical numbers, no training.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    run_cli(*args, check=True)
    assert json.loads((out / "figure1.json").read_text())["activations"] == summary["activations"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == before
    # Other settings in the same folder: refused with one line naming the difference, nothing replaced
    # (the same rule as the ablations').
    proc = run_cli(*args, "--extra-epochs", "3")
    assert proc.returncode == 2 and "other settings (extra_epochs: 2 there, 3 here)" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == before


@pytest.mark.slow
def test_relu_tanh_on_a_cuda_convnet_net_end_to_end(tiny_cifar, tmp_path):
    """--net cuda-convnet-19pct: cuda-convnet's protocol (batch 128, one fixed order, lr by epochs to
    the target on the grid, the seed-0 runs re-used as the first seed and as the neighbours)."""
    _, cache_dir, _ = tiny_cifar
    out = tmp_path / "fig1-cc"
    args = ("experiment", "relu-tanh", "--net", "cuda-convnet-19pct", "--data", cache_dir, "--out-dir", out,
            "--seeds", "2", "--max-epochs", "2", "--lr-grid", "0.001,0.002,0.004", "--max-steps", "2", "--quiet")
    proc = run_cli(*args, check=True)
    summary = json.loads((out / "figure1.json").read_text())
    st = summary["settings"]
    assert (st["net"], st["batch_size"], st["order"], st["report_every"], st["init"], st["inputs"]) == \
        ("cuda-convnet-19pct", 128, "fixed", 10000, "config", "mean")
    assert summary["search"] == "crossing" and summary["train_images"] == 200
    search = _csv(out / "lr_search.csv")
    chosen = summary["lr"]
    for act in ("relu", "tanh"):
        # the walk starts at the grid's middle and ends with the chosen lr's neighbours both measured
        lrs = {round(float(r["lr"]), 9) for r in search if r["activation"] == act}
        assert 0.002 in lrs and {round(chosen[act] * 2, 9), round(chosen[act] / 2, 9)} <= lrs
    pairs = {(n["relu_lr"], n["tanh_lr"]) for n in summary["neighbour_ratios"]}
    assert (chosen["relu"], chosen["tanh"]) in pairs and len(pairs) >= 5
    runs = sorted(p.name for p in (out / "runs").iterdir())
    # seed 0 at every lr tried is the search itself; seed 1 only at the chosen lrs
    assert sum(n.startswith("run-relu-") and "-s0-" in n for n in runs) == len([r for r in search if r["activation"] == "relu"])
    assert [n for n in runs if "-s1-" in n] == [f"run-relu-lr{chosen['relu']:g}-s1-e2.json",
                                                 f"run-tanh-lr{chosen['tanh']:g}-s1-e2.json"]
    assert "seed 0, ReLU lr" in proc.stdout
    # our net's options that do not apply are refused in one line, before any work
    for extra in (("--init", "default"), ("--inputs", "standardized")):
        proc = run_cli(*args, *extra)
        assert proc.returncode == 2 and extra[0] in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # one activation at a time, then both: the second call trains nothing
    one = tmp_path / "fig1-one"
    base = [a if a != out else one for a in args]
    proc = run_cli(*base, "--activation", "relu", check=True)
    assert "relu only" in proc.stdout and not any("tanh" in p.name for p in (one / "runs").iterdir())
    run_cli(*base, "--activation", "tanh", check=True)
    before = {p.name: p.stat().st_mtime_ns for p in (one / "runs").iterdir()}
    run_cli(*base, check=True)
    assert {p.name: p.stat().st_mtime_ns for p in (one / "runs").iterdir()} == before
    assert json.loads((one / "figure1.json").read_text())["activations"] == summary["activations"]


def test_relu_tanh_paper_inputs_are_the_pixels_minus_the_training_mean_image(tiny_cifar):
    """inputs="mean": the paper's preprocessing, written out here from the raw cache arrays."""
    from alexnet.analysis.relu_tanh import load_training_tensors
    from alexnet.data import open_cache

    _, cache_dir, _ = tiny_cifar
    cache = open_cache(cache_dir)
    raw = np.asarray(cache.split("train").images, dtype=np.float64)           # N, S, S, C in 0..255
    x, y = load_training_tensors(cache, "train", 0, 0, inputs="mean")
    expected = raw - raw.mean(axis=0)                                        # the whole split: its own mean image
    np.testing.assert_allclose(x.numpy().transpose(0, 2, 3, 1), expected, atol=1e-3)
    assert x.abs().max() > 100                                               # the 0..255 scale is kept
    xs, _ = load_training_tensors(cache, "train", 0, 0, inputs="standardized")
    assert abs(xs.std().item() - 1.0) < 0.05                                 # the modern setting: unit scale
    with pytest.raises(UserError):
        load_training_tensors(cache, "train", 0, 0, inputs="whitened")


# ----------------------------------------------------------------------------- ablations

@pytest.mark.slow
def test_ablations_end_to_end_and_resumable(tiny_cifar, tmp_path):
    _, cache_dir, _ = tiny_cifar
    out = tmp_path / "abl"
    args = ("experiment", "ablations", "--data", cache_dir, "--out-dir", out, "--quick", "--arms", "no_pca",
            "--seeds", "2", "--quiet")
    proc = run_cli(*args, check=True)
    rows = _csv(out / "ablations.csv")
    assert [r["arm"] for r in rows] == ["baseline", "no_pca"]
    assert all(r["seeds"] == "2" for r in rows)
    assert all(0 <= float(r["top1_err_mean"]) <= 100 and 0 <= float(r["top5_err_mean"]) <= float(r["top1_err_mean"])
               for r in rows)
    assert rows[1]["paper_delta_top1"] == "1.0" and "over 1%" in rows[1]["paper_claim"]
    assert len(_csv(out / "ablation_runs.csv")) == 4
    md = (out / "ablations.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in md) == 2 + 2
    _png(out / "ablations.png")
    assert "no_pca" in proc.stdout
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["baseline-s0", "baseline-s1", "no_pca-s0", "no_pca-s1"]
    # the arm's config differs from the baseline by exactly its switch
    cfg = {r: json.loads((out / "runs" / r / "config.json").read_text()) for r in runs}
    assert cfg["no_pca-s0"]["data"]["pca_std"] == 0.0 and cfg["baseline-s0"]["data"]["pca_std"] > 0
    assert cfg["baseline-s1"]["train"]["seed"] == 1
    # Re-running re-uses the finished runs: same table, checkpoints untouched.
    stamp = {r: (out / "runs" / r / "last.safetensors").stat().st_mtime_ns for r in runs}
    run_cli(*args, check=True)
    assert _csv(out / "ablations.csv") == rows
    assert {r: (out / "runs" / r / "last.safetensors").stat().st_mtime_ns for r in runs} == stamp
    # A different budget in the same folder is refused, not mixed in.
    proc = run_cli("experiment", "ablations", "--data", cache_dir, "--out-dir", out, "--quick", "--train.epochs", "2",
                   "--arms", "no_pca", "--quiet")
    assert proc.returncode == 2 and "other settings" in proc.stderr
    assert "train.epochs" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1   # names the difference
