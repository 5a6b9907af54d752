"""``blendtorch-ray bench all`` (benchmarks/all.py): one sequential run into one report."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli() -> str:
    return os.path.join(os.path.dirname(sys.executable), "blendtorch-ray")


def test_unknown_benchmark_in_only_is_refused_with_the_choices(tmp_path):
    run = subprocess.run([_cli(), "bench", "all", "--only", "transport,nope", "--out", str(tmp_path / "r.md")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "--only: no benchmark nope; choose from transport," in run.stderr
    assert not (tmp_path / "r.md").exists()


@pytest.mark.slow
@pytest.mark.blender
def test_bench_all_runs_transport_and_reports_a_failure(tmp_path):
    """transport with small arguments lands in the report with its table (memcpy rows
    included), the date and the load; a benchmark given bad arguments is reported as failed,
    with its stderr, and the exit code says so."""
    out = tmp_path / "RESULTS.md"
    run = subprocess.run(
        [_cli(), "bench", "all", "--only", "transport,startup", "--settle", "0", "--out", str(out),
         "--args", "transport=--items 100 --repeat 1", "--args", "startup=--no-such-flag"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    report = out.read_text()
    assert report.startswith("# Benchmark results")
    assert "started 20" in report and "cores" in report and "ray " in report
    assert "`python benchmarks/transport.py --items 100 --repeat 1`: ok in" in report
    assert " memcpy, streaming 64 MiB of frames (one copy: the limit) |" in report
    assert " full path, same-node ring (default) |" in report
    assert "`python benchmarks/startup.py --no-such-flag`: failed (exit code 2)" in report
    assert "unrecognized arguments: --no-such-flag" in report
    assert "(1 failed)" in run.stdout


def test_merge_keeps_the_other_benchmarks_sections(tmp_path):
    """--merge reruns one benchmark and keeps the other sections of the earlier report, in
    suite order; without it the report holds only what ran."""
    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark results\n\nold header\n\n## transport: x\n\nOLD TRANSPORT TABLE\n\n"
                   "## startup: y\n\nOLD STARTUP TABLE\n\n## memory: z\n\nOLD MEMORY TABLE\n")
    cmd = [_cli(), "bench", "all", "--only", "startup", "--settle", "0", "--out", str(out),
           "--args", "startup=--no-such-flag"]
    subprocess.run([*cmd, "--merge"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    report = out.read_text()
    assert "OLD TRANSPORT TABLE" in report and "OLD MEMORY TABLE" in report
    assert "OLD STARTUP TABLE" not in report and "`python benchmarks/startup.py --no-such-flag`: failed" in report
    assert report.index("## transport") < report.index("## startup") < report.index("## memory")
    assert "Merged: startup from this run" in report
    subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "OLD TRANSPORT TABLE" not in out.read_text()
