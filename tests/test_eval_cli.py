"""`alexnet eval` and `alexnet predict` as subprocesses, including every bad-input line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.checkpoint import load_checkpoint, save_checkpoint
from alexnet.eval import evaluate

from conftest import run_cli
from train_support import one_line_error, CLI_ENV


def _other_model(run: Path, path: Path) -> Path:
    """A second, different model: the trained one with seeded noise added to every weight."""
    ck = load_checkpoint(run / "last.safetensors")
    g = torch.Generator().manual_seed(1)
    state = {k: v + 0.5 * v.float().std().nan_to_num(0) * torch.randn(v.shape, generator=g) if v.is_floating_point()
             else v for k, v in ck.model_state.items()}
    return save_checkpoint(path, model=state, meta=ck.meta, extra_tensors=ck.group("extra"))


def test_eval_ten_views_and_ensemble(trained_run, fmnist_cache, tmp_path):
    other = _other_model(trained_run, tmp_path / "other.safetensors")
    proc = run_cli("eval", trained_run, "--data", fmnist_cache, "--views", "ten", "--ensemble",
                   other, "--json", "--quiet", "--out-dir", tmp_path, env=CLI_ENV)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["views"] == "ten" and result["count"] == 600 and len(result["members"]) == 2
    assert result["members"][0]["top1_err"] != result["members"][1]["top1_err"]    # two different models
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    # The ensemble's probabilities are the mean of its members': on one image, its loss (the
    # negative log of its probability for the true class) is -log((p_a + p_b) / 2), where p_a
    # and p_b come from the members' own losses, exp(-loss), evaluated alone.
    one = {"views": "ten", "limit": 1, "workers": 0, "device": "cpu", "out": None}
    loss_a = evaluate(trained_run / "last.safetensors", fmnist_cache, **one)["loss"]
    loss_b = evaluate(other, fmnist_cache, **one)["loss"]
    ensemble = evaluate([trained_run / "last.safetensors", other], fmnist_cache, **one)
    assert ensemble["count"] == 1 and abs(loss_a - loss_b) > 0.01
    assert ensemble["loss"] == pytest.approx(-math.log((math.exp(-loss_a) + math.exp(-loss_b)) / 2), rel=1e-5)
    text = run_cli("eval", trained_run / "last.safetensors", "--data", fmnist_cache, "--quiet", env=CLI_ENV)
    assert "top-1 error" in text.stdout and "per-class accuracy: T-shirt/top" in text.stdout
    assert (trained_run / "eval-test-center" / "metrics.json").is_file()


def test_eval_bad_inputs(trained_run, fmnist_cache, tmp_path):
    one_line_error(run_cli("eval", tmp_path / "nope.safetensors", "--data", fmnist_cache), "nope.safetensors",
                   "no such file")
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes((trained_run / "last.safetensors").read_bytes()[:5000])
    one_line_error(run_cli("eval", torn, "--data", fmnist_cache), "not a readable checkpoint")
    one_line_error(run_cli("eval", trained_run, "--data", tmp_path / "no-data"), "no-data", "no such file")
    one_line_error(run_cli("eval", trained_run, "--data", fmnist_cache, "--split", "val"),
                   "no split 'val'", "this cache has: train, test")
    proc = run_cli("eval", trained_run, "--data", fmnist_cache, "--views", "five")
    assert proc.returncode == 2 and "invalid choice: 'five'" in proc.stderr


@pytest.fixture
def images(fmnist_cache, tmp_path):
    from alexnet.data import open_cache
    split = open_cache(fmnist_cache).split("test")
    good = []
    for i in range(2):
        path = tmp_path / f"good{i}.png"
        Image.fromarray(np.asarray(split.images[i])[:, :, 0]).save(path)
        good.append(path)
    big = tmp_path / "photo.jpg"             # an ordinary RGB photo-sized JPEG: resized like prepare does
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(big)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(big.read_bytes()[:400])
    return good, big, text, truncated, split.labels[:2]


def test_predict_top5_and_unreadable_images(trained_run, images, tmp_path):
    good, big, text, truncated, labels = images
    missing = tmp_path / "missing.png"
    proc = run_cli("predict", trained_run, good[0], text, big, missing, truncated, good[1], "--json", env=CLI_ENV)
    assert proc.returncode == 1, proc.stderr          # some failed, the rest were predicted
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("alexnet: error: ") for e in errors)
    assert str(text) in errors[0] and str(missing) in errors[1] and "no such file" in errors[1]
    assert str(truncated) in errors[2]
    results = json.loads(proc.stdout)
    assert [r["path"] for r in results] == list(map(str, [good[0], text, big, missing, truncated, good[1]]))
    for r in (results[0], results[2], results[5]):
        assert len(r["top"]) == 5
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert results[0]["top"][0]["name"] in ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                            "Shirt", "Sneaker", "Bag", "Ankle boot"]
    text_out = run_cli("predict", trained_run, good[0], env=CLI_ENV)
    assert text_out.returncode == 0 and text_out.stdout.splitlines()[1].strip().startswith("1. ")
    all_bad = run_cli("predict", trained_run, text, missing)
    assert all_bad.returncode == 2 and len(all_bad.stderr.strip().splitlines()) == 2


def test_predict_matches_the_evaluation_path(trained_run, fmnist_cache, images):
    """A file written from the cache and predicted from disk gets the probabilities the loader gives."""
    from alexnet.data import open_cache
    from alexnet.eval.evaluate import predict_split
    from alexnet.eval.predict import predict
    from alexnet.checkpoint import load_model
    good = images[0]
    model, info = load_model(trained_run / "last.safetensors")
    probs, _ = predict_split(model, info, open_cache(fmnist_cache), "test", workers=0)
    results = predict(trained_run, good)
    for i, r in enumerate(results):
        top = r["top"][0]
        assert top["prob"] == pytest.approx(float(probs[i].max()), rel=1e-5)
        assert info["classes"].index(top["class"]) == int(probs[i].argmax())


def test_predict_panel_hook(trained_run, images, tmp_path):
    out = tmp_path / "panel.png"
    proc = run_cli("predict", trained_run, images[0][0], "--panel", out, env=CLI_ENV)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    # --json keeps standard output pure JSON: the panel's path goes inside it (docs/cli.md)
    out = tmp_path / "new" / "panel2.png"                                  # its folder is created
    proc = run_cli("predict", trained_run, images[0][0], "--panel", out, "--json", env=CLI_ENV)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["panel"] == str(out) and result["predictions"][0]["top"] and out.is_file()


def test_eval_warns_before_replacing_an_evaluation_of_other_data(trained_run, fmnist_cache, tmp_path):
    out = tmp_path / "ev"
    first = run_cli("eval", trained_run, "--data", fmnist_cache, "--limit", "50", "--out-dir", out, "--json",
                    "--workers", "0", env=CLI_ENV)
    assert first.returncode == 0 and "warning" not in first.stderr, first.stderr
    again = run_cli("eval", trained_run, "--data", fmnist_cache, "--limit", "50", "--out-dir", out, "--json",
                    "--workers", "0", env=CLI_ENV)
    assert again.returncode == 0 and "warning" not in again.stderr, again.stderr         # the same data: fine
    other = run_cli("eval", trained_run, "--data", fmnist_cache, "--limit", "60", "--out-dir", out, "--json",
                    "--workers", "0", env=CLI_ENV)
    warnings = [line for line in other.stderr.splitlines() if "warning" in line]
    assert other.returncode == 0 and len(warnings) == 1 and str(out / "metrics.json") in warnings[0], other.stderr
    assert "count 50" in warnings[0]
    assert json.loads(other.stdout)["count"] == 60 == json.loads((out / "metrics.json").read_text())["count"]
    # beside a checkpoint in a folder that cannot be written: refused before the evaluation, naming the fix
    blocker = tmp_path / "file"
    blocker.write_text("")
    refused = run_cli("eval", trained_run, "--data", fmnist_cache, "--out-dir", blocker / "x", env=CLI_ENV)
    one_line_error(refused, str(blocker), "--out-dir")
