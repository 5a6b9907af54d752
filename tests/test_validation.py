"""Times, counts and sizes are validated at construction, with a message naming the argument,
the bad value and what is allowed. Fast: no Blender and no Ray are started."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import ray

from blendtorch_ray import validation
from blendtorch_ray.cli import build_parser
from blendtorch_ray.config import LaunchConfig, PlacementConfig, StreamConfig, SupervisionConfig
from blendtorch_ray.dataset import RemoteIterableDataset
from blendtorch_ray.env import EnvConfig
from blendtorch_ray.launcher import BlenderLauncher
from blendtorch_ray.ray_data import ReadOptions

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module", autouse=True)
def _no_ray_running():
    """These tests check that nothing starts Ray: begin without one (an earlier test module of
    the session may have left its Ray running; the next test that needs Ray starts it again)."""
    ray.shutdown()
    yield


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "scene.py"
    path.write_text("# a Blender script (never run by these tests)\n")
    return str(path)


def _check_message(exc_info, owner: str, fragment: str) -> None:
    msg = str(exc_info.value)
    assert msg.startswith(f"{owner}("), msg
    assert fragment in msg, msg
    assert "must be" in msg, msg


# -- the helpers ------------------------------------------------------------------------------------
def test_message_names_argument_value_allowed_and_fix():
    with pytest.raises(ValueError) as exc_info:
        validation.positive("ready_timeout", -1, owner="LaunchConfig", unit="seconds", example=120)
    assert str(exc_info.value) == (
        "LaunchConfig(ready_timeout=-1): must be a number of seconds > 0; pass e.g. ready_timeout=120"
    )


@pytest.mark.parametrize(
    "check, value, exc",
    [
        (validation.positive, 0, ValueError),
        (validation.positive, -0.5, ValueError),
        (validation.positive, NAN, ValueError),
        (validation.positive, INF, ValueError),
        (validation.positive, True, TypeError),
        (validation.positive, "5", TypeError),
        (validation.positive, None, TypeError),
        (validation.non_negative, -1e-9, ValueError),
        (validation.non_negative, [], TypeError),
        (validation.optional_positive, 0, ValueError),
        (validation.optional_positive, "1", TypeError),
        (validation.positive_int, 0, ValueError),
        (validation.positive_int, 2.0, ValueError),
        (validation.positive_int, 1.5, ValueError),
        (validation.positive_int, False, TypeError),
        (validation.non_negative_int, -1, ValueError),
        (validation.optional_positive_int, 0, ValueError),
    ],
)
def test_helpers_reject(check, value, exc):
    with pytest.raises(exc) as exc_info:
        check("x", value, owner="Thing")
    assert str(exc_info.value).startswith(f"Thing(x={value!r}): must be ")


@pytest.mark.parametrize(
    "check, value",
    [
        (validation.positive, 1e-3),
        (validation.positive, 7),
        (validation.non_negative, 0),
        (validation.non_negative, 0.0),
        (validation.optional_positive, None),
        (validation.optional_positive, 2.5),
        (validation.positive_int, 1),
        (validation.positive_int, np.int64(3)),
        (validation.non_negative_int, 0),
        (validation.optional_positive_int, None),
    ],
)
def test_helpers_accept_and_return_the_value(check, value):
    assert check("x", value) is value


def test_integer_minimum_and_one_of_and_resources():
    assert validation.integer("n", -1, minimum=-1) == -1
    with pytest.raises(ValueError, match=r"n=-2\): must be an integer >= -1"):
        validation.integer("n", -2, minimum=-1, owner="T")
    assert validation.one_of("mode", "b", ("a", "b")) == "b"
    with pytest.raises(ValueError, match=r"^mode='c': must be one of 'a', 'b'; pass e.g. mode='a'$"):
        validation.one_of("mode", "c", ("a", "b"))
    assert validation.resource_amounts("resources", {"blender": 1, "x": 0.5}) == {"blender": 1, "x": 0.5}
    with pytest.raises(TypeError, match="key 3 is not a str"):
        validation.resource_amounts("resources", {3: 1})
    with pytest.raises(TypeError, match=r"resources\['blender'\]='1'"):
        validation.resource_amounts("resources", {"blender": "1"})


def test_validation_module_imports_nothing_heavy():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "blendtorch_ray", "validation.py")
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('v', {path!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "mod.positive('t', 1)\n"
        "print(sorted(m for m in ('ray', 'torch', 'zmq', 'numpy', 'blendtorch_ray') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- LaunchConfig -----------------------------------------------------------------------------------
LAUNCH_BAD = [
    ("num_instances", 0, ValueError, None),
    ("num_instances", 1.5, ValueError, None),
    ("num_instances", "2", TypeError, None),
    ("seed", -1, ValueError, None),
    ("seed", 0.5, ValueError, None),
    ("seed", True, TypeError, None),
    ("batch_size", 0, ValueError, None),
    ("max_batch_delay", -0.1, ValueError, None),
    ("max_batches_in_flight", 0, ValueError, None),
    ("ready_timeout", -1, ValueError, None),
    ("ready_timeout", 0, ValueError, None),
    ("ready_timeout", INF, ValueError, None),
    ("ready_timeout", "120", TypeError, None),
    ("max_restarts", -1, ValueError, None),
    ("max_restarts", 2.5, ValueError, None),
    ("max_actor_restarts", -2, ValueError, None),
    ("restart_backoff", -1, ValueError, None),
    ("recycle_after_items", 0, ValueError, None),
    ("recycle_after_items", 10.5, ValueError, None),
    ("recycle_rss_mb", 0, ValueError, None),
    ("recycle_rss_mb", NAN, ValueError, None),
    ("ring_slot_mb", 0, ValueError, None),
    ("item_slot_mb", -1, ValueError, None),
    ("max_message_mb", 0, ValueError, None),
    ("num_cpus", -1, ValueError, None),
    ("num_gpus", -0.5, ValueError, None),
    ("num_gpus", None, TypeError, None),
    ("resources", {"blender": -1}, ValueError, "resources['blender']=-1"),
    ("resources", [("blender", 1)], TypeError, None),
    ("transport", "udp", ValueError, None),
    ("codec", "msgpack", ValueError, None),
]


def _owner(field: str) -> str:
    """The config class that owns a launch option (see blendtorch_ray.config)."""
    import dataclasses

    for cls in (PlacementConfig, SupervisionConfig, StreamConfig):
        if field in {f.name for f in dataclasses.fields(cls)}:
            return cls.__name__
    return "LaunchConfig"


@pytest.mark.parametrize("field, bad, exc, fragment", LAUNCH_BAD)
def test_launch_config_rejects(script, field, bad, exc, fragment):
    with pytest.raises(exc) as exc_info:
        LaunchConfig.of(script=script, **{field: bad})
    _check_message(exc_info, _owner(field), fragment or f"{field}={bad!r}")


def test_launch_config_validates_again_on_replace_through_the_launcher(script):
    cfg = LaunchConfig(script=script)
    with pytest.raises(ValueError, match=r"SupervisionConfig\(ready_timeout=-1\)"):
        BlenderLauncher(cfg, ready_timeout=-1)


def test_launch_options_by_name_land_in_their_group_and_unknown_ones_are_refused(script):
    cfg = LaunchConfig.of(script=script, num_instances=2, batch_size=3, max_restarts=0, num_gpus=0.5, prestart=False)
    assert (cfg.num_instances, cfg.stream.batch_size, cfg.supervision.max_restarts) == (2, 3, 0)
    assert cfg.placement.num_gpus == 0.5 and cfg.supervision.prestart is False
    again = cfg.with_options(ready_timeout=5, seed=4)
    assert (again.supervision.ready_timeout, again.supervision.max_restarts, again.seed) == (5, 0, 4)
    assert again.stream.batch_size == 3  # untouched options of the same group are kept
    with pytest.raises(TypeError, match="unknown launch option batchsize=3"):
        LaunchConfig.of(script=script, batchsize=3)
    with pytest.raises(TypeError, match="must be a StreamConfig"):
        LaunchConfig(script=script, stream={"batch_size": 3})


def test_launch_config_accepts_defaults_and_edge_values(script):
    cfg = LaunchConfig(script=script)
    assert (cfg.num_instances, cfg.stream.batch_size, cfg.supervision.ready_timeout,
            cfg.supervision.max_actor_restarts) == (1, 8, 120.0, 3)
    cfg = LaunchConfig.of(
        script=script,
        num_instances=np.int64(2),
        seed=2**40,
        max_batch_delay=0,
        max_restarts=0,
        max_actor_restarts=-1,
        restart_backoff=0,
        recycle_after_items=1,
        recycle_rss_mb=512,
        ring_slot_mb=0.5,
        num_cpus=0,
        num_gpus=0.25,
        resources={"blender": 1, "other": 0},
        codec="json",
        transport="tcp",
    )
    assert cfg.supervision.max_actor_restarts == -1 and cfg.placement.num_cpus == 0
    assert cfg.placement.resources == {"blender": 1, "other": 0}


# -- EnvConfig --------------------------------------------------------------------------------------
ENV_BAD = [
    ("real_time_fps", 0, ValueError),
    ("real_time_fps", -30, ValueError),
    ("btid", -1, ValueError),
    ("btid", 1.5, ValueError),
    ("seed", -3, ValueError),
    ("start_timeout", 0, ValueError),
    ("start_timeout", NAN, ValueError),
    ("step_timeout", -2, ValueError),
    ("step_timeout", "60", TypeError),
    ("transport", "udp", ValueError),
]


@pytest.mark.parametrize("field, bad, exc", ENV_BAD)
def test_env_config_rejects(script, field, bad, exc):
    with pytest.raises(exc) as exc_info:
        EnvConfig(script=script, **{field: bad})
    _check_message(exc_info, "EnvConfig", f"{field}={bad!r}")


def test_env_config_accepts_valid_values(script):
    cfg = EnvConfig(script=script, real_time_fps=None, btid=0, seed=0, start_timeout=0.5, step_timeout=1)
    assert cfg.step_timeout == 1
    assert EnvConfig(script=script, real_time=True, real_time_fps=24).real_time_fps == 24


# -- RemoteIterableDataset (constructed without Ray running) -----------------------------------------
DATASET_BAD = [
    ("num_instances", 0, ValueError),
    ("max_items", -3, ValueError),
    ("max_items", 2.5, ValueError),
    ("max_items", "10", TypeError),
    ("timeout", -5, ValueError),
    ("timeout", 0, ValueError),
    ("timeout", INF, ValueError),
    ("max_batches_in_flight", 0, ValueError),
    ("max_batches_in_flight", 1.5, ValueError),
    ("reconnect_timeout", -1, ValueError),
    ("reconnect_timeout", None, TypeError),
]


@pytest.mark.parametrize("field, bad, exc", DATASET_BAD)
def test_remote_iterable_dataset_rejects(field, bad, exc):
    kwargs = {"group": "g", "namespace": "ns", "num_instances": 2, field: bad}
    with pytest.raises(exc) as exc_info:
        RemoteIterableDataset(**kwargs)
    _check_message(exc_info, "RemoteIterableDataset", f"{field}={bad!r}")


def test_remote_iterable_dataset_accepts_valid_values_without_ray():
    ds = RemoteIterableDataset("g", "ns", 2, max_items=0, timeout=None, max_batches_in_flight=1, reconnect_timeout=0.5)
    assert (ds.max_items, ds.timeout, ds.max_batches_in_flight) == (0, None, 1)
    assert len(RemoteIterableDataset("g", "ns", 1, max_items=5)) == 5
    assert not ray.is_initialized()


# -- BlenderLauncher.dataset() / ray_dataset(): raise before anything starts ---------------------------
@pytest.fixture
def launcher(script, tmp_path):
    # A Blender that does not exist: if validation did not come first, start() would fail
    # with BlenderNotFoundError instead of the ValueError the tests expect.
    return BlenderLauncher(script=script, blender=str(tmp_path / "no-such-blender"))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"timeout": -5}, "timeout=-5"),
        ({"timeout": 0}, "timeout=0"),
        ({"max_items": -3}, "max_items=-3"),
        ({"max_batches_in_flight": 0}, "max_batches_in_flight=0"),
        ({"reconnect_timeout": -1}, "reconnect_timeout=-1"),
    ],
)
def test_launcher_dataset_rejects_before_starting(launcher, kwargs, fragment):
    with pytest.raises(ValueError) as exc_info:
        launcher.dataset(**kwargs)
    _check_message(exc_info, "BlenderLauncher.dataset", fragment)
    assert not launcher._started and not launcher.actors
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "num_items, options, owner, fragment",
    [
        (0, {}, "BlenderLauncher.ray_dataset", "num_items=0"),
        (-4, {}, "BlenderLauncher.ray_dataset", "num_items=-4"),
        (2.5, {}, "BlenderLauncher.ray_dataset", "num_items=2.5"),
        (10, {"timeout": -1}, "ReadOptions", "timeout=-1"),
        (10, {"block_size": 0}, "ReadOptions", "block_size=0"),
        (10, {"max_batches_in_flight": 0}, "ReadOptions", "max_batches_in_flight=0"),
        (10, {"item_nbytes": -8}, "ReadOptions", "item_nbytes=-8"),
    ],
)
def test_launcher_ray_dataset_rejects_before_starting(launcher, num_items, options, owner, fragment):
    with pytest.raises(ValueError) as exc_info:
        launcher.ray_dataset(num_items, **options)
    _check_message(exc_info, owner, fragment)
    assert not launcher._started and not launcher.actors
    assert not ray.is_initialized()


# -- ReadOptions --------------------------------------------------------------------------------------
READ_BAD = [
    ("block_size", 0, ValueError),
    ("block_size", 8.0, ValueError),
    ("timeout", -1, ValueError),
    ("timeout", "60", TypeError),
    ("max_batches_in_flight", 0, ValueError),
    ("item_nbytes", 0, ValueError),
    ("item_nbytes", 1.5, ValueError),
    ("objects", "json", ValueError),
]


@pytest.mark.parametrize("field, bad, exc", READ_BAD)
def test_read_options_rejects(field, bad, exc):
    with pytest.raises(exc) as exc_info:
        ReadOptions(**{field: bad})
    _check_message(exc_info, "ReadOptions", f"{field}={bad!r}")


def test_read_options_accepts_valid_values():
    opts = ReadOptions(block_size=1, timeout=None, max_batches_in_flight=1, item_nbytes=4096, objects="drop")
    assert (opts.block_size, opts.timeout, opts.item_nbytes) == (1, None, 4096)


# -- the command line -----------------------------------------------------------------------------------
CLI_BAD = [
    (["demo"], "--instances", "0"),
    (["demo"], "--items", "-3"),
    (["demo"], "--batch-size", "eight"),
    (["demo"], "--width", "0"),
    (["demo"], "--height", "-480"),
    (["record", "-o", "out"], "--items", "0"),
    (["record", "-o", "out"], "--items", "2.5"),
    (["record", "-o", "out", "--items", "4"], "--instances", "-1"),
    (["record", "-o", "out", "--items", "4"], "--shard-items", "0"),
    (["doctor"], "--timeout", "-1"),
    (["doctor"], "--timeout", "nan"),
    (["doctor"], "--timeout", "0"),
    (["doctor"], "--jobs", "0"),
]


@pytest.mark.parametrize("prefix, flag, value", CLI_BAD)
def test_cli_rejects_bad_numbers_naming_the_flag(capsys, prefix, flag, value):
    with pytest.raises(SystemExit) as exc_info:
        build_parser().parse_args([*prefix, flag, value])
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be " in err, err
    assert repr(value) in err, err


def test_cli_accepts_valid_numbers():
    args = build_parser().parse_args(["demo", "--items", "5", "--instances", "1", "--width", "32"])
    assert (args.items, args.instances, args.width, args.height) == (5, 1, 32, 480)
    args = build_parser().parse_args(["doctor", "--timeout", "2.5", "--jobs", "1"])
    assert math.isclose(args.timeout, 2.5) and args.jobs == 1
    args = build_parser().parse_args(["record", "-o", "out", "--items", "3"])
    assert (args.items, args.instances, args.shard_items) == (3, 1, 1000)
