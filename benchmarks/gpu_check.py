"""GPU check (issue 14): per engine at 640x480, s/frame on the CPU and on the GPU, the device each
instance used, and stream frames/s vs render-only with 1 and 2 instances per GPU.

Run it through ``bash scripts/gpu_check.sh`` (set-up plus a 300 s ``timeout``). One table:

* CPU rows: one instance with ``device="cpu"``, ``num_gpus=0``.
* GPU rows (only when ``nvidia-smi -L`` lists GPUs): ``device="auto"`` with ``num_gpus=1``
  (one instance per GPU) and ``num_gpus=0.5`` (two per GPU), every GPU used.
* s/frame: median of Blender's own ``render()`` times after the first frame (kernel loading,
  shader compilation); render-only frames/s = instances / that; stream frames/s: what the
  driver received (``health().fps``, summed over the instances).
* device: what each instance reported (``health().render_device``, Cycles backend and devices,
  or the GL renderer).
* EGL device: the ``BLENDTORCH_EGL_DEVICE`` each instance got (``blendtorch_ray.egl``); with one
  Blender per GPU, Eevee and Workbench instances must each have their own.

Exit codes: 0 GPUs found and every GPU instance rendered on a GPU; 1 an instance that was given
a GPU rendered on the CPU (or an instance failed); 2 no GPU on this machine (CPU rows only:
the GPU path is not checked, which is said in the output); 124 the 300 s ``timeout`` hit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import table  # noqa: E402

EXIT_OK, EXIT_CPU_FALLBACK, EXIT_NO_GPU = 0, 1, 2

SCENE = textwrap.dedent(
    """
    import os
    import time
    import bpy
    import blender_worker as bw

    launch, args = bw.parse_launch_args()
    engine, device, samples, frames, width, height = args[0], args[1], int(args[2]), int(args[3]), int(args[4]), int(args[5])
    r = bw.Renderer(bw.RenderSettings(engine=engine, resolution=(width, height), samples=samples, device=device))
    pub = bw.DataPublisher(launch)
    cube = bpy.data.objects.get("Cube")
    for i in range(frames):
        if cube is not None:
            cube.rotation_euler[2] += 0.2
        t = time.perf_counter()
        out = r.render()
        pub.publish(image=out["image"], render_s=time.perf_counter() - t, egl=os.environ.get("BLENDTORCH_EGL_DEVICE"))
    pub.close()
    """
)


def gpu_count() -> int:
    """GPUs ``nvidia-smi -L`` lists (0 without the tool or a driver)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for ln in out.splitlines() if ln.startswith("GPU "))


def device_of(h) -> str:
    """One instance's device as the table shows it."""
    if h.render_device is None:
        return "unknown"
    extra = h.render_backend or h.gl_renderer
    return f"{h.render_device} ({extra})" if extra else h.render_device


def run(script: str, engine: str, device: str, samples: int, frames: int, instances: int, num_gpus: float,
        size: tuple[int, int], timeout: float) -> dict:
    """One launch; returns the row's figures and every instance's health."""
    from blendtorch_ray import BlenderLauncher

    args = [engine, device, str(samples), str(frames), str(size[0]), str(size[1])]
    t0 = time.perf_counter()
    with BlenderLauncher(script=script, num_instances=instances, num_gpus=num_gpus, max_restarts=0,
                         num_cpus=max(0.25, (os.cpu_count() or 1) / instances), batch_size=1,
                         instance_args=[args] * instances, ready_timeout=timeout) as bl:
        items = list(bl.dataset(max_items=frames * instances, timeout=timeout))
        health = bl.health()
    render = [i["render_s"] for i in items if i["seq"] > 0] or [i["render_s"] for i in items]
    s_frame = statistics.median(render)
    egl = {i["btid"]: i["egl"] for i in items}
    return {"s_frame": s_frame, "render_fps": instances / s_frame, "stream_fps": sum(h.fps for h in health),
            "health": health, "egl": [egl.get(h.btid) for h in health], "wall": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="cycles,eevee,workbench")
    p.add_argument("--frames", type=int, default=0, help="frames per instance (0: 8 with GPUs, 3 without)")
    p.add_argument("--samples", type=int, default=64, help="Cycles samples per pixel with GPUs (CPU-only: 4)")
    p.add_argument("--size", default="640x480")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per launch for the first item")
    a = p.parse_args(argv)
    size = tuple(int(x) for x in a.size.split("x"))
    gpus = gpu_count()
    frames = a.frames or (8 if gpus else 3)
    samples = a.samples if gpus else 4  # keep it short on the CPU: this machine checks the code path only
    from blendtorch_ray.runtime import ensure_ray

    ensure_ray(namespace="blendtorch-gpu-check", log_to_driver=False)
    import ray

    ray_gpus = int(ray.cluster_resources().get("GPU", 0))
    print(f"GPUs: nvidia-smi lists {gpus}, Ray sees {ray_gpus}; {frames} frames per instance at "
          f"{size[0]}x{size[1]}, Cycles {samples} spp", flush=True)
    if not ray_gpus:
        print("no GPU: only the CPU rows run (device='cpu'); the GPU rows are skipped", flush=True)
    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="btr-gpu-check-") as tmp:
        script = os.path.join(tmp, "gpu_scene.py")
        with open(script, "w") as f:
            f.write(SCENE)
        plans = [("CPU", "cpu", 1, 0.0)]
        if ray_gpus:
            plans += [("GPU, 1 per GPU", "auto", ray_gpus, 1.0), ("GPU, 2 per GPU", "auto", 2 * ray_gpus, 0.5)]
        for engine in a.engines.split(","):
            for label, device, instances, num_gpus in plans:
                spp = samples if engine == "cycles" else 1
                try:
                    r = run(script, engine, device, spp, frames, instances, num_gpus, size, a.timeout)
                except Exception as exc:  # noqa: BLE001 - one failed row is reported, the rest still runs
                    failures.append(f"{engine} {label}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                    rows.append([engine, label, instances, "FAILED", "-", "-", type(exc).__name__, "-"])
                    continue
                devs = [device_of(h) for h in r["health"]]
                if num_gpus and any(h.render_device != "GPU" for h in r["health"]):
                    failures.append(f"{engine} {label}: an instance given a GPU rendered on "
                                    f"{', '.join(sorted(set(devs)))}")
                if num_gpus >= 1 and engine != "cycles":
                    # One Blender per GPU: each must draw through the EGL shim on its own device.
                    if None in r["egl"] or len(set(r["egl"])) != len(r["egl"]):
                        failures.append(f"{engine} {label}: EGL devices {r['egl']} (want one distinct device "
                                        "per instance: see blendtorch_ray/egl.py and the blendtorch-egl line in the logs)")
                rows.append([engine, label, instances, r["s_frame"], r["render_fps"], r["stream_fps"],
                             "; ".join(sorted(set(devs))), ", ".join(sorted({str(e) for e in r["egl"]}))])
                print(f"  done: {engine} {label} ({r['wall']:.0f}s)", flush=True)
    print(table(["engine", "run", "instances", "s/frame", "render-only fr/s", "stream fr/s", "device used", "EGL device"], rows,
                title=f"GPU check: {size[0]}x{size[1]}, Cycles {samples} spp"))
    for f in failures:
        print(f"FAIL {f}")
    if failures:
        return EXIT_CPU_FALLBACK
    if not ray_gpus:
        print(f"\nno GPU on this machine: the CPU paths ran; the GPU path is NOT checked (exit code {EXIT_NO_GPU})")
        return EXIT_NO_GPU
    print("\nevery instance given a GPU rendered on a GPU")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
