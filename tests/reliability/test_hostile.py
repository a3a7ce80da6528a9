"""Hostile files: a stranger's checkpoint or dataset must never run code or write outside its folder.

* Pickles carrying a ``__reduce__`` payload (``os.mkdir(marker)``: if the marker folder
  exists afterwards, code from the file ran) posing as a checkpoint (raw pickle named
  ``last.safetensors`` inside a run folder; a ``torch.save`` zip named ``model.pt``) and
  as a CIFAR-10 python batch inside an otherwise valid ``cifar-10-python.tar.gz``
  (payload in a data batch; payload in ``batches.meta``). Control: the same tarball
  without a payload prepares, pixel for pixel.
* A dataset tar whose members reach outside the target: ``../`` paths, an absolute
  path, symlinks out of the archive (relative and absolute) and a hard link to
  ``/etc/passwd``; a real photo waits outside so that following a link would succeed.
Expected: one line naming the file or member (exit 2), the code never runs, nothing
is written outside the output folder, and no outside bytes reach the cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alexnet.data import open_cache
from alexnet.data.cache import read_cache_meta
from alexnet.errors import UserError

from .corpus import cifar_python_tar, decode_rgb, escaping_tar, pickle_payload, reference_square, torch_zip_payload
from .helpers import error_lines, one_line_error, record, run_many, tiny_config

pytestmark = pytest.mark.shared


def test_pickled_code_never_runs(small_cache, shared_data, tmp_path):
    marker = tmp_path / "PWNED"
    # A run folder (a real config) whose checkpoint is a raw pickle with a payload.
    evil_run = tmp_path / "evil-run"
    evil_run.mkdir()
    tiny_config(evil_run / "config.toml", small_cache, tmp_path)
    (evil_run / "last.safetensors").write_bytes(pickle_payload(marker))
    # A torch.save zip whose data.pkl carries the payload.
    torch_file = tmp_path / "model.pt"
    torch_zip_payload(marker, torch_file)
    # CIFAR-10 python tarballs: payload in a data batch, payload in batches.meta, and the clean control.
    evil_batch, evil_meta, good = tmp_path / "evil-batch.tar.gz", tmp_path / "evil-meta.tar.gz", tmp_path / "good.tar.gz"
    cifar_python_tar(evil_batch, shared_data, payload_marker=marker, payload_in="data_batch_1")
    cifar_python_tar(evil_meta, shared_data, payload_marker=marker, payload_in="batches.meta")
    arrays = cifar_python_tar(good, shared_data)
    image = shared_data / "cifar10-jpg.tar.gz"     # any real file for predict; it must not get that far
    cases = [
        ("pickle as last.safetensors", "eval", ["eval", evil_run, "--data", small_cache], "last.safetensors"),
        ("pickle as last.safetensors", "predict", ["predict", evil_run / "last.safetensors", image], "last.safetensors"),
        ("pickle as last.safetensors", "train --resume", ["train", "--resume", evil_run], "last.safetensors"),
        ("torch.save zip with payload (model.pt)", "eval", ["eval", torch_file, "--data", small_cache], "model.pt"),
        ("torch.save zip with payload (model.pt)", "predict", ["predict", torch_file, image], "model.pt"),
        ("CIFAR python batch with payload", "prepare", ["prepare", evil_batch, tmp_path / "c1", "--size", "native"],
         "data_batch_1"),
        ("CIFAR batches.meta with payload", "prepare", ["prepare", evil_meta, tmp_path / "c2", "--size", "native"],
         "batches.meta"),
    ]
    results = run_many([argv for *_, argv, _ in cases] + [["prepare", good, tmp_path / "good", "--size", "native"]])
    failures = []
    for (what, command, _, name), res in zip(cases, results[:len(cases)], strict=True):
        problem = one_line_error(res["rc"], res["stderr"], name, crash=res["crash"])
        ran = marker.exists()
        if ran:
            problem = "THE PAYLOAD RAN" + (f"; {problem}" if problem else "")
            marker.rmdir()
        line = (error_lines(res["stderr"]) or ["-"])[0]
        record("hostile", what, command=command, expected="refused with one line; code never runs",
               outcome=problem or line, survived=problem is None)
        if problem:
            failures.append(f"{what} via {command}: {problem}")

    # Control: the clean tarball in the same format prepares, pixel for pixel (so the refusals
    # above are about the payload, not about a format the reader does not understand).
    res = results[-1]
    assert res["rc"] == 0, res["stderr"][-2000:] + (res["crash"] or "")
    cache = open_cache(tmp_path / "good")
    same = all(np.array_equal(np.asarray(cache.split(s).images), arrays[s]) and
               np.array_equal(cache.split(s).labels, arrays[f"{s}_labels"]) for s in ("train", "test"))
    record("hostile", "clean CIFAR python tarball (control)", command="prepare", expected="converted exactly",
           outcome="identical pixels and labels" if same else "DIFFERENT", survived=same)
    assert same
    assert not failures, "\n".join(failures)


ESCAPES = ("dotdot", "absolute", "symlink_out", "symlink_abs", "hardlink_abs")
# Members whose *path* escapes ('..', absolute) are never benign: the whole archive is refused,
# also with --skip-bad. Links may be benign (deduplicated files): they are bad files like any other.
REFUSE_ARCHIVE = ("dotdot", "absolute")


@pytest.fixture(scope="module")
def escape_results(shared_data, tmp_path_factory):
    """Each hostile member alone in an otherwise valid dataset tar (default policy), and all
    of them in one tar (``--skip-bad``); every ``prepare`` in one subprocess."""
    tmp = tmp_path_factory.mktemp("escape")
    outside = tmp / "outside"
    tars = {case: tmp / f"{case}.tar" for case in ESCAPES}
    members = {case: escaping_tar(tars[case], shared_data, outside, members=(case,))[case] for case in ESCAPES}
    escaping_tar(tmp / "links.tar", shared_data, outside, members=tuple(c for c in ESCAPES if c not in REFUSE_ARCHIVE))
    escaping_tar(tmp / "slip.tar", shared_data, outside, members=REFUSE_ARCHIVE)
    work = tmp / "work"
    work.mkdir()
    before = {p for p in tmp.rglob("*")}
    results = run_many([["prepare", tars[c], work / c, "--size", "32", "--workers", "1", "--quiet"] for c in ESCAPES]
                       + [["prepare", tmp / name, work / name, "--size", "32", "--workers", "1", "--quiet",
                           "--skip-bad"] for name in ("links.tar", "slip.tar")])
    written_outside = sorted(str(p) for p in set(tmp.rglob("*")) - before if work not in p.parents)
    return {"members": members, "default": dict(zip(ESCAPES, results[:-2], strict=True)), "skip_links": results[-2],
            "skip_slip": results[-1], "work": work,
            "outside": outside, "written_outside": written_outside}


@pytest.mark.parametrize("case", ESCAPES)
def test_archive_member_escaping_is_refused(escape_results, case):
    """Default policy: one line naming the member (exit 2). ``--skip-bad``: a link member is
    skipped and listed in skipped.csv and never becomes an image; a member whose path
    escapes makes the whole archive refused with one line naming it."""
    r = escape_results
    member, res = r["members"][case], r["default"][case]
    problem = one_line_error(res["rc"], res["stderr"], Path(member).name, crash=res["crash"])
    line = (error_lines(res["stderr"]) or [""])[0]
    record("hostile", f"tar member: {case} ({member if case != 'absolute' else 'absolute path'})",
           command="prepare (default)", expected="refused with one line naming the member",
           outcome=problem or line, survived=problem is None, key=f"tar member: {case}")
    skip_ok = False
    if case in REFUSE_ARCHIVE:
        res = r["skip_slip"]
        skip_ok = one_line_error(res["rc"], res["stderr"], crash=res["crash"]) is None and any(
            Path(m).name in (error_lines(res["stderr"]) or [""])[0] for c, m in r["members"].items()
            if c in REFUSE_ARCHIVE)
    elif r["skip_links"]["rc"] == 0:
        cache = open_cache(r["work"] / "links.tar")
        listed = (r["work"] / "links.tar" / "skipped.csv").read_text(encoding="utf-8")
        in_cache = any(Path(member).name in f for s in cache.splits for f in cache.split(s).files)
        skip_ok = Path(member).name in listed and not in_cache
    expected = "archive refused with one line" if case in REFUSE_ARCHIVE else "skipped and listed, never read"
    record("hostile", f"tar member: {case}", command="prepare --skip-bad", expected=expected,
           outcome=expected if skip_ok else "NOT refused (kept as an image)", survived=skip_ok)
    assert problem is None, problem
    assert skip_ok, f"--skip-bad kept {member} or did not refuse/list it"


def test_archive_never_writes_or_reads_outside(escape_results):
    """Nothing appears outside the output folders, and the photo planted outside the archive
    (where the links point) never reaches a cache."""
    r = escape_results
    outside_square = reference_square(decode_rgb((r["outside"] / "outside.JPEG").read_bytes()), 32).astype(float)
    leaked = []
    for folder in r["work"].iterdir():
        try:
            cache = open_cache(folder)
        except UserError:
            # A refused run leaves no cache, so nothing can leak from it; but a folder that
            # says it is a complete cache and does not open is a failure, not "no leak".
            # (Any other exception is a bug and fails the test.)
            if (read_cache_meta(str(folder)) or {}).get("complete"):
                leaked.append(f"{folder.name}: complete cache that does not open")
            continue
        for s in cache.splits:
            for i, img in enumerate(cache.split(s).images):
                if float(np.abs(np.asarray(img, dtype=float) - outside_square).mean()) < 6:
                    leaked.append(f"{folder.name}:{cache.split(s).files[i]}")
    record("hostile", "tar: writes outside the target", command="prepare", expected="none",
           outcome=f"{r['written_outside']}" if r["written_outside"] else "none", survived=not r["written_outside"])
    record("hostile", "tar: bytes from outside the archive in the cache", command="prepare", expected="none",
           outcome=f"{leaked}" if leaked else "none", survived=not leaked)
    assert not r["written_outside"]
    assert not leaked
