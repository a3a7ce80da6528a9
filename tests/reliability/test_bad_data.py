"""Bad data through ``alexnet prepare``: every case of corpus.py gives its documented outcome.

Documented outcomes (docs/reliability.md): valid files are converted correctly (pixels
checked against an independent reference), warned files are converted *and* listed in
warnings.csv, bad files stop ``prepare`` with one line naming the file (default) or are
skipped and listed in skipped.csv (``--skip-bad``), stray files are ignored and listed
in ignored.csv. Valid images lost: must be 0.
"""

from __future__ import annotations

import csv
import json
import shutil
import tarfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from alexnet.data import open_cache

from .corpus import CLASSES, Corpus, build_corpus, decode_rgb, reference_square
from .helpers import error_lines, one_line_error, pending, record, run, run_many, tiny_config

SIZE = 128
pytestmark = pytest.mark.shared


def _key(case) -> str:
    """The case a corpus file stands for: the plain valid JPEGs are one case, whatever their number."""
    return "plain RGB JPEGs (the corpus's valid base files)" if case.id.startswith("base") else case.id


def _csv_paths(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return {row[0]: row[1] for row in rows[1:]}


def _find(listing: dict[str, str], relpath: str) -> str | None:
    """The reason a CSV gives for ``relpath`` (listings may hold absolute or relative paths)."""
    for path, reason in listing.items():
        if unicodedata.normalize("NFC", path).endswith(unicodedata.normalize("NFC", relpath)):
            return reason
    return None


def check_cache(out: Path, corpus: Corpus, *, skip_bad: bool) -> list[tuple]:
    """Compare a prepared cache with the corpus. Returns [(case, outcome, survived, lost)]."""
    cache = open_cache(out)
    results = []
    assert cache.classes == sorted(CLASSES), cache.classes     # exact Unicode names, sorted order
    skipped, ignored, warned = (_csv_paths(out / n) for n in ("skipped.csv", "ignored.csv", "warnings.csv"))
    rows = {}
    for split_name in cache.splits:
        split = cache.split(split_name)
        for i, name in enumerate(split.files):
            rows[unicodedata.normalize("NFC", name)] = (split, i)

    def row_of(case):
        for name, hit in rows.items():
            if name.endswith(unicodedata.normalize("NFC", case.relpath)):
                return hit
        return None

    expected_train = 0
    for case in corpus.base + corpus.cases:
        hit = row_of(case)
        if case.kind in ("valid", "warn"):
            expected_train += case.relpath.startswith("train/")
            if hit is None:
                results.append((case, "missing from the cache", False, 1))
                continue
            split, i = hit
            got = np.asarray(split.images[i], dtype=np.float64)
            ref = reference_square(case.expected_rgb, cache.size).astype(np.float64)
            diff = float(np.abs(got - ref).mean())
            label_ok = cache.classes[int(split.labels[i])] == case.label
            ok = diff <= case.tol and label_ok
            outcome = f"converted (mean |diff| {diff:.2f} <= {case.tol})" if ok else \
                f"WRONG pixels (mean |diff| {diff:.2f} > {case.tol}) or label ({label_ok})"
            if ok and case.id.startswith("exif"):
                # The orientation must be applied: the unrotated pixels are far from what we got.
                raw = reference_square(decode_rgb((corpus.root / case.relpath).read_bytes()), cache.size)
                far = float(np.abs(got - raw).mean())
                ok = far > 4 * case.tol
                outcome += f"; unrotated would differ by {far:.1f}"
            if case.kind == "warn":
                reason = _find(warned, case.relpath)
                ok = ok and reason is not None
                outcome += f"; warning: {reason}"
            results.append((case, outcome, ok, 0 if ok else 1))
        elif case.kind == "bad":
            reason = _find(skipped, case.relpath)
            ok = hit is None and reason is not None and any(w in reason.lower() for w in case.reason_words)
            results.append((case, f"skipped: {reason}" if reason else "NOT listed in skipped.csv"
                            + (" and loaded into the cache" if hit else ""), ok, 0))
        elif case.kind == "stray":
            reason = _find(ignored, case.relpath)
            ok = hit is None and reason is not None
            results.append((case, f"ignored: {reason}" if reason else "NOT listed in ignored.csv", ok, 0))
    # Nothing else slipped in: the cache holds exactly the valid images.
    assert len(cache.split("train")) == expected_train, (len(cache.split("train")), expected_train)
    assert cache.meta.get("skipped", 0) == len(skipped) and (len(skipped) > 0) == skip_bad
    return results


def test_prepare_skip_bad_whole_corpus(corpus, tmp_path):
    """``prepare --skip-bad`` on the whole corpus: every valid file converted, every bad
    file skipped and listed with its reason, every stray file ignored and listed."""
    out = tmp_path / "cache"
    proc = run("prepare", corpus.root, out, "--size", SIZE, "--skip-bad", "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    n_bad, n_stray = len(corpus.of_kind("bad")), len(corpus.of_kind("stray"))
    summary = proc.stdout.strip().splitlines()[-1]
    assert f"skipped {n_bad} bad" in summary and f"ignored {n_stray} stray" in summary, summary
    results = check_cache(out, corpus, skip_bad=True)
    for case, outcome, ok, lost in results:
        record("bad data", case.id, command="prepare --skip-bad", expected=case.expect if case.kind != "bad"
               else "skipped and listed in skipped.csv", outcome=outcome, survived=ok, lost=lost, detail=case.what, key=_key(case))
    failures = [f"{c.id}: {o}" for c, o, ok, _ in results if not ok]
    assert not failures, "\n".join(failures)
    assert sum(lost for *_, lost in results) == 0


def test_prepare_default_one_line_per_bad_file(corpus, shared_data, tmp_path):
    """Default policy: each bad file alone in an otherwise good dataset stops ``prepare``
    with exactly one line naming the file and the problem (exit 2), and leaves no cache
    behind. The good-files-only corpus prepares cleanly with the default policy."""
    bad = corpus.of_kind("bad")
    argvs, outs = [], []
    for case in bad:
        root = tmp_path / case.id
        build_corpus(root, shared_data, per_class_train=1, per_class_val=1, include={case.id})
        outs.append(tmp_path / f"{case.id}.cache")
        argvs.append(["prepare", root, outs[-1], "--size", "32", "--workers", "1", "--quiet"])
    # The same corpus without its bad files: default policy, must succeed with everything converted.
    clean = tmp_path / "clean"
    shutil.copytree(corpus.root, clean, symlinks=True)
    for case in bad:
        (clean / case.relpath).unlink()
    clean_corpus = Corpus(clean, [c for c in corpus.cases if c.kind != "bad"], corpus.base)
    argvs.append(["prepare", clean, tmp_path / "clean.cache", "--size", SIZE, "--workers", "1", "--quiet"])

    results = run_many(argvs)
    failures = []
    for case, out, res in zip(bad, outs, results[:len(bad)], strict=True):
        problem = one_line_error(res["rc"], res["stderr"], Path(case.relpath).name, crash=res["crash"])
        line = (res["stderr"].strip().splitlines() or [""])[-1]
        if problem is None and not any(w in line.lower() for w in case.reason_words):
            problem = f"reason not recognisable (expected one of {case.reason_words}): {line}"
        if problem is None and out.exists():
            problem = f"a cache folder was left behind: {sorted(p.name for p in out.iterdir())}"
        record("bad data", case.id, command="prepare (default)", expected="one line naming the file, exit 2",
               outcome=problem or line, survived=problem is None, detail=case.what, key=_key(case))
        if problem:
            failures.append(f"{case.id}: {problem}")

    res = results[-1]
    assert res["rc"] == 0 and not res["crash"], res["stderr"][-3000:] + (res["crash"] or "")
    for case, outcome, ok, lost in check_cache(tmp_path / "clean.cache", clean_corpus, skip_bad=False):
        if case.kind != "valid" or case.id.startswith("base"):
            continue
        record("bad data", case.id, command="prepare (default)", expected=case.expect, outcome=outcome,
               survived=ok, lost=lost, detail=case.what, key=_key(case))
        if not ok:
            failures.append(f"{case.id}: {outcome}")
    assert not failures, "\n".join(failures)


EMPTY_CLASSES = {
    "empty_class_folder": ("a class folder with nothing in it", "zebra", {}),
    "strays_only_class_folder": ("a class folder holding only .DS_Store and a text file", "yak",
                                 {".DS_Store": b"\0\0\0\1Bud1", "notes.txt": b"photos to come\n"}),
}


def test_prepare_empty_class_folder(corpus, shared_data, tmp_path):
    """A class folder with no images (nothing in it, or only stray and non-image files) is
    never dropped silently, in a folder or a .tar.gz of it: default -> one line naming it
    (exit 2); ``--skip-bad`` -> the run continues and the folder is listed in skipped.csv.
    Every case and container in one ``run_many`` (one interpreter start)."""
    sources, argvs = {}, []
    for case_id, (_what, name, files) in EMPTY_CLASSES.items():
        root = tmp_path / case_id / "data"
        build_corpus(root, shared_data, per_class_train=1, per_class_val=1, include=set())
        (root / "train" / name).mkdir()
        for fn, data in files.items():
            (root / "train" / name / fn).write_bytes(data)
        archive = tmp_path / case_id / "data.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(root, arcname="data")
        for container, src in (("folder", root), ("tar.gz", archive)):
            pending("bad data", f"{case_id} ({container})", command="prepare (default / --skip-bad)",
                    expected="one line naming the folder / listed in skipped.csv", key=case_id)
            out = tmp_path / case_id / container
            sources[(case_id, container)] = out
            argvs += [["prepare", src, f"{out}-a", "--size", "32", "--workers", "1", "--quiet"],
                      ["prepare", src, f"{out}-b", "--size", "32", "--workers", "1", "--quiet", "--skip-bad"]]
    results = run_many(argvs)
    failures = []
    for k, ((case_id, container), out) in enumerate(sources.items()):
        what, name, _ = EMPTY_CLASSES[case_id]
        res_default, res_skip = results[2 * k], results[2 * k + 1]
        problem = one_line_error(res_default["rc"], res_default["stderr"], f"{name}: class folder holds no images",
                                 crash=res_default["crash"])
        listed = _find(_csv_paths(Path(f"{out}-b") / "skipped.csv"), name)
        skip_ok = res_skip["rc"] == 0 and listed is not None and "empty class folder" in listed
        record("bad data", f"{case_id} ({container})", command="prepare (default / --skip-bad)",
               expected="one line naming the folder / listed in skipped.csv", survived=problem is None and skip_ok,
               outcome=(problem or "one line") + ("; listed with --skip-bad" if skip_ok else "; NOT listed with --skip-bad"),
               detail=what, key=case_id)
        if problem or not skip_ok:
            failures.append(f"{case_id} in a {container}: {problem or ''} {res_skip['stdout'] + res_skip['stderr']}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_train_eval_predict_on_the_corpus(corpus, tmp_path):
    """The same corpus through ``train``, ``eval`` and ``predict`` (one subprocess, six commands):

    * ``train`` / ``eval`` pointed at the corpus *folder* prepare it with the default
      policy: one line naming a bad file, exit 2, no traceback;
    * ``train`` on the ``--skip-bad`` cache works, and ``eval`` of that checkpoint on it
      counts exactly the valid images;
    * ``predict`` with every valid, warned and bad file: one line per bad file naming
      it, a prediction (top-k, k = 3 classes here) for every other file, exit 1 (some failed).
    """
    cache = tmp_path / "cache32"
    runs = tmp_path / "runs"
    config = tiny_config(tmp_path / "corpus.toml", cache, runs, epochs=1, batch=8, workers=0,
                         extra='[schedule]\nkind = "constant"\n')
    bad_names = [Path(c.relpath).name for c in corpus.of_kind("bad")]
    files = [corpus.root / c.relpath for c in corpus.base + corpus.of_kind("valid", "warn", "bad")]
    results = run_many([
        ["prepare", corpus.root, cache, "--size", "32", "--skip-bad", "--workers", "1", "--quiet"],
        ["train", config, "--run.name", "ok", "--data.test_split", ""],
        ["train", config, "--run.name", "from-folder", "--data.cache", tmp_path / "new-cache",
         "--data.source", corpus.root],
        ["eval", runs / "ok", "--data", cache, "--split", "train", "--json", "--workers", "0"],
        ["eval", runs / "ok", "--data", corpus.root, "--workers", "0"],
        ["predict", runs / "ok", *files, "--json"],
    ], env={"ALEXNET_CACHE": str(tmp_path / "cache-home")})
    prep, train_ok, train_folder, eval_ok, eval_folder, pred = results
    assert prep["rc"] == 0, prep["stderr"][-2000:]
    assert train_ok["rc"] == 0 and not train_ok["crash"], train_ok["stderr"][-3000:] + (train_ok["crash"] or "")
    failures = []

    for name, res in (("train", train_folder), ("eval", eval_folder)):
        problem = one_line_error(res["rc"], res["stderr"], crash=res["crash"])
        line = (error_lines(res["stderr"]) or [""])[0]
        if problem is None and not any(b in line for b in bad_names):
            problem = f"the line names none of the bad files: {line}"
        record("bad data", f"{name} on the corpus folder", command=f"{name} (default policy)",
               expected="one line naming a bad file, exit 2", outcome=problem or line, survived=problem is None)
        if problem:
            failures.append(f"{name} on the folder: {problem}")

    n_valid = len(corpus.valid_train)
    got = None
    if eval_ok["rc"] == 0:
        got = json.loads(eval_ok["stdout"][eval_ok["stdout"].index("{"):])["count"]
    ok = got == n_valid
    record("bad data", "eval on the --skip-bad cache", command="eval", expected=f"counts all {n_valid} valid images",
           outcome=f"counted {got}", survived=ok, lost=0 if ok else n_valid - (got or 0))
    if not ok:
        failures.append(f"eval counted {got} images, expected {n_valid}: {eval_ok['stderr'][-500:]}")

    # predict: one line per bad file, a top-5 for every other file, the rest still run.
    lines = error_lines(pred["stderr"])
    out = json.loads(pred["stdout"][pred["stdout"].index("["):]) if "[" in pred["stdout"] else []
    by_path = {r["path"]: r for r in out}
    lost = 0
    for case in corpus.base + corpus.of_kind("valid", "warn", "bad"):
        path = str(corpus.root / case.relpath)
        r = by_path.get(path, {})
        if case.kind == "bad":
            named = [l for l in lines if Path(case.relpath).name in l]
            ok = len(named) == 1 and "top" not in r
            outcome = named[0] if named else "no line naming it"
        else:
            ok = len(r.get("top", [])) == len(CLASSES) and not any(Path(case.relpath).name in l for l in lines)
            outcome = f"top-{len(CLASSES)} {[t['class'] for t in r.get('top', [])]}" if ok else f"NOT predicted: {r}"
            lost += not ok
        if not case.id.startswith("base"):
            record("bad data", case.id, command="predict", expected="one line naming the file" if case.kind == "bad"
                   else "top classes predicted", outcome=outcome, survived=ok, lost=0 if (ok or case.kind == "bad") else 1,
                   detail=case.what, key=_key(case))
        if not ok:
            failures.append(f"predict {case.id}: {outcome}")
    if pred["rc"] != 1 or pred["crash"] or len(lines) != len(corpus.of_kind("bad")):
        failures.append(f"predict: exit {pred['rc']} (expected 1), {len(lines)} error lines for "
                        f"{len(corpus.of_kind('bad'))} bad files, crash: {pred['crash']}")
    assert lost == 0
    assert not failures, "\n".join(failures)
