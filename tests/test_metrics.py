"""Each instance's health reaches Ray's Prometheus endpoint as ray_blendtorch_* gauges."""

import re
import urllib.request

import pytest
import ray

from blendtorch_ray import BlenderLauncher
from blendtorch_ray.metrics import GAUGES
from conftest import TEST_SCRIPTS, wait_until

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def _scrape() -> str:
    text = []
    for node in ray.nodes():
        if node.get("Alive") and node.get("MetricsExportPort"):
            url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            with urllib.request.urlopen(url, timeout=10) as r:
                text.append(r.read().decode())
    return "\n".join(text)


def _value(text: str, name: str, group: str, btid: int):
    for line in text.splitlines():
        if line.startswith(f"ray_blendtorch_{name}{{") and f'group="{group}"' in line and f'btid="{btid}"' in line:
            return float(line.rsplit(" ", 1)[1]), line
    return None, None


def test_instance_health_is_exported_as_ray_metrics(ray_session):
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=2, num_cpus=0.5) as bl:
        it = iter(bl.dataset(timeout=60))
        for _ in range(100):
            next(it)
        health = {h.btid: h for h in bl.health()}
        node = health[0].node_id
        # Gauges are refreshed every 2 s and exported on Ray's metrics report interval.
        assert wait_until(lambda: all((_value(_scrape(), "items", bl.name, b)[0] or 0) >= health[b].items
                                      for b in (0, 1)), timeout=90), _scrape()[-3000:]
        text = _scrape()
        for b in (0, 1):
            items, line = _value(text, "items", bl.name, b)
            assert items >= health[b].items > 0
            assert f'node="{node}"' in line
            for name in GAUGES:
                value, _ = _value(text, name, bl.name, b)
                assert value is not None, f"ray_blendtorch_{name} missing for btid {b}"
            assert _value(text, "restarts", bl.name, b)[0] == 0
            assert _value(text, "dropped_messages", bl.name, b)[0] == 0
            assert _value(text, "rss_bytes", bl.name, b)[0] > 50 * 2**20  # a real Blender's memory
        assert _value(text, "items", bl.name, 2) == (None, None)  # no third instance
        assert re.search(r"# TYPE ray_blendtorch_fps gauge", text)


def test_a_failing_metrics_export_warns_once_and_never_stops(ray_session):
    """Metrics never end a stream: a refresh that fails is warned once (not every 2 s), the
    thread keeps retrying, and a refresh that works again says so."""
    import threading
    import time

    from blendtorch_ray.metrics import METRICS_INTERVAL_S, InstanceMetrics

    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=1, num_cpus=0.5) as bl:
        real = bl.health()[0]
    calls, said, stop = [], [], threading.Event()

    def snapshot():
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise RuntimeError("metrics agent gone")
        return real

    thread = InstanceMetrics("btr-metrics-failing", 0, real.node_id).run(snapshot, stop, said.append)
    assert wait_until(lambda: len(calls) >= 5, timeout=10 * METRICS_INTERVAL_S)
    stop.set()
    thread.join(timeout=3 * METRICS_INTERVAL_S)
    assert not thread.is_alive()
    assert said[0].startswith("metrics export failed (RuntimeError: metrics agent gone); the stream goes on")
    assert said[1:] == ["metrics export works again"]
