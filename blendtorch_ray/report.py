"""Human-readable tables of instance health."""

from __future__ import annotations

from typing import Sequence

from blendtorch_ray.actor import InstanceHealth


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
