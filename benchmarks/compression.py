"""Bytes per frame and CPU cost of each ``StreamConfig.encode`` codec, printed as one table.

    python benchmarks/compression.py [--frames 20] [--width 640 --height 480]

One Blender (bpy) renders ``--frames`` frames of two scenes with Workbench: the bundled cube
scene (blender_worker/scenes/cube.py: one randomly rotated, randomly coloured cube on a grey
background) and a textured scene (a ground plane and the cube carrying a 1024x1024 image
texture of checkers plus multi-octave noise, camera moved randomly each frame). Inside
Blender every frame (480x640x4 uint8 "image") is encoded with each codec exactly as
``DataPublisher.publish`` does (``blender_worker.compress.Encoder``), timing the encoding
there; the driver then decodes each payload (``decode_item``, as the DataLoader worker does),
checks it and times that. Times are CPU time of the process (``time.process_time``) per
frame, medians over frames; the codecs are single-threaded. "fps @ N Gbit/s" is the frame
rate that N Gbit/s of link allow for the bytes of one frame (``N * 1e9 / 8 / bytes``),
i.e. the bandwidth bound, ignoring the other costs of the stream.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CODECS = [None, "lz4", "zstd", "zstd:3", "png:1", "png", "jpeg:95", "jpeg:90", "jpeg:75"]
LINKS_GBIT = (1, 10, 25)


def _textured_scene(rng) -> None:
    """A plane and the cube with a noise+checker image texture, shown as Workbench texture colour."""
    import bpy
    import numpy as np

    size = 1024
    yy, xx = np.mgrid[0:size, 0:size] / size
    tex = np.zeros((size, size, 3))
    for octave in range(1, 7):  # value noise: coarse to fine, upsampled random grids
        n = 4 * 2 ** octave
        grid = rng.random((n + 1, n + 1, 3))
        tex += grid[(yy * n).astype(int), (xx * n).astype(int)] / 2 ** octave
    checker = ((np.floor(xx * 16) + np.floor(yy * 16)) % 2)[..., None]
    tex = np.clip(0.55 * tex / tex.max() + 0.35 * checker + 0.1 * rng.random((size, size, 3)), 0, 1)
    img = bpy.data.images.new("btr_noise", size, size)
    img.pixels.foreach_set(np.concatenate([tex, np.ones((size, size, 1))], -1).astype(np.float32).ravel())
    mat = bpy.data.materials.new("btr_textured")
    mat.use_nodes = True
    node = mat.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = img
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    mat.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    mat.node_tree.nodes.active = node  # Workbench "TEXTURE" shows the active image node
    bpy.ops.mesh.primitive_plane_add(size=12, location=(0, 0, -1.0))
    plane = bpy.context.object
    for obj in (plane, bpy.data.objects["Cube"]):
        obj.data.materials.clear()
        obj.data.materials.append(mat)
    bpy.context.scene.display.shading.color_type = "TEXTURE"


def inside_blender(out_path: str, frames: int, width: int, height: int) -> None:
    import bpy
    import numpy as np

    import blender_worker as bw
    from blender_worker.compress import Encoder

    rng = np.random.default_rng(0)
    cube = bpy.data.objects["Cube"]
    cube.location = (0.0, 0.0, 0.0)
    bpy.context.scene.display.shading.color_type = "OBJECT"
    renderer = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(width, height), workbench_aa="OFF"))
    cam = bw.Camera()
    encoders = {spec: Encoder({"image": spec}) for spec in CODECS if spec}
    result: dict = {}
    for scene in ("cube", "textured"):
        if scene == "textured":
            _textured_scene(rng)
        raw, payloads, enc_ms = [], {s: [] for s in encoders}, {s: [] for s in encoders}
        for i in range(frames):
            cube.rotation_euler = rng.uniform(0, np.pi, size=3)
            cube.color = (*rng.uniform(0.2, 1.0, size=3), 1.0)
            if scene == "cube":
                cam.look_at(look_at=(0, 0, 0), look_from=(6.0, -6.0, 4.5))  # as cube.py
            else:
                a = rng.uniform(0, 2 * np.pi)
                cam.look_at(look_at=(0, 0, -0.5), look_from=(6 * np.cos(a), 6 * np.sin(a), rng.uniform(2.5, 5)))
            bpy.context.scene.frame_set(1 + i)
            img = renderer.render()["image"]
            raw.append(img.copy())
            for spec, enc in encoders.items():
                c0 = time.process_time()
                item = enc.encode_item({"image": img})
                enc_ms[spec].append(1000 * (time.process_time() - c0))
                payloads[spec].append(item)
        result[scene] = {"raw": raw, "payloads": payloads, "enc_ms": enc_ms}
    with open(out_path, "wb") as f:
        pickle.dump(result, f, protocol=5)
    print("BENCH_DONE", flush=True)


def run_blender(args: argparse.Namespace, out_path: str) -> None:
    cmd = [sys.executable, "-m", "blender_worker.bootstrap", os.path.abspath(__file__), "--",
           "--inside", out_path, "--frames", str(args.frames), "--width", str(args.width),
           "--height", str(args.height), "--btparent", str(os.getpid())]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if "BENCH_DONE" not in proc.stdout:
        raise RuntimeError(f"Blender part failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--inside", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--btparent", default=None, help=argparse.SUPPRESS)  # Blender dies with us
    args = parser.parse_args(argv)
    if args.inside:
        inside_blender(args.inside, args.frames, args.width, args.height)
        return
    import numpy as np

    from blender_worker.compress import decode_item
    from common import table

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "frames.pkl")
        run_blender(args, out)
        with open(out, "rb") as f:
            result = pickle.load(f)
    rows = []
    for scene, r in result.items():
        raw = r["raw"]
        raw_bytes = raw[0].nbytes
        for spec in CODECS:
            if spec is None:
                nbytes, enc, dec, err = raw_bytes, 0.0, 0.0, 0.0
            else:
                sizes, dec_ms, errs = [], [], []
                for item, ref in zip(r["payloads"][spec], raw):
                    sizes.append(item["image"].nbytes)
                    c0 = time.process_time()
                    img = decode_item(item)["image"]
                    dec_ms.append(1000 * (time.process_time() - c0))
                    errs.append(float(np.abs(img.astype(np.int16) - ref).mean()))
                    assert img.shape == ref.shape and img.dtype == ref.dtype
                nbytes, enc, dec = statistics.mean(sizes), statistics.median(r["enc_ms"][spec]), statistics.median(dec_ms)
                err = max(errs)
            rows.append([scene, spec or "none (raw)", f"{nbytes:,.0f}", f"{raw_bytes / nbytes:.1f}x",
                         f"{enc:.2f}", f"{dec:.2f}", f"{err:.2f}",
                         *[f"{g * 1e9 / 8 / nbytes:,.0f}" for g in LINKS_GBIT]])
    print(f"{args.width}x{args.height} RGBA uint8 frames, {args.frames} per scene; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(table(["scene", "codec", "bytes/frame", "ratio", "encode ms", "decode ms", "mean |err|",
                 *[f"fps @ {g} Gbit/s" for g in LINKS_GBIT]], rows))


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:])
