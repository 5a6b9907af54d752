"""Each instance's health as Ray metrics (``ray.util.metrics``), so that Ray's dashboard and
its Prometheus endpoint show them.

Gauges, named ``ray_blendtorch_<name>`` in Prometheus (Ray adds the ``ray_`` prefix), with
the labels ``group``, ``btid`` and ``node``. The actor refreshes them from its health every
``METRICS_INTERVAL_S`` seconds; Ray's metrics agent exports them from every node on its
metrics port (``ray.nodes()[i]["MetricsExportPort"]``, or ``ray start --metrics-export-port``).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from blendtorch_ray.health import InstanceHealth

log = logging.getLogger("blendtorch_ray")

METRICS_INTERVAL_S = 2.0
"""How often an actor refreshes its gauges."""

GAUGES = {
    "items": "Items received from Blender (all epochs)",
    "fps": "Items per second between the first and the latest item",
    "restarts": "Restarts of Blender after crashes",
    "recycles": "Planned Blender replacements (recycle_after_items / recycle_rss_mb)",
    "queue_depth": "Items received but not yet handed over in a batch",
    "dropped_messages": "Malformed, oversized or foreign messages dropped",
    "lost_items": "Items Blender reported sent that never arrived",
    "rss_bytes": "Resident memory of the Blender process",
}
"""Gauge name (an `InstanceHealth` field) -> description."""

TAG_KEYS = ("group", "btid", "node")


class InstanceMetrics:
    """The gauges of one instance.

    Args:
        group: The group's name (``LaunchConfig.name``).
        btid: The instance id.
        node_id: The Ray node the instance runs on.
    """

    def __init__(self, group: str, btid: int, node_id: str) -> None:
        from ray.util.metrics import Gauge

        tags = {"group": group, "btid": str(btid), "node": node_id}
        self.gauges = {name: Gauge(f"blendtorch_{name}", description=text, tag_keys=TAG_KEYS).set_default_tags(tags)
                       for name, text in GAUGES.items()}

    def update(self, health: InstanceHealth) -> None:
        """Set every gauge from a health snapshot.

        Args:
            health: The instance's current `InstanceHealth`.
        """
        for name, gauge in self.gauges.items():
            gauge.set(float(getattr(health, name)))

    def run(self, snapshot: Callable[[], InstanceHealth], stop: threading.Event,
            warn: Optional[Callable[[str], None]] = None) -> threading.Thread:
        """Refresh the gauges every ``METRICS_INTERVAL_S`` seconds on a daemon thread.

        Metrics never stop the stream: a refresh that fails (Ray's metrics agent gone, a
        snapshot that raises) is reported once through ``warn`` and retried at the next
        interval; one that works again after failures is reported too.

        Args:
            snapshot: Returns the instance's current health.
            stop: Set it to end the thread.
            warn: Called with a one-line text on the first failure (and on recovery); None:
                logged only.

        Returns:
            The started thread.
        """
        say = warn or log.warning

        def loop() -> None:
            failing = False
            while True:
                try:
                    self.update(snapshot())
                    if failing:
                        say("metrics export works again")
                    failing = False
                except Exception as exc:  # noqa: BLE001 - metrics must never end the stream
                    if not failing:
                        say(f"metrics export failed ({type(exc).__name__}: {exc}); the stream goes on, "
                            f"retrying every {METRICS_INTERVAL_S:g} s")
                    failing = True
                if stop.wait(METRICS_INTERVAL_S):
                    return

        thread = threading.Thread(target=loop, name="btr-metrics", daemon=True)
        thread.start()
        return thread
