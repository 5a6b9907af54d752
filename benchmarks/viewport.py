"""Viewport (GPU offscreen) rendering vs ``Renderer.render()``: ms per frame, Workbench and Eevee.

    python benchmarks/viewport.py [--frames 30] [--width 320 --height 240] [--blender blender]

Runs one Blender binary with its window (the viewport renderer needs it: background mode has
no GPU context, see blender_worker/viewport.py) on ``$DISPLAY``, or on an Xvfb it starts when
``$DISPLAY`` is unset, and times both renderers on the default cube scene, per engine. On Xvfb
the GPU is Mesa's llvmpipe (software): the viewport numbers then are CPU rasterisation;
on a desktop with a GPU they are the GPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import table  # noqa: E402

BLENDER_SIDE = r'''
import json, sys, time, traceback
import bpy
from blender_worker.render import Renderer, RenderSettings, set_engine
from blender_worker.viewport import ViewportRenderer
frames, w, h, out = int(sys.argv[-4]), int(sys.argv[-3]), int(sys.argv[-2]), sys.argv[-1]

def ms(fn):
    fn()  # warm-up (shader compilation)
    t = time.perf_counter()
    for _ in range(frames):
        fn()
    return 1000 * (time.perf_counter() - t) / frames

def run():
    rows = []
    try:
        import gpu
        gl = gpu.platform.renderer_get()
        for engine, shading in (("workbench", "SOLID"), ("eevee", "RENDERED")):
            r = Renderer(RenderSettings(engine=engine, resolution=(w, h), samples=1 if engine == "eevee" else None))
            v = ViewportRenderer(resolution=(w, h), shading=shading)
            rows.append({"engine": bpy.context.scene.render.engine, "shading": shading,
                         "viewport_ms": ms(v.render), "render_ms": ms(r.render), "gl": gl})
    except Exception:
        traceback.print_exc()
    with open(out, "w") as f:
        json.dump(rows, f)
    bpy.ops.wm.quit_blender()

bpy.app.timers.register(run, first_interval=0.5)
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--blender", default="blender")
    a = ap.parse_args()
    from blendtorch_ray.blender import find_blender

    exe = find_blender(a.blender, ui=True)
    env = exe.environment()
    xvfb = None
    if not env.get("DISPLAY"):
        if not shutil.which("Xvfb"):
            print("no $DISPLAY and no Xvfb (Debian: apt-get install xvfb)", file=sys.stderr)
            return 2
        r, w = os.pipe()
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                                pass_fds=(w,), stderr=subprocess.DEVNULL)
        os.close(w)
        with os.fdopen(r) as f:
            env["DISPLAY"] = ":" + f.readline().strip()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script, out = os.path.join(tmp, "bench.py"), os.path.join(tmp, "out.json")
            with open(script, "w") as f:
                f.write(BLENDER_SIDE)
            cmd = [exe.path, "--factory-startup", "-noaudio", "--python-expr",
                   "import bpy; bpy.context.preferences.view.show_splash = False", "--python", script,
                   "--", str(a.frames), str(a.width), str(a.height), out]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            rows = json.load(open(out)) if os.path.exists(out) else []
            if not rows:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                return 1
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)
    print(table(["engine", "viewport shading", "ViewportRenderer ms/frame", "Renderer.render() ms/frame", "speed-up"],
                [[r["engine"], r["shading"], f"{r['viewport_ms']:.1f}", f"{r['render_ms']:.1f}",
                  f"{r['render_ms'] / r['viewport_ms']:.1f}x"] for r in rows],
                title=f"{a.width}x{a.height}, {a.frames} frames, GL: {rows[0]['gl']}, display {env['DISPLAY']}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
