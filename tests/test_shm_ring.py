"""The opt-in same-node shared-memory ring delivers the same items as the object store."""

import numpy as np
import pytest

from blendtorch_ray import BlenderLauncher, make_loader
from blendtorch_ray.shm_ring import ShmRing
from conftest import TEST_SCRIPTS

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def test_ring_round_trip_without_ray(tmp_path):
    path = str(tmp_path / "ring")
    writer = ShmRing(path, slots=2, slot_bytes=1 << 16, create=True)
    reader = ShmRing(path, slots=2, slot_bytes=1 << 16, create=False)
    batch = [{"a": np.arange(10, dtype=np.int16).reshape(2, 5), "b": np.ones(3)[::2], "meta": {"k": i}} for i in range(3)]
    desc = writer.put(batch)
    assert desc is not None and writer.put([{"big": np.zeros(1 << 17, np.uint8)}]) is None  # too big: caller falls back
    out = reader.take(desc)
    for got, want in zip(out, batch):
        np.testing.assert_array_equal(got["a"], want["a"])
        np.testing.assert_array_equal(got["b"], want["b"])
        assert got["meta"] == want["meta"]
    writer.put(batch)
    writer.put(batch)  # both slots full now
    reader.close_reader()
    with pytest.raises(ConnectionAbortedError):
        writer.put(batch)
    writer.close(unlink=True)
    reader.close()


def test_stream_through_the_ring_matches_and_survives_repeated_passes(ray_session):
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=2,
                         shared_memory_ring=True, instance_args=[["--size", "64"]] * 2) as bl:
        for _ in range(2):  # a second pass works: the first pass's writers stopped
            items = list(bl.dataset(max_items=60))
            assert len(items) == 60
            for it in items:
                assert it["arr"].shape == (64, 64) and np.all(it["arr"] == it["seq"])
        seen = []
        for batch in make_loader(bl.dataset(max_items=40), batch_size=8, num_workers=2):
            assert np.all(batch["arr"].numpy() == batch["seq"].numpy()[:, None, None])
            seen += list(zip(batch["btid"].tolist(), batch["seq"].tolist()))
        assert len(seen) == 40 == len(set(seen))


def test_take_copies_each_key_once_and_collate_reuses_the_block(tmp_path):
    import torch

    from blendtorch_ray.dataset import collate

    path = str(tmp_path / "ring")
    writer = ShmRing(path, slots=2, slot_bytes=1 << 20, create=True)
    reader = ShmRing(path, slots=2, slot_bytes=1 << 20, create=False)
    batch = [{"image": np.full((4, 5, 3), i, np.uint8), "depth": np.full((4, 5), i / 2, np.float32), "i": i}
             for i in range(8)]
    items = reader.take(writer.put(batch))
    block = items[0]["image"].base
    assert all(it["image"].base is block for it in items)  # one copy out of the slot per key
    out = collate(items)
    assert torch.equal(out["image"], torch.from_numpy(np.stack([b["image"] for b in batch])))
    assert torch.equal(out["depth"], torch.from_numpy(np.stack([b["depth"] for b in batch])))
    assert out["i"].tolist() == list(range(8))
    assert np.shares_memory(out["image"].numpy(), block)  # the batch is the block: no second copy
    # Rows 2..5 of the block: still the block; rows out of order, or from two blocks: stacked copies.
    part = collate(items[2:6])
    assert np.shares_memory(part["image"].numpy(), block) and part["i"].tolist() == [2, 3, 4, 5]
    swapped = collate([items[1], items[0]])
    assert not np.shares_memory(swapped["image"].numpy(), block)
    assert swapped["image"][0, 0, 0, 0] == 1 and swapped["image"][1, 0, 0, 0] == 0
    other = reader.take(writer.put(batch))
    mixed = collate([items[7], other[0]])
    assert not np.shares_memory(mixed["image"].numpy(), block)
    assert mixed["image"][:, 0, 0, 0].tolist() == [7, 0]
    # Rows of arrays the user built (not handed out by the ring) are never aliased.
    mine = np.zeros((2, 3))
    assert not np.shares_memory(collate([mine[0], mine[1]]).numpy(), mine)
    writer.close(unlink=True)
    reader.close()


@pytest.mark.parametrize("hop", [True, False], ids=["slots", "socket"])
@pytest.mark.parametrize("ring", [True, False], ids=["ring", "object-store"])
def test_large_items_arrive_intact_over_every_hop_and_path(ray_session, hop, ring):
    """64 KiB items go Blender -> actor through shared-memory slots (or the socket), then to
    the consumer through the ring (or the object store); slots are reused many times over."""
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=2, shared_memory_hop=hop,
                         shared_memory_ring=ring, instance_args=[["--size", "128"]] * 2) as bl:
        seen = set()
        for batch in make_loader(bl.dataset(max_items=120), batch_size=8):
            assert batch["arr"].shape[1:] == (128, 128)
            assert np.all(batch["arr"].numpy() == batch["seq"].numpy()[:, None, None].astype(np.float32))
            seen |= set(zip(batch["btid"].tolist(), batch["seq"].tolist()))
        assert len(seen) == 120
        assert all(h.dropped_messages == 0 and h.lost_items == 0 for h in bl.health())
