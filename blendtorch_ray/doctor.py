"""``blendtorch-ray doctor``: which Blenders are there, which engines render headless, what to fix.

Looks at the bpy wheel in this interpreter, ``blender`` on PATH and ``$BLENDTORCH_BLENDER``.
For each it runs small probes in subprocesses (each with a timeout): one reports the
Blender and Python versions and whether ``blender_worker`` (with numpy and pyzmq) imports,
one per engine renders a 32x24 frame to a file, and one lists the render devices: Cycles'
compute devices per backend (``blender_worker.devices.cycles_devices``) and the GL renderer
that Eevee / Workbench draw with (read after a Workbench frame: Blender 3.4 crashes when asked
before). Then it says what to fix for the GPU: no GPU driver, no GPU backend in this build of
Blender, or software GL although there is a GPU (the vendor's EGL library is missing).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Sequence

from blendtorch_ray.blender import ENV_VAR, BlenderExecutable, binary_version, check_binary, find_blender
from blendtorch_ray.doctor_gpu import device_probe, format_devices, gpu_driver, gpu_notes
from blendtorch_ray.errors import BlenderNotFoundError

log = logging.getLogger("blendtorch_ray")

ENGINES = ("workbench", "eevee", "cycles")
_MARK = "BTR-DOCTOR "

_INFO_PROBE = textwrap.dedent(
    """
    import json, sys
    out = {"blender": None, "python": sys.version.split()[0], "worker": "ok", "exr": "ok"}
    try:
        import bpy
        out["blender"] = bpy.app.version_string
        import numpy, zmq
        import blender_worker.render, blender_worker.publisher, blender_worker.animation
        out["numpy"], out["pyzmq"] = numpy.__version__, zmq.__version__
    except BaseException as exc:
        out["worker"] = f"{type(exc).__name__}: {exc}"
    try:  # inside a Blender binary blender_worker reads EXR with numpy (blender_worker.exr)
        if not bpy.app.binary_path:
            import OpenEXR
    except BaseException as exc:
        out["exr"] = f"{type(exc).__name__}: {exc}"
    print(%r + json.dumps(out), flush=True)
    """
    % _MARK
)

_RENDER_PROBE = textwrap.dedent(
    """
    import json, os, sys, time
    import bpy
    engine, path = sys.argv[sys.argv.index("--") + 1:][:2]
    names = {"workbench": ["BLENDER_WORKBENCH"], "eevee": ["BLENDER_EEVEE", "BLENDER_EEVEE_NEXT"],
             "cycles": ["CYCLES"]}[engine]
    scene, r = bpy.context.scene, bpy.context.scene.render
    for name in names:
        try:
            r.engine = name
            break
        except TypeError:
            continue
    else:
        raise SystemExit(f"engine {engine} is not available in this Blender")
    r.resolution_x, r.resolution_y, r.resolution_percentage = 32, 24, 100
    if engine == "cycles":
        scene.cycles.samples, scene.cycles.device = 1, "CPU"
        if not scene.cycles.denoiser:  # built without a denoiser (Debian): as blender_worker does
            scene.cycles.use_denoising = False
    elif engine == "eevee":
        scene.eevee.taa_render_samples = 1
    if hasattr(r.image_settings, "media_type"):
        r.image_settings.media_type = "IMAGE"
    r.image_settings.file_format = "TARGA_RAW"
    r.filepath = path
    t = time.perf_counter()
    bpy.ops.render.render(write_still=True)
    dt = time.perf_counter() - t
    ok = os.path.isfile(path) and os.path.getsize(path) > 18  # more than a TGA file's 18-byte header
    print(%r + json.dumps({"ok": ok, "seconds": dt}), flush=True)
    """
    % _MARK
)


@dataclass
class BlenderReport:
    """What the doctor found out about one Blender."""

    sources: list[str]
    """Where it was found: "bpy wheel", "PATH", "$BLENDTORCH_BLENDER"."""
    blender: Optional[BlenderExecutable] = None
    """How to run it; None when it could not be resolved (see ``problems``)."""
    version: str = "-"
    """Blender's version ("-": unknown)."""
    python: str = "-"
    """Version of the Python inside it."""
    worker: str = "-"
    """'ok' if blender_worker, numpy and pyzmq import inside it, else the error."""
    exr: str = "-"
    """'ok' if OpenEXR reading works inside it, else the error."""
    engines: dict = field(default_factory=dict)
    """Engine name -> 'ok 0.12s' / 'failed' / 'timeout' / 'skipped'."""
    problems: list[str] = field(default_factory=list)
    """What to fix, one sentence each."""
    cycles_devices: dict = field(default_factory=dict)
    """Cycles backend -> its device names, or "not in this build" (empty: not probed)."""
    gl: Optional[dict] = None
    """The GL renderer after a Workbench frame: ``{"renderer", "vendor", "device_type", "software"}``,
    or None (not probed, or it failed: see ``gpu_notes``)."""
    gpu_notes: list[str] = field(default_factory=list)
    """What the device probe found out about the GPU path (also in ``problems`` when a GPU
    driver is present, i.e. when there is something to fix)."""

    @property
    def usable(self) -> bool:
        """blender_worker imports and at least one engine renders."""
        return self.worker == "ok" and any(v.startswith("ok") for v in self.engines.values())


def find_candidates() -> list[BlenderReport]:
    """Every Blender the launcher could use: the bpy wheel, ``blender`` on PATH, $BLENDTORCH_BLENDER.

    Returns:
        One report per distinct Blender (not yet examined), plus one with a problem for
        each place where none was found.
    """
    found: dict[str, BlenderReport] = {}

    def add(source: str, resolve) -> None:
        try:
            exe = resolve()
        except BlenderNotFoundError as exc:
            found[f"error:{source}"] = BlenderReport([source], problems=[str(exc)])
            return
        key = f"{exe.kind}:{os.path.realpath(exe.path)}"
        if key in found:
            found[key].sources.append(source)
        else:
            found[key] = BlenderReport([source], blender=exe)

    add("bpy wheel", lambda: find_blender("bpy"))
    if shutil.which("blender"):
        add("PATH", lambda: BlenderExecutable("binary", shutil.which("blender")))
    else:
        found["error:PATH"] = BlenderReport(["PATH"], problems=[
            "no `blender` on PATH (optional): `apt-get install --no-install-recommends blender` "
            "or a download from blender.org gives one"])
    choice = os.environ.get(ENV_VAR)
    if choice:
        add(f"${ENV_VAR}", lambda: find_blender(choice) if choice == "bpy" else _unchecked_binary(choice))
    return list(found.values())


def _unchecked_binary(choice: str) -> BlenderExecutable:
    path = shutil.which(choice) or choice
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise BlenderNotFoundError(f"${ENV_VAR}={choice!r} does not exist or is not executable; "
                                   "set it to the path of a blender executable, or to 'bpy'")
    return BlenderExecutable("binary", os.path.abspath(path))


def _run_probe(exe: BlenderExecutable, source: str, args: Sequence[str], timeout: float) -> tuple[Optional[dict], str]:
    """Run probe ``source`` inside ``exe``; (parsed result or None, short failure reason)."""
    with tempfile.TemporaryDirectory(prefix="btr-doctor-") as tmp:
        script = os.path.join(tmp, "probe.py")
        with open(script, "w") as f:
            f.write(source)
        args = [a.replace("{tmp}", tmp) for a in args]
        try:
            proc = subprocess.run(exe.command(script, None, args), env=exe.environment(), cwd=tmp,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"timeout ({timeout:.0f}s)"
    marked = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    if marked:  # the last one: a probe may report in steps
        return json.loads(marked[-1][len(_MARK):]), ""
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ("Error" in ln or "error" in ln) and "script failed" not in ln]
    return None, (errors or lines or [f"exit code {proc.returncode}"])[-1].strip()[:120]


def examine(report: BlenderReport, engines: Sequence[str] = ENGINES, timeout: float = 120.0) -> BlenderReport:
    """Fill in versions, the blender_worker import check and the engine probes of ``report``.

    Args:
        report: From `find_candidates`; changed in place.
        engines: Engines to probe (names of ``ENGINES``).
        timeout: Seconds per probe subprocess.

    Returns:
        ``report``, with what to fix in ``problems``.
    """
    exe = report.blender
    if exe is None:
        return report
    if exe.kind == "binary":
        try:
            check_binary(exe.path)
        except BlenderNotFoundError as exc:
            try:
                report.version = ".".join(map(str, binary_version(exe.path)))
            except BlenderNotFoundError as version_exc:  # the version stays unknown; exc says why
                log.debug("no version of %s: %s", exe.path, version_exc)
            report.problems.append(str(exc))
            report.engines = {e: "skipped" for e in engines}
            return report
    info, why = _run_probe(exe, _INFO_PROBE, [], timeout)
    if info is None:
        report.worker = why
        report.problems.append(f"{exe.path} does not run a Python script headless: {why}")
        report.engines = {e: "skipped" for e in engines}
        return report
    report.version, report.python, report.worker = info["blender"] or "-", info["python"], info["worker"]
    report.exr = info["exr"]
    if report.worker != "ok":
        report.problems.append(
            f"blender_worker does not import inside Blender {report.version} (Python {report.python}): "
            f"{report.worker}. Its Python must match this interpreter's "
            f"({sys.version_info[0]}.{sys.version_info[1]}) so that this environment's numpy and "
            "pyzmq load there; or install them into Blender's own Python")
    elif report.exr != "ok":
        report.problems.append(f"OpenEXR does not import inside Blender {report.version} (only needed for "
                               "color='linear' and passes): `pip install openexr` in this environment")
    for engine in engines:
        result, why = _run_probe(exe, _RENDER_PROBE, [engine, "{tmp}/frame.tga"], timeout)
        if result is not None and result["ok"]:
            report.engines[engine] = f"ok {result['seconds']:.2f}s"
        else:
            report.engines[engine] = "timeout" if why.startswith("timeout") else "failed"
            report.problems.append(f"{engine} does not render headless in Blender {report.version} "
                                   f"({exe.path}): {why or 'no image written'}")
    if report.worker == "ok":
        examine_devices(report, timeout)
    return report


def examine_devices(report: BlenderReport, timeout: float = 120.0) -> BlenderReport:
    """List the render devices of ``report``'s Blender and say what to fix for the GPU.

    Args:
        report: An examined report whose blender_worker imports; changed in place.
        timeout: Seconds for the probe subprocess.

    Returns:
        ``report`` with ``cycles_devices``, ``gl`` and ``gpu_notes`` filled in.
    """
    result, why = _run_probe(report.blender, device_probe(_MARK), ["{tmp}/gl.tga"], timeout)
    notes = report.gpu_notes
    if result is None:
        notes.append(f"the device probe failed in Blender {report.version}: {why}")
        return report
    where = f"Blender {report.version} ({report.blender.path})"
    if isinstance(result["cycles"], dict):
        report.cycles_devices = result["cycles"]
    else:
        notes.append(f"Cycles devices could not be listed in {where}: {result['cycles']}")
    if isinstance(result["gl"], dict):
        report.gl = result["gl"]
    elif result["gl"] is None:
        notes.append(f"the GL renderer could not be read in {where} (Blender exited while drawing)")
    else:
        notes.append(f"the GL renderer could not be read in {where}: {result['gl']}")
    driver = gpu_driver()
    notes += gpu_notes(report.cycles_devices, report.gl, where, driver)
    if driver is not None:  # there is a GPU: whatever stops Blender from using it is to be fixed
        report.problems += [n for n in notes if n not in report.problems]
    return report


def format_report(reports: Sequence[BlenderReport], engines: Sequence[str] = ENGINES) -> str:
    """A fixed-width table of every Blender found, then what to fix.

    Args:
        reports: Examined reports.
        engines: The engine columns.

    Returns:
        The text ``blendtorch-ray doctor`` prints.
    """
    head = ["found in", "kind", "path", "blender", "python", "blender_worker", *engines]
    rows = []
    for r in reports:
        exe = r.blender
        rows.append([
            ", ".join(r.sources), exe.kind if exe else "-", exe.path if exe else "(none)", r.version,
            r.python, "ok" if r.worker == "ok" else ("-" if r.worker == "-" else "FAILED"),
            *[r.engines.get(e, "-") for e in engines],
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*row) for row in rows]
    try:
        default = find_blender()
        lines.append(f"\nblendtorch-ray uses by default: {default.kind} {default.path} "
                     f"(choose with blender=... or ${ENV_VAR})")
    except BlenderNotFoundError as exc:
        lines.append(f"\nno default Blender: {exc}")
        problems = [p for r in reports for p in r.problems]
        if str(exc) in problems:
            lines[-1] = f"\nno default Blender: the one ${ENV_VAR} names cannot be used (see below)"
    lines += format_devices(reports)
    problems = [p for r in reports for p in r.problems]
    lines.append("\nWhat to fix:" if problems else "\nNothing to fix.")
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


def run_doctor(engines: Sequence[str] = ENGINES, timeout: float = 120.0, jobs: int = 2) -> int:
    """Examine every Blender found and print the table (``blendtorch-ray doctor``).

    Args:
        engines: Engines to probe.
        timeout: Seconds per probe subprocess.
        jobs: Blenders examined in parallel.

    Returns:
        The exit code: 0 if at least one Blender is usable, else 1.

    Raises:
        ValueError: An engine name is unknown.
    """
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise ValueError(f"unknown engine(s) {sorted(unknown)}: choose from {list(ENGINES)}")
    reports = find_candidates()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        reports = list(pool.map(lambda r: examine(r, engines, timeout), reports))
    print(format_report(reports, engines))
    print(f"\n(engine times: one 32x24 frame, engine start-up included; probes took "
          f"{time.perf_counter() - t0:.1f}s)")
    return 0 if any(r.usable for r in reports) else 1
