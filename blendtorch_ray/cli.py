"""The ``blendtorch-ray`` command line.

Each subcommand is a small function ``cmd_<name>(args)`` plus an ``add_<name>(subparsers)``
that declares its arguments; ``COMMANDS`` lists them. Heavy imports happen inside the
command so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="render the bundled cube scene with N instances and print what arrived")
    p.add_argument("--instances", type=int, default=2, help="Blender instances (default 2)")
    p.add_argument("--items", type=int, default=64, help="items to receive (default 64)")
    p.add_argument("--batch-size", type=int, default=8, help="DataLoader batch size (default 8)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
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
    from blendtorch_ray.report import health_table

    group = BlenderLauncher.attach(args.name, namespace=args.namespace, address=args.address)
    print(health_table(group.health()))
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_demo, add_health]


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
