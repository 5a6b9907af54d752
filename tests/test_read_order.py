"""ReadOrder: round-robin over ready streams, and a fair start that a ring header does not end.

Real Ray streaming generators on a real actor: each yields its tags after a given delay.
"""

import pytest
import ray

from blendtorch_ray.read_order import ReadOrder

pytestmark = pytest.mark.ray


@ray.remote(num_cpus=0)
class _Source:
    def stream(self, schedule: list):
        """Yield each tag of ``schedule`` (a list of (seconds to wait first, tag))."""
        import time

        for delay, tag in schedule:
            time.sleep(delay)
            yield tag

    def ping(self) -> bool:
        return True


def _stream(schedule: list, sources: list | None = None):
    src = _Source.remote()
    if sources is not None:
        sources.append(src)
    return src.stream.options(num_returns="streaming").remote(schedule)


def _all_yielded(sources: list) -> None:
    """Wait until every source's stream has yielded everything (an actor runs one call at a
    time: its ping answers after the stream's last yield)."""
    ray.get([src.ping.remote() for src in sources], timeout=60)


def _read(order: ReadOrder, n: int, header_of: dict | None = None, timeout: float = 60) -> list:
    """Read ``n`` objects; a stream's first object is a header (not a batch) if ``header_of``
    says so, as a shared-memory stream's is."""
    header_of = dict(header_of or {})
    got = []
    for _ in range(n):
        gen = order.next_ready(timeout)
        assert gen is not None
        tag = ray.get(next(gen))
        got.append(tag)
        if header_of.pop(gen, False):
            continue  # a header: the stream has not delivered a batch yet
        order.delivered(gen)
    return got


def test_the_fair_start_waits_for_a_late_stream_past_its_header(ray_session):
    # A has its batches ready at once; B sends its header at once and its first batch 1.5 s
    # later, as a shared-memory stream whose actor is slow to start. Without the fair start
    # past the header, A's backlog would be read before B's first batch.
    a = _stream([(0, f"a{i}") for i in range(6)])
    b = _stream([(0, "b-header"), (1.5, "b0"), (0, "b1")])
    ray.wait([a, b], num_returns=2, timeout=30)  # A's backlog and B's header are ready
    order = ReadOrder({a: 0, b: 1}, fair_start_s=30)
    got = _read(order, 5, header_of={b: True})
    assert sorted(got[:2]) == ["a0", "b-header"]
    assert got[2:] == ["b0", "a1", "b1"]


def test_ready_streams_are_read_round_robin(ray_session):
    sources = []
    a = _stream([(0, f"a{i}") for i in range(4)], sources)
    b = _stream([(0, f"b{i}") for i in range(4)], sources)
    _all_yielded(sources)
    order = ReadOrder({a: 0, b: 1}, fair_start_s=30)
    assert _read(order, 6) == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert order.btids() == [0, 1]  # b was read last: it is at the back of the order


def test_a_stream_that_never_delivers_holds_up_only_the_fair_start(ray_session):
    a = _stream([(0, f"a{i}") for i in range(3)])
    silent = _stream([(600, "never read")])
    order = ReadOrder({silent: 1, a: 0}, fair_start_s=0.5)
    assert _read(order, 3) == ["a0", "a1", "a2"]
    assert order.next_ready(timeout=30) is a  # its end is ready
    with pytest.raises(StopIteration):
        next(a)
    assert order.remove(a) == 0 and order.btids() == [1] and bool(order)
    assert order.next_ready(timeout=0.2) is None  # only the silent stream is left: nothing ready
    assert order.remove(silent) == 1 and not order
    ray.cancel(silent)
