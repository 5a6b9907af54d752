"""RemoteIterableDataset: max_items is a total in every worker layout; instances interleave."""

from collections import Counter

import pytest

from blendtorch_ray import BlenderLauncher, make_loader
from blendtorch_ray.locality import worker_share
from conftest import TEST_SCRIPTS

FOREVER = str(TEST_SCRIPTS / "forever.py")


@pytest.mark.parametrize("num_instances", [1, 2, 3, 5])
@pytest.mark.parametrize("num_workers", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("max_items", [0, 1, 16, 17, 100])
def test_worker_shares_cover_every_instance_once_and_add_up_to_max_items(num_instances, num_workers, max_items):
    btids = list(range(num_instances))
    shares = [worker_share(btids, max_items, num_workers, k) for k in range(num_workers)]
    owned = [b for mine, _ in shares for b in mine]
    assert sorted(owned) == btids  # each instance read by exactly one worker
    assert sum(budget for _, budget in shares) == max_items
    # A worker without instances gets no share of the items (it could never deliver them).
    assert all(budget == 0 for mine, budget in shares if not mine)


def test_worker_shares_without_a_limit():
    assert worker_share([0, 1, 2], None, 2, 0) == ([0, 2], None)
    assert worker_share([0, 1, 2], None, 2, 1) == ([1], None)
    assert worker_share([0], None, 4, 3) == ([], 0)


def _keys(batches):
    return [(int(b), int(s)) for batch in batches for b, s in zip(batch["btid"], batch["seq"])]


@pytest.mark.blender
@pytest.mark.ray
@pytest.mark.parametrize("num_instances,num_workers,max_items", [(1, 4, 16), (2, 3, 15)])
def test_max_items_is_a_total_with_more_workers_than_instances(ray_session, num_instances, num_workers, max_items):
    with BlenderLauncher(script=FOREVER, num_instances=num_instances, num_cpus=0.5) as bl:
        batches = list(make_loader(bl.dataset(max_items=max_items, timeout=60), batch_size=4, num_workers=num_workers))
    keys = _keys(batches)
    assert len(keys) == max_items
    assert len(set(keys)) == max_items  # no (btid, seq) twice
    assert {b for b, _ in keys} == set(range(num_instances))


@pytest.mark.blender
@pytest.mark.ray
def test_two_instances_interleave_round_robin(ray_session, monkeypatch):
    from blendtorch_ray import open_streams

    # A fair start long enough for any machine: the check is about the reader's order, not
    # about how fast a loaded CI opens the second stream (it took over 1 s twice).
    monkeypatch.setattr(open_streams, "FAIR_START_S", 60.0)
    batch_size, in_flight = 8, 4
    with BlenderLauncher(script=FOREVER, num_instances=2, num_cpus=0.5, batch_size=batch_size,
                         max_batches_in_flight=in_flight) as bl:
        # Both instances build a backlog before reading (each publishes ~200 items/s; 3 s fill
        # their slots and queues). The reader then finds both ready all the time and must not
        # drain one backlog first (before the fix: 48 items of one instance, then the other).
        # Reading only what the backlogs hold keeps the check about the reader: once they are
        # drained, which instance has a batch ready depends on how the 2 cores are shared.
        import time

        time.sleep(3.0)
        btids = [int(it["btid"]) for it in bl.dataset(max_items=2 * in_flight * batch_size, timeout=60,
                                                      max_batches_in_flight=in_flight)]
    runs, run = [], 1
    for a, b in zip(btids, btids[1:]):
        if a == b:
            run += 1
        else:
            runs.append(run)
            run = 1
    runs.append(run)
    assert Counter(btids).keys() == {0, 1}
    # The fair start waits for every stream's first batch (read_order.py), then both backlogs
    # alternate batch by batch. Before any fair start the first run drained a whole backlog
    # (40 or 48); with a fair start of 1 s that ended at the ring header, loaded CI runs got
    # [32, 8, 8, 8, 8] twice.
    # Later runs depend on which backlog has a batch ready at each read, i.e. on how the 2
    # cores are shared (a loaded CI got [8, 8, 32, 8, 8]); the strict alternation of ready
    # streams is tested without timing in test_read_order.py.
    assert runs[0] <= batch_size, runs
    assert len(runs) >= 3, runs


def _by_instance(items) -> dict:
    got: dict = {}
    for it in items:
        got.setdefault(int(it["btid"]), []).append((int(it["seq"]), int(it["pid"])))
    return got


@pytest.mark.blender
@pytest.mark.ray
def test_an_iteration_that_stops_early_leaves_its_streams_to_the_next(ray_session):
    # max_items=10 with batches of 4: every iteration ends inside a batch, with more in flight.
    with BlenderLauncher(script=FOREVER, num_instances=2, num_cpus=0.5, batch_size=4) as bl:
        ds = bl.dataset(max_items=10, timeout=60)
        items = []
        for _ in range(3):
            epoch = list(ds)
            assert len(epoch) == 10
            items += epoch
        for item in ds:  # a loop broken off after one item
            items.append(item)
            break
        items += list(ds)
        got = _by_instance(items)
        assert sorted(got) == [0, 1]
        for btid, seq_pid in got.items():
            seqs = [s for s, _ in seq_pid]
            assert seqs == list(range(len(seqs))), (btid, seqs)  # no gap, no repeat, across iterations
            assert len({pid for _, pid in seq_pid}) == 1, (btid, seq_pid)  # the same Blender all along
        # Closed, the streams are opened again where the dataset stands: Blender starts again there
        # (what every new iteration did before streams were kept), still without a gap.
        ds.close()
        after = _by_instance(list(ds))
        for btid, seq_pid in after.items():
            assert seq_pid[0][0] == got[btid][-1][0] + 1, (btid, seq_pid, got[btid][-1])
            assert seq_pid[0][1] != got[btid][-1][1], "close() left the stream open"
        ds.close()


@pytest.mark.blender
@pytest.mark.ray
def test_dataloader_workers_keep_their_streams_across_epochs(ray_session):
    # make_loader's workers are persistent by default; before, a persistent worker's second
    # epoch also raised "forked from a process using Ray" (it found its own connection).
    with BlenderLauncher(script=FOREVER, num_instances=2, num_cpus=0.5, batch_size=4) as bl:
        loader = make_loader(bl.dataset(max_items=12, timeout=60), batch_size=3, num_workers=2)
        assert loader.persistent_workers
        items = []
        for _ in range(3):
            for batch in loader:
                items += [{"btid": b, "seq": s, "pid": p} for b, s, p in zip(batch["btid"], batch["seq"], batch["pid"])]
        del loader
    got = _by_instance(items)
    assert sorted(got) == [0, 1] and sum(map(len, got.values())) == 36
    for btid, seq_pid in got.items():
        seqs = sorted(s for s, _ in seq_pid)
        assert seqs == list(range(len(seqs))), (btid, seqs)
        assert len({pid for _, pid in seq_pid}) == 1, (btid, seq_pid)
