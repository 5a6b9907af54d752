"""The ``blendtorch-ray`` command line.

Each subcommand is a small function ``cmd_<name>(args)`` plus an ``add_<name>(subparsers)``
that declares its arguments; ``COMMANDS`` lists them. Heavy imports happen inside the
command so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional

from blendtorch_ray.validation import cli_int, cli_positive_float


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="render the bundled cube scene with N instances and print what arrived")
    p.add_argument("--instances", type=cli_int(1), default=2, help="Blender instances (default 2)")
    p.add_argument("--items", type=cli_int(1), default=64, help="items to receive (default 64)")
    p.add_argument("--batch-size", type=cli_int(1), default=8, help="DataLoader batch size (default 8)")
    p.add_argument("--width", type=cli_int(1), default=640)
    p.add_argument("--height", type=cli_int(1), default=480)
    p.add_argument("--blender", default=None, help="'bpy' (default), 'blender' or a path to a Blender binary")
    p.add_argument("--out", default="demo_contact_sheet.png", help="contact sheet PNG to write")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from blendtorch_ray.demo import run_demo

    return run_demo(
        instances=args.instances,
        items=args.items,
        batch_size=args.batch_size,
        resolution=(args.width, args.height),
        blender=args.blender,
        out=args.out,
    )


def add_health(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="print per-instance health of a running group")
    p.add_argument("name", help="group name (BlenderLauncher.name)")
    p.add_argument("--namespace", default="blendtorch")
    p.add_argument("--address", default="auto", help="Ray address (default: auto)")
    p.set_defaults(func=cmd_health)


def cmd_health(args: argparse.Namespace) -> int:
    from blendtorch_ray.launcher import BlenderLauncher
    from blendtorch_ray.health import health_table

    group = BlenderLauncher.attach(args.name, namespace=args.namespace, address=args.address)
    print(health_table(group.health()))
    return 0


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (source checkout)")
    p.add_argument("name", help="benchmark name, e.g. transport, render, startup, memory, replay, env_steps, passes; all: every README benchmark in one sequential run into benchmarks/RESULTS.md")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import os
    import subprocess

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    path = os.path.join(root, f"{args.name}.py")
    if not os.path.isfile(path):
        names = sorted(f[:-3] for f in os.listdir(root) if f.endswith(".py") and f != "common.py") if os.path.isdir(root) else []
        print(f"no benchmark {args.name!r}; available: {', '.join(names) or 'none (benchmarks/ ships with the source checkout)'}",
              file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, path, *args.args])


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_demo, add_health, add_bench]


def add_record(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="record N streamed items to WebDataset tar shards (replay: blendtorch_ray.recording.ReplayDataset)",
        description="Record N items to tar shards. Instance arguments for the script go after '--'.",
    )
    p.add_argument("-o", "--out", required=True, help="directory to write the shards to")
    p.add_argument("--items", type=cli_int(1), required=True, help="items to record")
    p.add_argument("--script", default=None, help="Blender script (default: the bundled cube scene)")
    p.add_argument("--scene", default=None, help=".blend file to open first")
    p.add_argument("--instances", type=cli_int(1), default=1, help="Blender instances (default 1)")
    p.add_argument("--shard-items", type=cli_int(1), default=1000, help="items per shard (default 1000)")
    p.add_argument("--blender", default=None, help="'bpy' (default), 'blender' or a path to a Blender binary")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="-- then instance arguments for the script")
    p.set_defaults(func=cmd_record)


def cmd_record(args: argparse.Namespace) -> int:
    from blendtorch_ray.recording import ReplayDataset

    if args.items < 1:
        raise SystemExit("--items must be >= 1")
    script_args = args.script_args[1:] if args.script_args[:1] == ["--"] else args.script_args
    rec = record_stream(
        args.out,
        args.items,
        script=args.script,
        scene=args.scene,
        num_instances=args.instances,
        instance_args=script_args,
        progress=not args.no_progress,
        max_items_per_shard=args.shard_items,
        blender=args.blender,
    )
    print(f"recorded {rec.items} items in {len(rec.shards)} shard(s) under {args.out}")
    print(ReplayDataset(rec.shards).summary)
    return 0


COMMANDS.append(add_record)


def record_stream(
    directory: str,
    items: int,
    script: Optional[str] = None,
    num_instances: int = 1,
    instance_args: Optional[list[str]] = None,
    progress: bool = True,
    max_items_per_shard: int = 1000,
    **launch_options: Any,
) -> Any:
    """Launch ``script`` (default: the bundled cube scene) and record ``items`` items.

    Used by ``blendtorch-ray record``; returns the closed recorder (``shards``, ``items``).
    """
    from tqdm.auto import tqdm

    from blender_worker.scenes import CUBE
    from blendtorch_ray.launcher import BlenderLauncher
    from blendtorch_ray.recording import Recorder

    args = list(instance_args or [])
    with BlenderLauncher(
        script=script or CUBE,
        num_instances=num_instances,
        instance_args=[args] * num_instances,
        **launch_options,
    ) as launcher:
        ds = launcher.dataset(max_items=items)
        with Recorder(directory, max_items_per_shard=max_items_per_shard) as rec, tqdm(
            total=items, unit="item", desc="recording", disable=not progress
        ) as bar:
            for item in ds:
                rec.write(item)
                bar.update(1)
    return rec


def add_coco(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "coco",
        help="convert a recording with 'instance' masks to COCO (images/*.png + annotations.json)",
    )
    p.add_argument("recording", help="recording directory, glob or shard files (from 'record')")
    p.add_argument("-o", "--out", required=True, help="directory to write images/ and annotations.json to")
    p.add_argument("--categories", default="", help="names of category ids, e.g. '1=cube,2=sphere'")
    p.set_defaults(func=cmd_coco)


def cmd_coco(args: argparse.Namespace) -> int:
    from blendtorch_ray.coco import CocoOptions, export_coco
    from blendtorch_ray.recording import ReplayDataset

    try:
        categories = {int(k): v for k, v in (kv.split("=", 1) for kv in args.categories.split(",") if kv)}
    except ValueError:
        raise SystemExit(f"--categories {args.categories!r}: write id=name pairs, e.g. '1=cube,2=sphere'")
    replay = ReplayDataset(args.recording)
    path = export_coco(replay, args.out, CocoOptions(categories=categories))
    print(f"wrote {path} ({len(replay)} images)")
    return 0


COMMANDS.append(add_coco)


def add_bop(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bop", help="convert a recording with object poses to a BOP scene (blendtorch_ray.bop)")
    p.add_argument("recording", help="recording directory, glob or shard files (from 'record')")
    p.add_argument("-o", "--out", required=True, help="split directory; the scene goes to OUT/<scene-id:06d>/")
    p.add_argument("--scene-id", type=int, default=0)
    p.add_argument("--scene-unit-mm", type=float, default=1000.0, help="mm per scene unit (default: metres)")
    p.add_argument("--depth-scale", type=float, default=0.1, help="mm per depth-image unit")
    p.set_defaults(func=cmd_bop)


def cmd_bop(args: argparse.Namespace) -> int:
    from blendtorch_ray.bop import BopOptions, export_bop
    from blendtorch_ray.recording import ReplayDataset

    replay = ReplayDataset(args.recording)
    try:
        root = export_bop(replay, args.out, BopOptions(args.scene_id, args.scene_unit_mm, args.depth_scale))
    except (KeyError, ValueError) as exc:
        raise SystemExit(f"bop: {exc.args[0] if exc.args else exc}")
    print(f"wrote BOP scene {root} ({len(replay)} images)")
    return 0


COMMANDS.append(add_bop)


def add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="list every Blender found, its version, which engines render headless, what to fix")
    p.add_argument("--engines", default="workbench,eevee,cycles",
                   help="comma-separated engines to try (default: workbench,eevee,cycles)")
    p.add_argument("--timeout", type=cli_positive_float("seconds"), default=120.0, help="seconds per probe subprocess (default 120)")
    p.add_argument("--jobs", type=cli_int(1), default=2, help="Blenders examined in parallel (default 2)")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from blendtorch_ray.doctor import run_doctor

    engines = [e.strip().lower() for e in args.engines.split(",") if e.strip()]
    try:
        return run_doctor(engines=engines, timeout=args.timeout, jobs=args.jobs)
    except ValueError as exc:
        raise SystemExit(f"blendtorch-ray doctor: {exc}") from None


COMMANDS.append(add_doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blendtorch-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
