"""The wire protocol module: reserved item keys."""

import pytest

from blender_worker.protocol import RESERVED_ITEM_KEYS, check_item_keys


@pytest.mark.parametrize("key", RESERVED_ITEM_KEYS)
def test_every_reserved_key_is_refused_by_name(key):
    with pytest.raises(ValueError) as info:
        check_item_keys({"image": 1, key: 2})
    assert repr(key) in str(info.value)
    assert all(k in str(info.value) for k in RESERVED_ITEM_KEYS)  # the message lists the set


def test_user_keys_pass():
    check_item_keys({"image": 1, "sequence": 2, "btid_of_parent": 3})


def test_launch_flags_round_trip_through_the_parser():
    from blender_worker.protocol import EnvArgs, LaunchArgs, parse_env_args, parse_launch_args

    sent = LaunchArgs(btid=3, seed=1234, epoch=2, data_address="ipc:///tmp/x/data.sock",
                      control_address="tcp://127.0.0.1:5555", parent_pid=0, ack_path="/tmp/x/end-ack",
                      codec="json", slots=("/dev/shm/s", 40, 1 << 20))
    got, rest = parse_launch_args(["--", *sent.to_argv(), "--mine", "7"])
    assert rest == ["--mine", "7"]
    assert got == LaunchArgs(**{**sent.__dict__, "remainder": ["--mine", "7"]})
    env = EnvArgs(real_time=True, real_time_fps=25.0)
    launch, env_got, rest = parse_env_args(["--", *sent.to_argv(), *env.to_argv(), "x"])
    assert env_got == env and rest == ["x"] and launch.btid == 3
    assert EnvArgs().to_argv() == []
