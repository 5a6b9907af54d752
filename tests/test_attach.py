"""A second driver attaches to a running group by name; the health CLI reads it too."""

import os
import subprocess
import sys
import textwrap

import pytest

from blendtorch_ray import BlenderLauncher
from conftest import REPO, TEST_SCRIPTS

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def test_second_driver_attaches_by_name_and_health_cli_reports(ray_session):
    from blendtorch_ray.runtime import gcs_address

    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=2, name="attach-me") as bl:
        list(bl.dataset(max_items=5))
        env = dict(os.environ, RAY_ADDRESS=gcs_address())
        code = textwrap.dedent(
            """
            from blendtorch_ray import BlenderLauncher
            group = BlenderLauncher.attach("attach-me")
            items = list(group.dataset(max_items=12))
            print("ATTACHED", group.num_instances, len(items), sorted({i["btid"] for i in items}))
            group.close()  # not the owner: must not stop the instances
            """
        )
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
        assert "ATTACHED 2 12" in out.stdout, out.stderr[-3000:]
        # The owner's instances still run after the other driver left.
        assert len(list(bl.dataset(max_items=5))) == 5
        cli = subprocess.run(
            [str(REPO / ".venv" / "bin" / "blendtorch-ray") if (REPO / ".venv").exists() else "blendtorch-ray",
             "health", "attach-me"],
            env=env, capture_output=True, text=True, timeout=180,
        )
        assert cli.returncode == 0, cli.stderr[-3000:]
        lines = cli.stdout.strip().splitlines()
        assert lines[0].split()[:3] == ["btid", "alive", "pid"]
        assert [l.split()[0] for l in lines[2:]] == ["0", "1"]
        assert all(l.split()[1] == "True" for l in lines[2:])


def test_attach_to_unknown_group_is_a_clear_error(ray_session):
    with pytest.raises(ValueError, match="no blendtorch-ray group named 'nope'"):
        BlenderLauncher.attach("nope", address=None)
