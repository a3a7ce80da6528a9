"""`alexnet predict` over folders: batches, one CSV row per image, unreadable files skipped and listed.

The reference for every row is the same image predicted on its own (a batch of one, through
the Python API): batching and folder walking must not change any probability.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from alexnet.data import open_cache
from alexnet.eval.predict import predict

from conftest import run_cli
from train_support import CLI_ENV, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def photo_folder(fmnist_cache, tmp_path):
    """Real test images of the cache as PNG and JPEG files in a folder tree, with a damaged JPEG,
    a text file named .jpg, a README and a hidden file beside them."""
    split = open_cache(fmnist_cache).split("test")
    root = tmp_path / "photos"
    (root / "b").mkdir(parents=True)
    (root / "a").mkdir()
    for i in range(7):
        image = Image.fromarray(np.asarray(split.images[i])[:, :, 0])
        image.save(root / ("a" if i % 2 else "b") / (f"{i}.png" if i < 4 else f"{i}.JPG"))
    jpeg = (root / "b" / "4.JPG").read_bytes()
    (root / "a" / "damaged.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "b" / "text.jpg").write_text("not an image")
    (root / "README.txt").write_text("photos")
    (root / ".hidden.png").write_bytes((root / "b" / "0.png").read_bytes())
    return root


def rows_of(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_folder_becomes_one_csv_row_per_image(trained_run, photo_folder, tmp_path):
    out = tmp_path / "predictions.csv"
    single = photo_folder / "a" / "1.png"
    proc = run_cli("predict", trained_run, photo_folder, single, "--batch-size", "3", "--top", "3", "-o", out,
                   env=CLI_ENV)
    assert proc.returncode == 1, proc.stderr           # some were skipped, the rest predicted
    errors = [line for line in proc.stderr.splitlines() if line.startswith("alexnet: error: ")]
    assert len(errors) == 2 and "damaged.jpg" in errors[0] and "text.jpg" in errors[1]
    assert "2 file(s) not predicted" in proc.stderr and "README.txt" in proc.stderr   # and the hidden one
    assert proc.stdout == ""                            # the rows went to the file
    rows = rows_of(out)
    expected_paths = sorted(str(p) for p in photo_folder.rglob("*") if p.is_file()
                            and p.suffix.lower() in (".png", ".jpg") and not p.name.startswith("."))
    assert [r["path"] for r in rows] == expected_paths + [str(single)]
    assert list(rows[0]) == ["path", "class_1", "name_1", "prob_1", "class_2", "name_2", "prob_2",
                             "class_3", "name_3", "prob_3", "error"]
    for row in rows:
        if row["path"].endswith(("damaged.jpg", "text.jpg")):
            assert row["error"].startswith(row["path"]) and row["class_1"] == "" and row["prob_1"] == ""
            continue
        alone = predict(trained_run, [row["path"]], topk=3, batch_size=1)[0]["top"]
        assert [row[f"class_{r}"] for r in (1, 2, 3)] == [t["class"] for t in alone]
        assert [row[f"name_{r}"] for r in (1, 2, 3)] == [t["name"] for t in alone]
        assert [float(row[f"prob_{r}"]) for r in (1, 2, 3)] == pytest.approx([t["prob"] for t in alone], abs=2e-6)
        assert row["error"] == ""


def test_json_and_csv_agree(trained_run, photo_folder, tmp_path):
    proc = run_cli("predict", trained_run, photo_folder / "b", "--json", "-o", tmp_path / "b.csv", env=CLI_ENV)
    assert proc.returncode == 1, proc.stderr           # b/text.jpg
    results = json.loads(proc.stdout)
    rows = rows_of(tmp_path / "b.csv")
    assert [r["path"] for r in results] == [r["path"] for r in rows]
    for result, row in zip(results, rows, strict=True):
        if "top" in result:
            probs = [t["prob"] for t in result["top"]]
            assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
            assert [row[f"name_{r}"] for r in range(1, 6)] == [t["name"] for t in result["top"]]
            assert [float(row[f"prob_{r}"]) for r in range(1, 6)] == pytest.approx(probs, abs=1e-6)
        else:
            assert row["error"] == result["error"] and row["name_1"] == ""


def test_all_unreadable_and_bad_outputs(trained_run, photo_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("predict", trained_run, empty, photo_folder / "b" / "text.jpg", "-o", tmp_path / "x.csv")
    assert proc.returncode == 2                        # nothing could be predicted
    assert f"{empty}: no image files in this folder" in proc.stderr
    assert len(rows_of(tmp_path / "x.csv")) == 2       # still one row per input, each with its reason
    blocker = tmp_path / "a-file"                      # -o under a file: refused (a missing folder is made)
    blocker.write_text("not a folder\n")
    one_line_error(run_cli("predict", trained_run, photo_folder, "-o", blocker / "x.csv"),
                   str(blocker), "is a file, not a folder")
    one_line_error(run_cli("predict", trained_run, photo_folder, "-o", tmp_path), str(tmp_path), "is a folder")
    bad = run_cli("predict", trained_run, photo_folder, "--batch-size", "0")
    assert bad.returncode == 2 and "--batch-size" in bad.stderr
    assert not list(tmp_path.glob("*.csv*")) or [p.name for p in tmp_path.glob("*.csv*")] == ["x.csv"]
