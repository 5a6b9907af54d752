"""Instance health: the snapshot an actor reports (``InstanceHealth``) and its table.

Imports nothing but the standard library, so that tools that only show health (the CLI's
``health`` command, the demo) need no Ray to use the type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence


MAX_WARNINGS = 20
"""How many recent warnings an actor keeps for ``InstanceHealth.warnings``."""


@dataclass
class InstanceHealth:
    """A snapshot of one instance, as reported by ``BlenderActor.health()``."""

    btid: int
    """Instance id."""
    node_id: str
    """Ray node the actor (and its Blender) runs on."""
    pid: Optional[int]
    """Blender's pid while it runs, else None."""
    alive: bool
    """Whether Blender is running."""
    items: int
    """Items received from Blender in total (all epochs)."""
    batches: int
    """Batches handed to consumers."""
    fps: float
    """Items per second between the first and the latest item."""
    restarts: int
    """Restarts after crashes (see ``LaunchConfig.max_restarts``)."""
    epoch: int
    """Current seed epoch (0 at start, +1 per restart or recycle)."""
    queue_depth: int
    """Items received but not yet handed over in a batch."""
    dropped_messages: int
    """Malformed, oversized or foreign messages dropped (each also warned about)."""
    last_error: Optional[str]
    """The latest warning or error, if any."""
    log_path: str
    """Blender's log file on the actor's node."""
    rss_bytes: int = 0
    """Resident memory of the Blender process in bytes (0 when it is not running)."""
    recycles: int = 0
    """Planned Blender replacements (recycle_after_items / recycle_rss_mb)."""
    lost_items: int = 0
    """Items Blender reported sent (end marker) that never arrived."""
    niceness: Optional[int] = None
    """Blender's scheduling niceness (inherited from Ray's worker niceness; 0 in local mode)."""
    warnings: list = field(default_factory=list)
    """The latest warnings (at most ``MAX_WARNINGS``), oldest first."""
    render_device: Optional[str] = None
    """Where Blender renders: "CPU" or "GPU" (``RenderSettings.device``; see
    ``blender_worker.devices``); None until its ``Renderer`` has said (Eevee / Workbench: after
    the first frame) or when the script renders without one. Software GL counts as "CPU"."""
    render_backend: Optional[str] = None
    """Cycles on the GPU: its backend and devices ("OPTIX: NVIDIA A10G"); else None."""
    gl_renderer: Optional[str] = None
    """Eevee / Workbench: Blender's GL renderer string (``gpu.platform.renderer_get()``, e.g.
    "llvmpipe (LLVM 15.0.6, 256 bits)" for software GL); None for Cycles or before the first frame."""


def health_table(rows: Sequence[InstanceHealth]) -> str:
    """A fixed-width table: one line per instance."""
    head = f"{'btid':>4} {'alive':>5} {'pid':>7} {'items':>7} {'fps':>7} {'restarts':>8} {'queue':>5} {'rss MiB':>8}  last error"
    lines = [head, "-" * len(head)]
    for h in rows:
        lines.append(
            f"{h.btid:>4} {str(h.alive):>5} {str(h.pid or '-'):>7} {h.items:>7} {h.fps:>7.1f} "
            f"{h.restarts:>8} {h.queue_depth:>5} {h.rss_bytes / 2**20:>8.0f}  {h.last_error or ''}"
        )
    return "\n".join(lines)


HTML_COLUMNS = ("btid", "alive", "pid", "node", "items", "fps", "restarts", "queue", "rss MiB", "last error")
"""Columns of `health_html`."""


def health_html(summary: str, rows: Optional[Sequence[InstanceHealth]], why: str = "") -> str:
    """An HTML table for notebooks (``BlenderLauncher._repr_html_``): one row per instance.

    Args:
        summary: The line above the table (the launcher's name and state).
        rows: The instances' health, or None when it is not available.
        why: Shown instead of the table when ``rows`` is None.

    Returns:
        HTML text, every value escaped.
    """
    from html import escape

    head = f"<p><code>{escape(summary)}</code></p>"
    if rows is None:
        return head + f"<p><i>{escape(why)}</i></p>"
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in (
            h.btid, h.alive, h.pid or "-", (h.node_id or "")[:8], h.items, f"{h.fps:.1f}", h.restarts,
            h.queue_depth, f"{h.rss_bytes / 2**20:.0f}", h.last_error or "",
        )) + "</tr>"
        for h in rows
    )
    header = "".join(f"<th>{c}</th>" for c in HTML_COLUMNS)
    return head + f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


REPR_HEALTH_TIMEOUT_S = 5.0
"""How long ``repr(launcher)`` (a notebook's display of it) waits for the instances' health."""


def health_for_display(actors: list, started: bool) -> tuple:
    """A group's health for ``repr``: ``(rows, "")`` or ``(None, why not)``, never raising or
    waiting more than ``REPR_HEALTH_TIMEOUT_S``.

    Args:
        actors: The instances' actor handles.
        started: Whether the group was started.

    Returns:
        ``(list of InstanceHealth or None, reason)``.
    """
    import ray

    if not actors:
        return None, "not started" if not started else "no instances"
    try:
        return ray.get([a.health.remote() for a in actors], timeout=REPR_HEALTH_TIMEOUT_S), ""
    except Exception as exc:  # a repr must not raise: show why there is no health instead
        return None, f"health unavailable: {type(exc).__name__}: {exc}".splitlines()[0]


def snapshot(sup: Any, node_id: str) -> InstanceHealth:
    """The `InstanceHealth` of a ``blendtorch_ray.supervisor.Supervisor`` now.

    Args:
        sup: The instance's supervisor.
        node_id: The Ray node it runs on.

    Returns:
        The snapshot.
    """
    fps = 0.0
    if sup._t_first is not None and sup._t_last and sup._t_last > sup._t_first:
        fps = (sup.items - 1) / (sup._t_last - sup._t_first)
    alive = sup.process.alive()
    return InstanceHealth(
        btid=sup.btid, node_id=node_id, pid=sup.process.pid if alive else None, alive=alive,
        items=sup.items, batches=sup.batches, fps=fps, restarts=sup.restarts, epoch=sup.epoch,
        queue_depth=sup.partial, dropped_messages=sup.dropped, last_error=sup.last_error,
        log_path=sup.log_path, rss_bytes=sup.process.rss_bytes(), recycles=sup.recycles,
        lost_items=sup.lost, niceness=sup.process.niceness(), warnings=list(sup.warnings),
        **_device_fields(sup.device),
    )


def _device_fields(device: Optional[dict]) -> dict:
    """``render_device``, ``render_backend`` and ``gl_renderer`` of `InstanceHealth` from a
    ``KIND_INFO`` device dict (None: Blender has not said)."""
    if not device:
        return {}
    backend = device.get("backend")
    names = ", ".join(device.get("devices") or ())
    return {"render_device": device.get("device"), "gl_renderer": device.get("gl_renderer"),
            "render_backend": f"{backend}: {names}" if backend else None}
