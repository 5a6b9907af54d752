"""Shared helpers for the benchmark scripts: timing, medians and table printing."""

from __future__ import annotations

from typing import Iterable, Sequence


def zmq_sender(address: str, n: int, shape: tuple) -> None:
    """The sending half of the bare pyzmq reference pair: connect a PUSH socket to ``address``
    and send ``n`` frames of ``shape`` uint8 (plus an empty JSON header), zero-copy, at most 4
    queued; run it in a spawned process."""
    import numpy as np
    import zmq

    frame = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 4)
    s.connect(address)
    for _ in range(n):
        s.send_multipart([b"{}", frame], copy=False)
    s.close(linger=-1)
    ctx.term()


def table(headers: Sequence[str], rows: Iterable[Sequence], title: str = "") -> str:
    """A plain fixed-width table (markdown-compatible)."""
    rows = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = []
    if title:
        out.append(f"\n{title}")
    out.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(out)


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:,.1f}" if abs(c) >= 10 else f"{c:.3f}"
    return str(c)
