"""ILSVRC-2012 as downloaded, on a miniature of the official files built from real ILSVRC JPEGs
(tests/ilsvrc_miniature.py): every label and every name against the truth the miniature was
built from; each file alone; the devkit's disagreements one line each; Kaggle's layout; tar
member names."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import ilsvrc_miniature as mini_files
from alexnet import UserError, open_cache, prepare
from alexnet.data.classnames import ilsvrc_classes
from alexnet.data.sources import member_name, open_source
from data_helpers import assert_close_to_pil, dct_factor, reference_square, write_tar

SIZE = 64


@pytest.fixture(scope="module")
def mini(shared_data, tmp_path_factory):
    return mini_files.build(shared_data / "imagenet-sample-500.tar", tmp_path_factory.mktemp("ilsvrc"),
                            classes=6, train_per_class=3, val_per_class=2, test_images=4)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_the_miniature_is_the_official_layout(mini):
    """What the tests rely on: IDs not in sorted order, non-leaf synsets, a tar of tars."""
    import scipy.io
    assert [mini.ids[w] for w in mini.classes] != sorted(mini.ids.values())
    with tarfile.open(mini.files["devkit"]) as tf:
        meta = tf.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()
    synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    assert set(synsets.dtype.names) == set(mini_files.SYNSET_FIELDS)
    assert sum(int(r["num_children"]) > 0 for r in synsets) == 3
    with tarfile.open(mini.files["train"]) as tf:
        assert sorted(m.name for m in tf) == sorted(f"{w}.tar" for w in mini.classes)


def test_official_files_prepare_in_place_with_every_label_and_name(mini, tmp_path, cli):
    """The folder of four files -> train, val and an unlabelled test split: classes in sorted-wnid
    order, names from meta.mat, each train image under its class tar's wnid, each val image under
    the devkit's ID mapped through meta.mat, pixels equal to PIL's own decode of the image the
    miniature put there; nothing extracted, nothing copied."""
    before = sorted(os.listdir(mini.folder))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = cli("prepare", mini.folder, tmp_path / "cache", "--size", SIZE, "--workers", "2",
               env={"TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr
    assert "test 4 (unlabelled)" in proc.stdout
    assert sorted(os.listdir(mini.folder)) == before and os.listdir(scratch) == []
    cache = open_cache(tmp_path / "cache")
    assert cache.classes == mini.classes and cache.class_names == mini.names
    assert cache.meta["ilsvrc2012_ids"] == [mini.ids[w] for w in mini.classes]

    train = cache.split("train")
    assert len(train) == len(mini.train) == 18
    for i, name in enumerate(train.files):
        file, _, member = name.partition(":")
        assert file == "ILSVRC2012_img_train.tar"
        wnid, data = mini.train[member]
        assert cache.classes[train.labels[i]] == wnid
        assert_close_to_pil(train.images[i], reference_square(data, SIZE, dct_factor(data, SIZE)), name)

    val = cache.split("val")
    assert val.files == [f"ILSVRC2012_img_val.tar:{name}" for name, _, _ in mini.val]
    assert [cache.classes[y] for y in val.labels] == [wnid for _, wnid, _ in mini.val]
    for i, (_, _, data) in enumerate(mini.val):
        assert_close_to_pil(val.images[i], reference_square(data, SIZE, dct_factor(data, SIZE)), val.files[i])

    test = cache.split("test")
    assert not cache.labelled("test") and cache.labelled("val")
    assert test.files == [f"ILSVRC2012_img_test.tar:{name}" for name, _ in mini.test]
    assert (test.labels == -1).all()
    # the statistics come from the train split only
    np.testing.assert_allclose(cache.stats["mean_image"], train.images[:].astype(np.float64).mean(0), atol=1e-3)


def test_each_file_works_alone(mini, tmp_path):
    """The train tar alone: the train split, its names from the package's ILSVRC list. The val tar
    needs the devkit: beside it, or given with --labels."""
    source = open_source(str(mini.files["train"]))
    assert list(source.splits) == ["train"] and source.classes == mini.classes
    wnids, names = ilsvrc_classes()
    assert source.class_names == [names[wnids.index(w)] for w in mini.classes]
    assert [source.classes[it.label] for it in source.splits["train"]] == [
        mini.train[it.name][0] for it in source.splits["train"]]

    with pytest.raises(UserError) as err:
        open_source(str(mini.files["val"]))
    assert "ILSVRC2012_img_val.tar" in one_line(err) and "ILSVRC2012_devkit_t12.tar.gz" in one_line(err)
    source = open_source(str(mini.files["val"]), labels=str(mini.files["devkit"]))
    assert list(source.splits) == ["val"] and source.class_names == mini.names
    assert [source.classes[it.label] for it in source.splits["val"]] == [w for _, w, _ in mini.val]

    alone = tmp_path / "devkit-only"
    alone.mkdir()
    os.symlink(mini.files["devkit"], alone / "ILSVRC2012_devkit_t12.tar.gz")
    with pytest.raises(UserError) as err:
        open_source(str(alone))
    assert "devkit alone" in one_line(err)

    # val images extracted into a folder, labelled through the devkit given with --labels
    folder = tmp_path / "val-folder"
    folder.mkdir()
    for name, _, data in mini.val:
        (folder / name).write_bytes(data)
    source = open_source(str(folder), labels=str(mini.files["devkit"]))
    assert source.classes == mini.classes
    assert [source.classes[it.label] for it in source.splits["train"]] == [w for _, w, _ in mini.val]


def _devkit_variant(mini, tmp_path, *, ground_truth=None, leaves=None, drop=None) -> str:
    """The miniature's folder with another devkit: ground truth lines, leaf counts, or a member dropped."""
    folder = tmp_path / "variant"
    folder.mkdir(parents=True)
    for role in ("train", "val"):
        os.symlink(mini.files[role], folder / mini.files[role].name)
    leaves = leaves if leaves is not None else [(mini.ids[w], w, n, 3) for w, n in zip(mini.classes, mini.names, strict=True)]
    k = len(mini.classes)
    inner = [(k + 1, "n00001740", "entity", [k + 2, k + 3]),
             (k + 2, "n00002684", "object", list(range(1, k // 2 + 1))),
             (k + 3, "n00021939", "artifact", list(range(k // 2 + 1, k + 1)))]
    if ground_truth is None:
        ground_truth = "".join(f"{mini.ids[w]}\n" for _, w, _ in mini.val)
    meta = mini_files.meta_mat_bytes(mini_files.synsets_struct(leaves, inner))
    data = mini_files.devkit_bytes(meta, ground_truth, {drop: None} if drop else None)
    (folder / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(data)
    return str(folder)


def test_bad_devkits_are_one_line_each(mini, tmp_path):
    k = len(mini.classes)
    truth = [mini.ids[w] for _, w, _ in mini.val]
    cases = {
        "missing meta.mat": (dict(drop="ILSVRC2012_devkit_t12/data/meta.mat"), ["data/meta.mat"]),
        "missing ground truth": (dict(drop="ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"),
                                 ["ILSVRC2012_validation_ground_truth.txt"]),
        "a label too few": (dict(ground_truth="".join(f"{i}\n" for i in truth[:-1])),
                            [f"{len(truth) - 1:,} labels for {len(truth):,} images"]),
        "an unknown ID": (dict(ground_truth="".join(f"{i}\n" for i in truth[:2] + [k + 1] + truth[3:])),
                          ["ground_truth.txt:3", f"ILSVRC2012_ID {k + 1}"]),
        "a class without its tar": (dict(leaves=[(mini.ids[w], w, n, 3) for w, n in zip(mini.classes, mini.names, strict=True)]
                                         + [(k + 4, "n09999999", "unicorn", 3)]),
                                    ["n09999999.tar", "unicorn", "incomplete"]),
        "a tar without its class": (dict(leaves=[(mini.ids[w], w, n, 3) for w, n in zip(mini.classes[1:], mini.names[1:], strict=True)]),
                                    [f"{mini.classes[0]}.tar", "not a leaf synset"]),
        "a count that differs": (dict(leaves=[(mini.ids[w], w, n, 3 if j else 1300)
                                              for j, (w, n) in enumerate(zip(mini.classes, mini.names, strict=True))]),
                                 [f"{mini.classes[0]}.tar", "3 images", "1,300"]),
    }
    for case, (variant, named) in cases.items():
        folder = _devkit_variant(mini, tmp_path / case.replace(" ", "-"), **variant)
        with pytest.raises(UserError) as err:
            open_source(folder)
        for part in named:
            assert part in one_line(err), (case, str(err.value))


def test_the_devkits_ids_read_as_class_indices_are_refused(mini, tmp_path):
    """Its ground truth as --labels would shift and scramble every label without an error."""
    with tarfile.open(mini.files["devkit"]) as tf:
        data = tf.extractfile("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").read()
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_bytes(data)
    folder = tmp_path / "val"
    folder.mkdir()
    for name, _, jpeg in mini.val:
        (folder / name).write_bytes(jpeg)
    with pytest.raises(UserError) as err:
        open_source(str(folder), labels=str(tmp_path / "ILSVRC2012_validation_ground_truth.txt"))
    assert "1-based ILSVRC2012_IDs" in one_line(err) and "ILSVRC2012_devkit_t12.tar.gz" in one_line(err)


def test_kaggle_layout(mini, tmp_path):
    """Kaggle's ILSVRC: LOC_synset_mapping.txt (class order and names), LOC_val_solution.csv beside
    LOC_train_solution.csv, ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/, test/} with a flat, unlabelled test."""
    root = "ILSVRC/Data/CLS-LOC"
    files = [(f"{root}/train/{w}/{m.split('/')[1]}", data) for m, (w, data) in mini.train.items()]
    files += [(f"{root}/val/{name}", data) for name, _, data in mini.val]
    files += [(f"{root}/test/{name}", data) for name, data in mini.test]
    names = {w: f"{n}, another name" for w, n in zip(mini.classes, mini.names, strict=True)}
    files.append(("LOC_synset_mapping.txt", "".join(f"{w} {names[w]}\n" for w in mini.classes).encode()))
    solution = "ImageId,PredictionString\n" + "".join(
        f"{name[:-5]},{w} 10 20 100 200 {w} 5 5 50 50\n" for name, w, _ in reversed(mini.val))
    files.append(("LOC_val_solution.csv", solution.encode()))
    files.append(("LOC_train_solution.csv", b"ImageId,PredictionString\nx,n00000000 1 2 3 4\n"))
    write_tar(tmp_path / "kaggle.tar", files)
    summary = prepare(tmp_path / "kaggle.tar", tmp_path / "cache", size=32, workers=1, quiet=True)
    assert summary.counts == {"train": 18, "val": 12, "test": 4}
    cache = open_cache(tmp_path / "cache")
    assert cache.classes == mini.classes and cache.class_names == [names[w] for w in mini.classes]
    assert [cache.classes[y] for y in cache.split("val").labels] == [w for _, w, _ in mini.val]
    assert [cache.classes[y] for y in cache.split("train").labels] == [
        f.split("/")[4] for f in cache.split("train").files]
    assert not cache.labelled("test") and (cache.split("test").labels == -1).all()


def test_member_names_lose_the_dot_slash_prefix_and_nothing_else():
    assert member_name("./a") == "a"
    assert member_name("././a/b.jpg") == "a/b.jpg"
    assert member_name(".hidden") == ".hidden"
    assert member_name("./.hidden/x.jpg") == ".hidden/x.jpg"
    assert member_name("../x") == "../x"
    assert member_name("a/./b") == "a/./b"


def test_a_hidden_folder_stays_hidden_whatever_member_kind(shared_data, tmp_path):
    """``./.trash/b.jpg`` as a (broken) hard link is a hidden file, ignored; stripping the characters
    '.' and '/' made it ``trash/b.jpg``, a class of its own with a broken image."""
    with tarfile.open(shared_data / "imagenet-sample-500.tar") as tf:
        member = next(m for m in tf if m.isfile())
        jpeg = tf.extractfile(member).read()
    archive = tmp_path / "hidden.tar"
    with tarfile.open(archive, "w") as tf:
        for name in ("./cat/a.jpg", "./dog/b.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(jpeg)
            tf.addfile(info, io.BytesIO(jpeg))
        link = tarfile.TarInfo("./.trash/c.jpg")
        link.type, link.linkname = tarfile.LNKTYPE, "./gone.jpg"
        tf.addfile(link)
    source = open_source(str(archive))
    assert source.classes == ["cat", "dog"]
    assert (".trash/c.jpg", "hidden file") in source.ignored
    with tarfile.open(tmp_path / "escape.tar", "w") as tf:      # ../x keeps its name and is refused
        for name in ("cat/a.jpg", "../x.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(jpeg)
            tf.addfile(info, io.BytesIO(jpeg))
    with pytest.raises(UserError) as err:
        open_source(str(tmp_path / "escape.tar"))
    assert "../x.jpg" in one_line(err) and "escapes" in one_line(err)


@pytest.mark.slow
def test_the_whole_path_on_the_miniature(mini, tmp_path, cli):
    """docs/imagenet.md for real: the official files -> alexnet prepare (256 px) -> alexnet train
    paper-imagenet under torchrun (2 processes, gloo) -> alexnet eval --views ten on val -> the
    unlabelled test split's predictions in the devkit's submission format and as CSV."""
    cache, runs = tmp_path / "ilsvrc-256", tmp_path / "runs"
    cli("prepare", mini.folder, cache, "--workers", "2", "--quiet", check=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "alexnet", "train", "paper-imagenet", "--data.cache", str(cache),
                           "--train.epochs", "1", "--train.batch_size", "6", "--data.workers", "0",
                           "--train.threads", "1", "--run.out", str(runs), "--run.name", "mini",
                           "--run.progress", "false", "--run.plots", "false"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((runs / "mini" / "summary.json").read_text())
    assert summary["world_size"] == 2
    # the test split has no labels: the final ten-view evaluation runs on val
    assert (summary["test"]["split"], summary["test"]["views"], summary["test"]["count"]) == ("val", "ten", 12)

    proc = cli("eval", runs / "mini", "--data", cache, "--split", "val", "--views", "ten", "--json",
               "--out-dir", tmp_path / "eval-val", "--quiet", "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["count"] == 12 and result["top1_err"] == pytest.approx(summary["test"]["top1_err"])

    proc = cli("eval", runs / "mini", "--data", cache, "--split", "test", "--views", "ten", "--quiet", "--workers", "0")
    assert proc.returncode != 0 and "-o FILE" in proc.stderr and "no labels" in proc.stderr
    for suffix in ("txt", "csv"):
        proc = cli("eval", runs / "mini", "--data", cache, "--split", "test", "--views", "ten", "--quiet",
                   "--workers", "0", "-o", tmp_path / f"test.{suffix}")
        assert proc.returncode == 0, proc.stderr
    submission = [[int(i) for i in ln.split()] for ln in (tmp_path / "test.txt").read_text().splitlines()]
    rows = list(csv.DictReader(open(tmp_path / "test.csv")))
    assert len(submission) == len(rows) == 4
    assert [r["file"] for r in rows] == [f"ILSVRC2012_img_test.tar:{name}" for name, _ in mini.test]
    for line, row in zip(submission, rows, strict=True):
        assert len(line) == 5 and len(set(line)) == 5 and set(line) <= set(mini.ids.values())
        assert line == [mini.ids[row[f"class_{k}"]] for k in range(1, 6)]      # the devkit's IDs, best first
        assert row["name_1"] == mini.names[mini.classes.index(row["class_1"])] and row["label"] == ""
        probs = [float(row[f"probability_{k}"]) for k in range(1, 6)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
