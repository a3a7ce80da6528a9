"""``alexnet bench`` as a real subprocess: tiny sizes, well-formed JSON, the allocator in effect.

No timing assertions: only that every benchmark ran side by side and reported
numbers that are structurally sane (positive rates; ratios and rates recomputed from the
raw per-round times the report keeps).
"""

from __future__ import annotations

import json
import statistics

import pytest

from alexnet import runtime


@pytest.mark.slow
def test_bench_quick_smoke_writes_wellformed_json(cli, tmp_path):
    out = tmp_path / "bench.json"
    proc = cli("bench", "--quick", "--batch", "2", "--image-size", "63", "--rounds", "1",
               "--only", "limits,lrn,train,infer,scaling", "-o", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert {"machine", "settings", "rows", "scaling", "limits_gflops", "notes", "elapsed_s"} <= set(report)
    names = {r["name"] for r in report["rows"]}
    assert {"matmul_float32", "lrn_forward_conv1", "lrn_forward+backward_conv2", "train_step_alexnet",
            "inference_alexnet", "inference_alexnet_owt"} <= names
    for row in report["rows"]:
        assert row["ours"] > 0
        if "reference" in row:
            assert row["reference"] > 0 and row["ratio"] > 0
            # The ratio and the rates are what the raw timings say, recomputed here from the
            # per-round times the report keeps (median of each side; items = batch here).
            assert len(row["ours_times_s"]) == len(row["reference_times_s"]) >= 1
            ratio = statistics.median(row["reference_times_s"]) / statistics.median(row["ours_times_s"])
            assert row["ratio"] == pytest.approx(ratio, rel=1e-9)
            assert row["ours"] * statistics.median(row["ours_times_s"]) == pytest.approx(
                row["reference"] * statistics.median(row["reference_times_s"]), rel=1e-9)
    train = [r for r in report["rows"] if r["name"] == "train_step_alexnet"]
    assert train and all("gflops" in r and "fraction_of_limit" in r for r in train)
    # --quick with --batch 2 --image-size 63: batches (max(2, 2 // 2), 2) and sizes (63, 63) collapse to one point.
    assert [(p["batch"], p["size"]) for p in report["scaling"]] == [(2, 63)]
    assert all(p["rss_peak_mb"] > 0 and p["images_per_s"] > 0 for p in report["scaling"])
    # The path training takes by default is its own row, running what the trainer would choose here.
    default = {r["name"]: r for r in report["rows"] if r.get("variant") == "default"}
    assert {"train_step_alexnet", "inference_alexnet", "inference_alexnet_owt"} <= set(default)
    flags = open("/proc/cpuinfo").read()
    native = " avx512_bf16" in flags or " amx_bf16" in flags
    expected = "bfloat16 autocast, channels-last" if native else "float32, channels-last"
    assert default["train_step_alexnet"]["fast_path"].startswith(expected)
    assert default["train_step_alexnet"]["precision"] == ("bfloat16" if native else "float32")
    # The table went to stdout too, under a header naming the CPU and its vector extensions.
    assert "train_step_alexnet" in proc.stdout and "ratio" in proc.stdout
    header = proc.stdout.splitlines()[0]
    assert header.startswith(f"machine: {report['machine']['cpu']} (")
    assert all(x in header for x in report["machine"]["vector_extensions"])
    assert ("avx2" in report["machine"]["vector_extensions"]) == (" avx2" in flags)
    # Our entry point put the allocator in place for the suite's own process.
    expected = "jemalloc" if runtime.find_jemalloc() else "system"
    assert report["settings"]["suite_allocator"] == expected


def test_bench_opt_out_and_bad_options(cli, tmp_path):
    out = tmp_path / "b.json"
    out = tmp_path / "new" / "b.json"         # -o creates its folder (docs/cli.md)
    proc = cli("bench", "--only", "limits", "-o", out, "--json", env={"ALEXNET_ALLOCATOR": "system"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["settings"]["suite_allocator"] == "system"
    assert json.loads(proc.stdout) == json.loads(out.read_text())       # --json: standard output is the report
    bad = cli("bench", "--only", "nonsense")
    assert bad.returncode == 2 and bad.stderr.startswith("alexnet: error:") and "--only" in bad.stderr
    assert "nonsense" in bad.stderr and "Traceback" not in bad.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = cli("bench", "-o", blocker / "x.json")
    assert bad.returncode == 2 and str(blocker) in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.shared
def test_bench_memory_rows_time_each_mechanism_with_and_without(cli, tmp_path, shared_data):
    """The allocator rows run the same training step in workers that differ only in the allocator
    (each really runs the one it is named after), and the loader rows time fresh against reused outputs."""
    out = tmp_path / "memory.json"
    proc = cli("bench", "--only", "memory", "--quick", "--batch", "2", "--image-size", "63", "--rounds", "1",
               "-o", out, env={"ALEXNET_SHARED": str(shared_data.parent)}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    workers = report["memory_workers"]
    assert workers["system"]["allocator"] == "system" and not workers["system"]["glibc_tunables"]
    assert workers["glibc"]["allocator"] == "system" and "glibc.malloc.hugetlb=1" in workers["glibc"]["glibc_tunables"]
    if runtime.find_jemalloc():
        assert workers["jemalloc"]["allocator"] == "jemalloc" and "dirty_decay_ms:-1" in workers["jemalloc"]["malloc_conf"]
    rows = {(r["name"], r["variant"]): r for r in report["rows"]}
    expected = {("train_step_allocator", "glibc"), ("loader_output_reuse_system", "reused")}
    if runtime.find_jemalloc():
        expected |= {("train_step_allocator", "jemalloc"), ("loader_output_reuse_jemalloc", "reused")}
    assert set(rows) == expected
    for row in rows.values():
        assert row["ours"] > 0 and row["reference"] > 0 and row["group"] == "memory"
    assert rows[("train_step_allocator", "glibc")]["unit"] == "images/s"


def test_the_command_knows_every_group_of_the_suite():
    """`alexnet bench --only` declares the suite's groups without importing it (torch): the same list."""
    from alexnet.perf import commands, suite
    assert commands.GROUPS == suite.GROUPS
