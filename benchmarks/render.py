"""Render efficiency: delivered frames/s of the bundled cube scene vs the fastest render-only
loop that produces the same image, per Blender, measured in the same run.

    python benchmarks/render.py [--blender bpy,blender] [--frames 100] [--repeat 3] [--instances 1 2]

For every Blender and instance count, interleaved in each repeat:

* render-only loops: the same Blender processes doing the cube scene's per-frame work
  (randomise, render, read the image back, project the corners) with no publishing and no Ray,
  once per readback: ``tga`` and ``tiff`` (Blender's 8-bit writer, view transform applied: the
  default image) and ``exr`` (float EXR, scene-linear: what the original blendtorch read; a
  different image, so shown but never the reference);
* the stream: ``BlenderLauncher`` + ``make_loader`` (batches of 8) with the Renderer's default,
  clocked from the first batch (as issue 18 measured the original blendtorch: the DataLoader's
  worker start-up is not a per-frame cost, and the render-only loops skip their first frame too).

The reference is the fastest render-only loop that gives the default image; the ratio is
streamed / reference, medians over the repeats (spread = min-max of the per-repeat ratios).
Target: ratio >= 0.95.
"""

from __future__ import annotations

import sys

if "--inside-blender" in sys.argv:  # the Blender side of a render-only loop (no Ray, no publishing)
    import time

    import bpy
    import numpy as np

    import blender_worker as bw

    _launch, _rest = bw.parse_launch_args()
    _fmt, _frames, _w, _h = _rest[1], int(_rest[2]), int(_rest[3]), int(_rest[4])
    _rng = np.random.default_rng(_launch.seed)
    _cube = bpy.data.objects["Cube"]
    _cube.location = (0.0, 0.0, 0.0)
    bpy.context.scene.display.shading.color_type = "OBJECT"
    _renderer = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(_w, _h), workbench_aa="OFF"))
    _cam = bw.Camera()
    _cam.look_at(look_at=(0, 0, 0), look_from=(6.0, -6.0, 4.5))
    _color = "linear" if _fmt == "exr" else "srgb8"
    if _fmt != "exr":
        _renderer.srgb8_format = _fmt
    _t0 = None
    for _i in range(_frames + 1):  # the same per-frame work as the cube scene's --baseline
        if _i == 1:
            _t0 = time.perf_counter()  # exclude the first (warm-up) frame
        _cube.rotation_euler = _rng.uniform(0, np.pi, size=3)
        _cube.color = (*_rng.uniform(0.2, 1.0, size=3), 1.0)
        bpy.context.scene.frame_set(1 + _i % 100)
        _renderer.render(color=_color)
        _cam.bbox_object_to_pixel(_cube)
    print(f"BTR_BASELINE {_frames} {time.perf_counter() - _t0:.6f} {bpy.app.version_string} "
          f"{bw.render.default_srgb8_format()}", flush=True)
    raise SystemExit(0)

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import table  # noqa: E402

SAME_IMAGE = ("tga", "tiff")
"""Render-only readbacks that give the Renderer's default image (tested equal:
tests/test_render_paths.py); "exr" is scene-linear, shown for comparison only."""


def render_only(blender: str, fmt: str, instances: int, frames: int, w: int, h: int) -> tuple[float, str, str]:
    """Aggregate frames/s of ``instances`` plain Blender processes rendering in parallel through
    readback ``fmt``; also this Blender's version and default readback."""
    from blendtorch_ray.blender import find_blender

    exe = find_blender(blender)
    procs = []
    for b in range(instances):
        args = ["--btid", str(b), "--btseed", str(b), "--inside-blender", fmt, str(frames), str(w), str(h)]
        procs.append(subprocess.Popen(exe.command(os.path.abspath(__file__), None, args), stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, env=exe.environment()))
    secs, info = [], ("?", "?")
    for p in procs:
        out, _ = p.communicate(timeout=900)
        line = next(l for l in out.splitlines() if l.startswith("BTR_BASELINE"))
        _, _, sec, version, default = line.split()
        secs.append(float(sec))
        info = (version, default)
    return instances * frames / max(secs), *info


def streamed(blender: str, instances: int, frames: int, w: int, h: int) -> float:
    from blender_worker.scenes import CUBE
    from blendtorch_ray import BlenderLauncher, make_loader

    with BlenderLauncher(script=CUBE, blender=blender, num_instances=instances,
                         instance_args=[["--width", str(w), "--height", str(h)]] * instances) as bl:
        list(bl.dataset(max_items=8 * instances))  # warm up every instance
        n, t0 = 0, None
        for batch in make_loader(bl.dataset(max_items=frames * instances + 8), batch_size=8):
            if t0 is None:  # the clock starts at the first batch
                t0 = time.perf_counter()
                continue
            n += len(batch["image"])
        return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blender", default="bpy,blender", help="comma-separated Blenders (bpy, blender, a path)")
    ap.add_argument("--frames", type=int, default=100, help="frames per instance")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--readbacks", default="tga,tiff,exr", help="render-only readbacks to measure")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per row (medians)")
    args = ap.parse_args()
    from blendtorch_ray.runtime import ensure_ray

    blenders = [b.strip() for b in args.blender.split(",") if b.strip()]
    fmts = [f.strip() for f in args.readbacks.split(",") if f.strip()]
    ensure_ray()
    load0 = os.getloadavg()
    rows = []
    for blender in blenders:
        for n in args.instances:
            only: dict[str, list[float]] = {f: [] for f in fmts}
            lives, refs, version, default = [], [], "?", "?"
            for _ in range(args.repeat):  # interleaved, so that drifts in machine load hit all
                for f in fmts:
                    rate, version, default = render_only(blender, f, n, args.frames, args.width, args.height)
                    only[f].append(rate)
                lives.append(streamed(blender, n, args.frames, args.width, args.height))
                refs.append(max(only[f][-1] for f in fmts if f in SAME_IMAGE))
            med = {f: statistics.median(v) for f, v in only.items()}
            best = max((f for f in fmts if f in SAME_IMAGE), key=lambda f: med[f])
            live = statistics.median(lives)
            per_run = [l / r for l, r in zip(lives, refs)]
            rows.append([f"{blender} {version}", n, *(f"{med[f]:.1f}" for f in fmts), f"{best}",
                         f"{live:.1f} ({default})", f"{min(lives):.1f}-{max(lives):.1f}",
                         f"**{live / med[best]:.2f}**", f"{min(per_run):.2f}-{max(per_run):.2f}"])
            print(f"# {blender} x{n}: " + ", ".join(f"{f} {v}" for f, v in
                  ((f, [round(x, 1) for x in only[f]]) for f in fmts)) + f", stream {[round(x, 1) for x in lives]}",
                  flush=True)
    load1 = os.getloadavg()
    print(table(["Blender", "instances", *(f"render-only {f} fr/s" for f in fmts), "reference",
                 "streamed fr/s (readback)", "streamed spread", "ratio (medians)", "ratio per run"], rows,
                title=f"Cube scene, Workbench AA off, {args.width}x{args.height}, {args.frames} frames per instance, "
                      f"median of {args.repeat} interleaved runs; load average {load0[0]:.2f} at start, "
                      f"{load1[0]:.2f} at end"))
    print("\nreference = fastest render-only loop giving the default (display-referred) image; "
          "exr is scene-linear (not the same image). target: ratio >= 0.95 for every row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
