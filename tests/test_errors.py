"""Errors that cross Ray reach the user as the project's own class, message first."""

import pytest

from blendtorch_ray import BlenderCrashedError, BlenderLauncher, BlenderStartError
from conftest import TEST_SCRIPTS

pytestmark = [pytest.mark.blender, pytest.mark.ray]

CRASH = """
import os, time
import numpy as np
import blender_worker as bw
launch, _ = bw.parse_launch_args()
pub = bw.DataPublisher(launch)
for i in range(20):
    pub.publish(x=np.zeros(4))
print("crashing on purpose", flush=True)
time.sleep(0.5)
os._exit(3)
"""


def _check_own_error(err, cls, tail_text):
    assert type(err) is cls  # not Ray's RayTaskError(cls) dual class
    text = str(err)
    assert text.splitlines()[0].startswith("Blender instance 0: "), text.splitlines()[0]
    assert "\x1b[" not in text and all("\x1b[" not in n for n in getattr(err, "__notes__", []))
    assert tail_text in err.log_tail and tail_text in text
    assert err.btid == 0


def test_crash_during_stream_raises_blender_crashed_error_itself(ray_session, write_script):
    with BlenderLauncher(script=write_script(CRASH), max_restarts=0) as bl:
        with pytest.raises(BlenderCrashedError) as info:
            for _ in bl.dataset(timeout=60):
                pass
    _check_own_error(info.value, BlenderCrashedError, "crashing on purpose")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "BlenderActor.stream" in notes  # Ray's traceback follows below the message


def test_start_failure_raises_blender_start_error_itself(ray_session):
    with pytest.raises(BlenderStartError) as info:
        BlenderLauncher(script=str(TEST_SCRIPTS / "raises_on_start.py"), prestart=False).start()
    _check_own_error(info.value, BlenderStartError, "boom from the test script")


def test_reserved_item_key_is_refused_in_publish(ray_session, write_script):
    script = write_script("""
        import blender_worker as bw
        launch, _ = bw.parse_launch_args()
        pub = bw.DataPublisher(launch)
        pub.publish(value=1, seq=7)
    """)
    with BlenderLauncher(script=script, max_restarts=0) as bl:
        with pytest.raises(BlenderCrashedError) as info:
            list(bl.dataset(timeout=60))
    tail = info.value.log_tail
    assert "ValueError" in tail and "['seq']" in tail and "reserved" in tail


@pytest.mark.ray
def test_a_start_without_free_resources_names_the_actors_alive(ray_session):
    import ray

    from blendtorch_ray.placement import resource_holders

    @ray.remote(num_cpus=0)
    class Holder:
        def ping(self) -> bool:
            return True

    holder = Holder.options(name="left-running", namespace="elsewhere").remote()
    ray.get(holder.ping.remote())
    try:
        assert "elsewhere/left-running" in resource_holders()
        assert resource_holders(limit=0).endswith(" more") and "left-running" not in resource_holders(limit=0)
    finally:
        ray.kill(holder)
