"""The cross-node tcp link (blendtorch_ray/tcp_link.py).

Both ends are checked over real tcp sockets (frames, order, the token, a lost batch,
an unreachable consumer); then on a real ``ray.cluster_utils.Cluster`` with real Blender:
a consumer on the head node reads instances on two other nodes over the link, gap-free; with
``cross_node="object_store"`` every batch goes through the object store; and an actor that
cannot reach the consumer's port sends through the object store and says so in ``health()``.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from blendtorch_ray import BlenderLauncher
from blendtorch_ray import tcp_link, tcp_wire
from blendtorch_ray.tcp_link import TcpInbox, TcpLinkLost, TcpOutbox, is_tcp_batch, open_outbox
from conftest import TEST_SCRIPTS


def _batch(n: int, first: int = 0) -> list:
    return [{"image": np.full((48, 64, 4), first + i, np.uint8), "seq": first + i, "note": f"item {first + i}"}
            for i in range(n)]


def _link():
    inbox = TcpInbox("127.0.0.1")
    outbox = TcpOutbox(inbox.offer())
    assert outbox.wait_connected(10)
    return inbox, outbox


def test_batches_cross_in_order_with_their_arrays():
    inbox, outbox = _link()
    try:
        descs = [outbox.send(_batch(3, first=3 * k)) for k in range(4)]
        assert [d[tcp_link.TCP_BATCH] for d in descs] == [0, 1, 2, 3]
        assert all(is_tcp_batch(d) and d["items"] == 3 for d in descs)
        for k, d in enumerate(descs):
            got = inbox.take(d, timeout=10)
            assert [item["seq"] for item in got] == [3 * k, 3 * k + 1, 3 * k + 2]
            for item in got:
                assert item["image"].shape == (48, 64, 4) and item["image"].dtype == np.uint8
                assert (item["image"] == item["seq"]).all()
                assert item["note"] == f"item {item['seq']}"
        assert inbox.dropped == 0
    finally:
        inbox.close()
        outbox.close()


def test_a_received_batch_is_collated_without_another_copy():
    from blendtorch_ray.loader import collate

    inbox, outbox = _link()
    try:
        got = inbox.take(outbox.send(_batch(4)), timeout=10)
        batch = collate(got)
        # the four images are rows of the one received block, which collate returns as is
        assert batch["image"].shape == (4, 48, 64, 4)
        assert batch["image"].data_ptr() == got[0]["image"].__array_interface__["data"][0]
        assert batch["image"][2].eq(2).all()
        assert batch["seq"].tolist() == [0, 1, 2, 3]
        # an item's array still writable and its own row
        got[1]["image"][:] = 9
        assert batch["image"][1].eq(9).all() and batch["image"][0].eq(0).all()
    finally:
        inbox.close()
        outbox.close()


class _Evil:
    """Unpickling this creates a file: proof that a message was decoded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_message_without_the_stream_token_is_dropped_unread(tmp_path):
    import socket

    from blender_worker import codec

    inbox, outbox = _link()
    marker = tmp_path / "unpickled"
    host, port = inbox.address[len("tcp://"):].rsplit(":", 1)
    rogues = [socket.create_connection((host, int(port))) for _ in range(3)]
    try:
        # A whole message, as the actor would send it, but with a wrong token: its pickle
        # would create the marker file if it were ever decoded.
        frames = [bytes(memoryview(f).cast("B")) for f in codec.encode([_Evil(str(marker))])]
        head = tcp_wire.PREFIX.pack(b"0" * 16, 0, len(frames), 0) + b"".join(tcp_wire.LENGTH.pack(len(f)) for f in frames)
        rogues[0].sendall(head + b"".join(frames))
        rogues[1].sendall(b"short")  # malformed, then closed
        rogues[1].close()
        rogues[2].sendall(b"\xff" + b"\0" * 8 + b"\x7f")  # a ZeroMQ greeting's start: then silence
        # Waiting for batch 0 before it is sent reads what the rogues sent, and drops both
        # complete ones; the silent one neither holds up the wait nor counts yet.
        with pytest.raises(TcpLinkLost):
            inbox.take({tcp_link.TCP_BATCH: 0, "items": 2}, timeout=3)
        assert inbox.dropped == 2
        desc = outbox.send(_batch(2))
        got = inbox.take(desc, timeout=10)
        assert [item["seq"] for item in got] == [0, 1]
        assert inbox.dropped == 2
        with pytest.raises(OSError):  # the inbox closed the connection with the wrong token
            for _ in range(100):
                rogues[0].sendall(b"x" * 65536)
        assert not marker.exists()  # the rogue pickle was never loaded
        pickle.loads(pickle.dumps(_Evil(str(marker))))  # (and it would have been: the marker appears)
        assert marker.exists()
    finally:
        for r in rogues:
            r.close()
        inbox.close()
        outbox.close()


def test_an_announced_batch_that_never_comes_is_a_lost_link():
    inbox = TcpInbox("127.0.0.1")
    try:  # nobody ever sends: the whole timeout
        with pytest.raises(TcpLinkLost, match=r"batch 0 announced by the actor did not arrive on tcp://127\.0\.0\.1:\d+ within 1s"):
            inbox.take({tcp_link.TCP_BATCH: 0, "items": 8}, timeout=1)
    finally:
        inbox.close()


def test_a_dropped_connection_ends_the_wait_at_once():
    inbox, outbox = _link()
    try:
        got = inbox.take(outbox.send(_batch(2)), timeout=10)  # the link worked
        assert len(got) == 2
        outbox.close()  # the actor's process went away after announcing batch 1
        # the disconnect ends the wait (its own message), not the 10-minute timeout
        with pytest.raises(TcpLinkLost, match="the actor's connection dropped"):
            inbox.take({tcp_link.TCP_BATCH: 1, "items": 2}, timeout=600)
    finally:
        inbox.close()


def test_a_send_to_a_gone_consumer_ends_the_stream():
    inbox, outbox = _link()
    try:
        inbox.take(outbox.send(_batch(1)), timeout=10)
        inbox.close()  # the consumer went away: the kernel resets the actor's connection
        with pytest.raises(ConnectionAbortedError, match=r"the consumer at tcp://127\.0\.0\.1:\d+ went away"):
            for _ in range(50):  # the first send after the close may still be buffered
                outbox.send(_batch(1))
    finally:
        outbox.close()


def test_a_send_waiting_for_a_consumer_that_does_not_read_ends_with_its_stream():
    import socket

    # A consumer that accepts the connection but reads nothing (stuck in its training step).
    stuck = socket.create_server(("127.0.0.1", 0))
    outbox = TcpOutbox({"address": f"tcp://127.0.0.1:{stuck.getsockname()[1]}", "token": "00" * 16})
    looks = []
    try:
        assert outbox.wait_connected(10)
        big = [{"image": np.zeros((64 << 20,), np.uint8)}]  # far more than the socket buffers
        with pytest.raises(ConnectionAbortedError, match="the stream ended while waiting for its consumer"):
            outbox.send(big, superseded=lambda: looks.append(1) or len(looks) >= 2)
        assert len(looks) == 2  # it waited, looking every SEND_POLL_S, until superseded
    finally:
        stuck.close()
        outbox.close()


def test_a_batch_cut_off_mid_message_is_a_lost_link():
    import socket

    from blendtorch_ray import tcp_wire

    inbox = TcpInbox("127.0.0.1")
    host, port = inbox.address[len("tcp://"):].rsplit(":", 1)
    actor = socket.create_connection((host, int(port)))
    try:
        bufs = tcp_wire.message(inbox.token, 0, _batch(2))
        whole = b"".join(bytes(b) for b in bufs)
        actor.sendall(whole[: len(whole) - 100])  # the actor dies in the middle of batch 0
        actor.close()
        with pytest.raises(TcpLinkLost, match="the actor's connection dropped"):
            inbox.take({tcp_link.TCP_BATCH: 0, "items": 2}, timeout=600)
        assert inbox.dropped == 0  # it had the token: a lost link, not a rogue
    finally:
        inbox.close()


def test_a_prepared_batch_leaves_its_arrays_in_place_until_flushed():
    inbox, outbox = _link()
    try:
        batch = _batch(2)
        desc = outbox.prepare(batch)
        batch[1]["image"][:] = 77  # still the caller's memory: flush sends what is there then
        outbox.flush()
        got = inbox.take(desc, timeout=10)
        assert (got[0]["image"] == 0).all() and (got[1]["image"] == 77).all()
        outbox.flush()  # nothing pending: nothing sent
        assert outbox.sent == 1
    finally:
        inbox.close()
        outbox.close()


def _closed_port() -> int:
    """A tcp port on 127.0.0.1 that nothing listens on (bound once, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_consumer_falls_back_with_a_warning():
    port = _closed_port()
    said = []
    offer = {"address": f"tcp://127.0.0.1:{port}", "token": "00" * 16}
    assert open_outbox(offer, said.append, connect_timeout=1) is None
    assert len(said) == 1 and f"tcp://127.0.0.1:{port} was not reachable within 1s" in said[0]
    assert "cross_node='object_store'" in said[0]
    assert open_outbox(None, said.append) is None and len(said) == 1  # not asked for: no warning


def test_a_bad_offer_is_refused():
    with pytest.raises(ValueError, match=r"tcp=\{'address': 'x'\} is not a TcpInbox.offer\(\)"):
        TcpOutbox({"address": "x"})
    with pytest.raises(ValueError, match=r"tcp address 'ipc:///tmp/x': expected tcp://host:port"):
        TcpOutbox({"address": "ipc:///tmp/x", "token": "00"})
    with pytest.raises(ValueError, match=r"tcp address 'tcp://10\.0\.0\.1': expected tcp://host:port"):
        TcpOutbox({"address": "tcp://10.0.0.1", "token": "00"})  # no port
    said = []
    assert open_outbox({"address": "nonsense"}, said.append) is None
    assert "cannot use the tcp link" in said[0]


def test_cross_node_is_validated():
    from blendtorch_ray.config import StreamConfig
    from blendtorch_ray.dataset import RemoteIterableDataset

    with pytest.raises(ValueError, match=r"StreamConfig\(cross_node='udp'\): must be one of 'tcp', 'object_store'; "
                                         r"pass e.g. cross_node='tcp'"):
        StreamConfig(cross_node="udp")
    with pytest.raises(ValueError, match=r"RemoteIterableDataset\(cross_node='carrier-pigeon'\): must be one of "
                                         r"'tcp', 'object_store'"):
        RemoteIterableDataset("g", "ns", 1, cross_node="carrier-pigeon")
    assert StreamConfig().cross_node == "tcp"


# -- on a real multi-node cluster ---------------------------------------------------------
def _read(ds, n: int, btids: tuple = ()) -> dict:
    """``btid -> seqs`` of the first ``n`` items (more if needed until every one of ``btids``
    has delivered: which instance is ready first depends on how the 2 cores are shared)."""
    got: dict = {}
    for item in ds:
        got.setdefault(int(item["btid"]), []).append(int(item["seq"]))
        if sum(map(len, got.values())) >= n and set(btids) <= set(got):
            break
    return got


def _gap_free(got: dict) -> bool:
    return all(seqs == list(range(seqs[0], seqs[0] + len(seqs))) for seqs in got.values())


@pytest.mark.blender
@pytest.mark.ray
@pytest.mark.slow
def test_a_consumer_on_another_node_reads_over_the_tcp_link(ray_cluster):
    a, b = (n.node_id for n in ray_cluster.worker_nodes)
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=2, nodes=[a, b],
                         resources={"blender": 1}, instance_args=[["--size", "256"]] * 2, batch_size=4) as bl:
        ds = bl.dataset(timeout=120)
        got = _read(ds, 64, btids=(0, 1))
        assert sorted(got) == [0, 1] and _gap_free(got), got
        assert ds.path_counts["tcp"] >= 16 and ds.path_counts["object_store"] == 0, ds.path_counts
        assert ds.path_counts["ring"] == 0
        # the same stream through Ray's object stores, on request (the dataset goes on where it stands)
        tcp_batches = ds.path_counts["tcp"]
        ds.cross_node = "object_store"
        got2 = _read(ds, 32, btids=(0, 1))
        assert _gap_free(got2), got2
        assert ds.path_counts["tcp"] == tcp_batches and ds.path_counts["object_store"] >= 8, ds.path_counts
        for btid in (0, 1):  # where the first read ended, the second went on: nothing skipped or repeated
            assert got2[btid][0] == got[btid][-1] + 1
        assert not any("tcp link" in w for h in bl.health() for w in h.warnings)


@pytest.mark.blender
@pytest.mark.ray
@pytest.mark.slow
def test_an_unreachable_consumer_gets_its_batches_through_the_object_store(ray_cluster, monkeypatch):
    a = sorted(n.node_id for n in ray_cluster.worker_nodes)[0]
    real_offer = TcpInbox.offer

    def wrong_port(self):  # what a firewall between the nodes amounts to: the port cannot be reached
        offer = real_offer(self)
        host = offer["address"].rsplit(":", 1)[0]
        return {**offer, "address": f"{host}:{_closed_port()}"}

    monkeypatch.setattr(TcpInbox, "offer", wrong_port)
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), nodes=[a], resources={"blender": 1},
                         instance_args=[["--size", "256"]], batch_size=4) as bl:
        ds = bl.dataset(timeout=120)
        got = _read(ds, 24)
        assert _gap_free(got) and got[0][0] == 0, got
        assert ds.path_counts["object_store"] >= 6 and ds.path_counts["tcp"] == 0, ds.path_counts
        warnings = [w for h in bl.health() for w in h.warnings]
        assert any("was not reachable within 10s" in w and "object store" in w for w in warnings), warnings
