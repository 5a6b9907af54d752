"""Every benchmark behind the README's tables, in one quiet sequential run, into one report.

    python benchmarks/all.py [--only transport,render] [--out benchmarks/RESULTS.md]
    blendtorch-ray bench all   # the same, from a source checkout

Runs each benchmark with the arguments the README names, one after the other (never two at
once: they would share the cores), each in its own interpreter and bounded by a timeout, and
writes a markdown report with the date, the machine (cores, memory, Blender and library
versions), the load average before and after each benchmark, its command line and its whole
output. The README's tables are copied from that report, which sits beside it in the
repository (`benchmarks/RESULTS.md`).

A "quiet" run needs a quiet machine: the load average is printed before each benchmark, and
the run waits up to ``--settle`` seconds for it to fall under ``--quiet-load`` (per core) first.
A benchmark that fails or times out is reported as such, with its output, and the run goes on.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Bench:
    """One benchmark of the report: its script, its arguments and its time budget."""

    name: str
    """Script name in ``benchmarks/`` without ``.py``."""
    args: tuple[str, ...]
    """Arguments (those the README names for its table)."""
    timeout_s: float
    """Seconds the run may take before it is stopped and reported as timed out."""
    what: str
    """One line: what the README table shows."""


SUITE: tuple[Bench, ...] = (
    Bench("transport", ("--items", "1500", "--repeat", "3"), 900, "transport ceiling vs plain pyzmq and memcpy"),
    Bench("render", ("--blender", "bpy,blender", "--frames", "100", "--repeat", "3"), 1800,
          "render + stream vs render-only on both Blenders"),
    Bench("startup", ("--repeat", "3"), 600, "time to first batch vs ray.init() alone"),
    Bench("epochs", ("--repeat", "3"), 1200, "what an epoch boundary costs, kept vs reopened streams"),
    Bench("memory", ("--pause", "30", "--items", "100"), 600, "RSS of driver, actors and Blenders"),
    Bench("env_steps", ("--blender", "bpy,blender", "--steps", "2000", "--repeat", "5"), 1800,
          "env steps/s vs a bare Blender floor"),
    Bench("passes", ("--width", "320", "--height", "240", "--frames", "5"), 1200, "cost of each render pass"),
    Bench("compression", ("--frames", "20",), 900, "encode= codecs: bytes, ms, frames/s per link"),
    Bench("replay", (), 900, "replay rates vs the live stream"),
    Bench("viewport", (), 600, "viewport renderer vs Renderer.render()"),
    Bench("cross_node", (), 1200, "cross-node path vs a bare tcp pair"),
    Bench("scaling", (), 1800, "items/s, CPU per item and bytes between nodes as the cluster grows"),
)
"""The benchmarks of the README, in the order they run."""


def _versions() -> str:
    """One line of the library and Blender versions the run used."""
    parts = [f"Python {platform.python_version()}"]
    for mod in ("ray", "torch", "zmq", "numpy", "gymnasium"):
        try:
            m = __import__(mod)
            parts.append(f"{mod} {getattr(m, '__version__', '?')}")
        except Exception:  # noqa: BLE001 - a missing library is reported, not fatal
            parts.append(f"{mod} missing")
    try:
        out = subprocess.run(["blender", "--version"], capture_output=True, text=True, timeout=60).stdout
        parts.append(out.splitlines()[0].strip() + " binary" if out else "no blender binary")
    except (OSError, subprocess.SubprocessError):
        parts.append("no blender binary")
    try:
        from importlib.metadata import version

        parts.append(f"bpy {version('bpy')}")
    except Exception:  # noqa: BLE001
        parts.append("bpy missing")
    return ", ".join(parts)


def _wait_quiet(limit_per_core: float, settle_s: float) -> float:
    """Wait up to ``settle_s`` for the 1-minute load average per core to fall under
    ``limit_per_core``; return the load average when the wait ends."""
    cores = os.cpu_count() or 1
    deadline = time.monotonic() + settle_s
    while os.getloadavg()[0] / cores > limit_per_core and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def run(benches: list[Bench], out_path: str, quiet_load: float, settle_s: float, extra: dict,
        merge: bool = False) -> int:
    """Run ``benches`` one after the other and write the report to ``out_path``.

    With ``merge``, the sections of the other benchmarks in an existing report at ``out_path``
    are kept (in suite order), with a line saying when the report was merged.

    Returns the number of benchmarks that failed or timed out."""
    kept = _sections(out_path) if merge else {}
    started = datetime.datetime.now(datetime.timezone.utc)
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `blendtorch-ray bench all` (`python benchmarks/all.py`), started "
        f"{started:%Y-%m-%d %H:%M} UTC, one benchmark at a time.",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, {platform.platform()}.",
        f"Versions: {_versions()}.",
        "",
        "Compare the ratios inside one table, not absolute numbers across tables or runs: the",
        "machine is shared, and the load average is printed before and after each benchmark.",
    ]
    failed = 0
    for b in benches:
        args = list(extra.get(b.name, b.args))
        cmd = [sys.executable, os.path.join(HERE, f"{b.name}.py"), *args]
        shown = " ".join(["python", f"benchmarks/{b.name}.py", *args])
        if not os.path.exists(cmd[1]):
            lines += ["", f"## {b.name}", "", f"skipped: benchmarks/{b.name}.py is not in this checkout."]
            continue
        load0 = _wait_quiet(quiet_load, settle_s)
        print(f"[bench all] {shown}  (load {load0:.2f})", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=b.timeout_s, cwd=os.path.dirname(HERE))
            status = "ok" if proc.returncode == 0 else f"failed (exit code {proc.returncode})"
            output = proc.stdout + (("\n--- stderr (tail) ---\n" + "\n".join(proc.stderr.splitlines()[-30:]))
                                    if proc.returncode else "")
        except subprocess.TimeoutExpired as e:
            status = f"timed out after {b.timeout_s:.0f} s"
            output = (e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or ""))
        failed += status != "ok"
        seconds = time.perf_counter() - t0
        load1 = os.getloadavg()[0]
        print(f"[bench all]   {status}, {seconds:.0f} s (load {load1:.2f})", flush=True)
        lines += [
            "", f"## {b.name}: {b.what}", "",
            f"`{shown}`: {status} in {seconds:.0f} s; load average {load0:.2f} before, {load1:.2f} after.",
            "", "```", output.rstrip(), "```",
        ]
        _write(out_path, _merged(lines, kept, benches))  # after every benchmark: a stopped run keeps what it measured
    _write(out_path, _merged(lines, kept, benches))
    print(f"[bench all] report: {out_path} ({failed} failed)")
    return failed


def _sections(path: str) -> dict:
    """``{benchmark name: its section's lines}`` of an existing report (empty if none)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return _split(f.read().splitlines())


def _merged(lines: list[str], kept: dict, benches: list) -> list[str]:
    """This run's report, with the ``kept`` sections of benchmarks it did not run, in suite order."""
    if not kept:
        return lines
    ran = {b.name for b in benches}
    head_end = next((i for i, l in enumerate(lines) if l.startswith("## ")), len(lines))
    own = _split(lines[head_end:])
    names = [b.name for b in SUITE]
    body: list[str] = []
    for name in names:
        if name in ran and name in own:
            body += ["", *own[name]]
        elif name in kept and name not in ran:
            body += ["", *kept[name]]
    note = [f"Merged: {', '.join(sorted(ran))} from this run; the other sections are kept from the earlier report."]
    return [*lines[:head_end], *note, *body]


def _split(lines: list[str]) -> dict:
    out: dict = {}
    name = None
    for line in lines:
        if line.startswith("## "):
            name = line[3:].split(":", 1)[0].strip()
            out[name] = []
        if name is not None:
            out[name].append(line)
    for v in out.values():
        while v and not v[-1]:
            v.pop()
    return out


def _write(path: str, lines: list[str]) -> None:
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    names = [b.name for b in SUITE]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(names)}")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"), help="report path (markdown)")
    ap.add_argument("--quiet-load", type=float, default=0.5, help="load average per core to wait for")
    ap.add_argument("--settle", type=float, default=120.0, help="seconds to wait for a quiet machine")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other benchmarks' sections of an existing report (rerun a few)")
    ap.add_argument("--args", action="append", default=[], metavar="NAME=ARGS",
                    help="replace a benchmark's arguments, e.g. --args 'transport=--items 200 --repeat 1'")
    a = ap.parse_args(argv)
    chosen = [n for n in a.only.split(",") if n] or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        ap.error(f"--only: no benchmark {', '.join(unknown)}; choose from {', '.join(names)}")
    extra = {}
    for spec in a.args:
        name, sep, rest = spec.partition("=")
        if not sep or name not in names:
            ap.error(f"--args {spec!r}: expected NAME=ARGS with NAME one of {', '.join(names)}")
        extra[name] = tuple(rest.split())
    return 1 if run([b for b in SUITE if b.name in chosen], a.out, a.quiet_load, a.settle, extra, a.merge) else 0


if __name__ == "__main__":
    sys.exit(main())
