"""Cost of each ground-truth pass per frame, per render engine, printed as a table.

    python benchmarks/passes.py [--engines workbench cycles] [--width 640 --height 480] [--frames 10]

Runs one Blender (bpy) per engine on a scene of eight objects and times ``Renderer.render``
for a growing list of passes; "extra" is the cost over the plain ``render()`` of the same
engine. "cpu" is the CPU time of the Blender process (all its threads, software GL included),
which a busy machine disturbs less than the wall-clock "wall". Compare ratios, not milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = [
    ("render() srgb8 (TIFF, the default)", None, "srgb8"),
    ("rgba linear", ("rgba",), "linear"),
    ("rgba srgb8", ("rgba",), "srgb8"),
    ("rgba+depth", ("rgba", "depth"), "srgb8"),
    ("rgba+instance", ("rgba", "instance"), "srgb8"),
    ("rgba+instance+semantic", ("rgba", "instance", "semantic"), "srgb8"),
    ("rgba+normal", ("rgba", "normal"), "srgb8"),
    ("rgba+flow_forward", ("rgba", "flow_forward"), "srgb8"),
    ("rgba+flow fwd+bwd", ("rgba", "flow_forward", "flow_backward"), "srgb8"),
    ("all supported passes", "ALL", "srgb8"),
]


def inside_blender(engine: str, width: int, height: int, frames: int, samples: int) -> None:
    import bpy
    import numpy as np

    import blender_worker as bw
    from blender_worker import passes as P
    from blender_worker import randomize as R

    rng = R.make_rng(0)
    objs = []
    for i in range(8):
        bpy.ops.mesh.primitive_uv_sphere_add(radius=0.5) if i % 2 else bpy.ops.mesh.primitive_cube_add(size=0.9)
        objs.append(bpy.context.object)
    bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, -0.5))
    R.random_materials(objs, rng)
    R.place_without_overlap(objs, rng, area=(-3, 3, -3, 3))
    r = bw.Renderer(bw.RenderSettings(engine=engine, resolution=(width, height), samples=samples, workbench_aa="OFF"))
    cam = bw.Camera()
    cam.look_at((0, 0, 0), (6.0, -6.0, 5.0))
    for o in objs:  # keyframed motion (frames 1-3), so that flow is not all zero
        z = o.location.z
        for f, dz in ((1, -0.2), (2, 0.0), (3, 0.2)):
            o.location.z = z + dz
            o.keyframe_insert("location", frame=f)
    bpy.context.scene.frame_set(2)
    supported = P.supported_passes(bpy.context.scene.render.engine)
    results = {}
    for name, passes, color in CASES:
        if passes == "ALL":
            passes = tuple(p for p in P.PASSES if p in supported)
        if passes and not set(passes) <= supported:
            results[name] = None
            continue
        r.render(color=color, passes=passes)  # warm-up (shader compilation, first EXR)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(frames):
            r.render(color=color, passes=passes)
        results[name] = [1000.0 * (time.perf_counter() - t0) / frames, 1000.0 * (time.process_time() - c0) / frames]
    print("BENCH " + json.dumps(results), flush=True)
    r.close()


def run_engine(engine: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "blender_worker.bootstrap", os.path.abspath(__file__), "--",
           "--inside", engine, "--width", str(args.width), "--height", str(args.height),
           "--frames", str(args.frames), "--samples", str(args.samples), "--btparent", str(os.getpid())]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise RuntimeError(f"{engine} benchmark failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=["workbench", "cycles"])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--samples", type=int, default=4, help="Cycles/Eevee samples")
    parser.add_argument("--inside", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--btparent", default=None, help=argparse.SUPPRESS)  # Blender dies with us
    args = parser.parse_args(argv)
    if args.inside:
        inside_blender(args.inside, args.width, args.height, args.frames, args.samples)
        return
    print(f"{args.width}x{args.height}, {args.frames} frames per case, {args.samples} samples (Cycles/Eevee)")
    for engine in args.engines:
        table = run_engine(engine, args)
        base = table["render() srgb8 (TIFF, the default)"]
        print(f"\n{engine:<26}{'wall ms':>10}{'cpu ms':>10}{'extra cpu':>10}")
        for name, _, _ in CASES:
            ms = table[name]
            print(f"{name:<26}" + ("       n/a" if ms is None else f"{ms[0]:>10.1f}{ms[1]:>10.1f}{ms[1] - base[1]:>+10.1f}"), flush=True)


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:])
