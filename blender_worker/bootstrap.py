"""Run a user's Blender script under the ``bpy`` wheel as Blender itself would.

    python -m blender_worker.bootstrap [--blend SCENE.blend] SCRIPT.py -- [launch and user args]

Opens the scene (if any), makes ``sys.argv`` look like Blender's (everything after ``--``
is for the script), and runs the script as ``__main__``. Exits 1 with the traceback on
stderr if the script raises, like ``blender --python-exit-code 1``.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback


def main(argv: list[str]) -> int:
    if "--" in argv:
        ours, script_args = argv[: argv.index("--")], argv[argv.index("--") :]
    else:
        ours, script_args = argv, []
    blend = None
    if len(ours) >= 2 and ours[0] == "--blend":
        blend, ours = ours[1], ours[2:]
    if len(ours) != 1:
        print("usage: python -m blender_worker.bootstrap [--blend SCENE] SCRIPT -- ARGS", file=sys.stderr)
        return 2
    script = ours[0]
    # Arm the lifeline before the (slow) bpy import so that Blender never outlives its parent.
    from blender_worker.protocol import PARENT_FLAG

    if PARENT_FLAG in script_args:
        from blender_worker.lifeline import watch_parent

        watch_parent(int(script_args[script_args.index(PARENT_FLAG) + 1]))
    import bpy

    if blend:
        if not os.path.isfile(blend):
            print(f"blender_worker: scene file not found: {blend}", file=sys.stderr)
            return 1
        bpy.ops.wm.open_mainfile(filepath=blend)
    sys.argv = [script, *script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report any failure of the user's script
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # bpy's atexit handlers can be slow or crash on teardown; the script's own atexit
    # hooks (publisher flush) run first through sys.exit -> atexit ordering.
    sys.exit(code)
