"""Unit tests of launch-argument parsing and configuration validation."""

import os

import pytest

from blender_worker.protocol import parse_launch_args
from blendtorch_ray import BlenderNotFoundError, LaunchConfig
from blendtorch_ray.blender import find_blender


def test_parse_launch_args_splits_ours_from_the_users():
    argv = ["blender", "--background", "--", "--btid", "3", "--btseed", "42", "--btepoch", "1",
            "--btdata", "ipc:///tmp/x", "--width", "64", "--tag", "a"]
    launch, rest = parse_launch_args(argv)
    assert (launch.btid, launch.seed, launch.epoch, launch.data_address) == (3, 42, 1, "ipc:///tmp/x")
    assert rest == ["--width", "64", "--tag", "a"] == launch.remainder
    assert launch.codec == "pickle" and launch.control_address is None


def test_parse_launch_args_requires_instance_id():
    with pytest.raises(SystemExit):
        parse_launch_args(["--", "--btseed", "1"])


def test_config_validates_inputs(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("")
    with pytest.raises(FileNotFoundError, match="Blender script not found"):
        LaunchConfig(script=str(tmp_path / "missing.py"))
    with pytest.raises(FileNotFoundError, match="scene file not found"):
        LaunchConfig(script=str(script), scene=str(tmp_path / "missing.blend"))
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="num_instances"):
            LaunchConfig(script=str(script), num_instances=bad)
    with pytest.raises(ValueError, match="one list of arguments per instance"):
        LaunchConfig(script=str(script), num_instances=2, instance_args=[["a"]])
    with pytest.raises(ValueError, match="transport"):
        LaunchConfig.of(script=str(script), transport="udp")
    cfg = LaunchConfig(script=str(script), num_instances=2, seed=10, instance_args=[["a"], ["b"]])
    assert os.path.isabs(cfg.script)
    assert [cfg.seed_for(b, 0) for b in (0, 1)] == [10, 11]
    assert cfg.seed_for(0, 1) != cfg.seed_for(1, 0) and cfg.args_for(1) == ["b"]


def test_find_blender_defaults_to_the_bpy_wheel_and_explains_missing_binaries(monkeypatch, tmp_path):
    monkeypatch.delenv("BLENDTORCH_BLENDER", raising=False)
    exe = find_blender()
    assert exe.kind == "bpy"
    cmd = exe.command("/s.py", "/scene.blend", ["--btid", "0"])
    assert cmd[1:4] == ["-u", "-m", "blender_worker.bootstrap"] and cmd[-3:] == ["--", "--btid", "0"]
    with pytest.raises(BlenderNotFoundError, match="does not exist"):
        find_blender(str(tmp_path / "no-such-blender"))
    monkeypatch.setenv("BLENDTORCH_BLENDER", str(tmp_path / "also-missing"))
    with pytest.raises(BlenderNotFoundError, match="also-missing"):
        find_blender()
