"""Batches on the trainer's device: ``make_loader(device=...)`` and ``DevicePrefetcher``.

The asynchronous CUDA path runs where torch sees a GPU (here: skipped; ``bash
scripts/gpu_check.sh`` runs it on a GPU machine); every other path runs for real here, with
torch's ``meta`` device standing in as a device that is not the host's memory.
"""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import torch

from blendtorch_ray import BlenderLauncher, make_loader
from blendtorch_ray.prefetch import DevicePrefetcher, move_to
from blender_worker.scenes import CUBE


class _Untouchable:
    """A dataset that fails the test if anything iterates it."""

    def __iter__(self):
        raise AssertionError("the dataset was iterated before the device was checked")


def test_move_to_walks_dicts_lists_tuples_and_namedtuples():
    Pair = collections.namedtuple("Pair", "a b")
    batch = {"image": torch.ones(2, 3), "meta": [torch.zeros(1), "name", 7], "pair": Pair(torch.ones(1), (torch.ones(1),))}
    moved = move_to(batch, "meta")
    assert moved["image"].device.type == "meta" and moved["image"].shape == (2, 3)
    assert moved["meta"][0].device.type == "meta" and moved["meta"][1:] == ["name", 7]
    assert isinstance(moved["pair"], Pair) and moved["pair"].a.device.type == "meta"
    assert isinstance(moved["pair"].b, tuple) and moved["pair"].b[0].device.type == "meta"
    assert batch["image"].device.type == "cpu"  # the input is left as it was


def test_prefetcher_on_a_non_cuda_device_moves_each_batch_in_order():
    batches = [{"x": torch.full((2,), float(i))} for i in range(5)]
    p = DevicePrefetcher(batches, "meta")
    assert not p.asynchronous and len(p) == 5
    out = list(p)
    assert len(out) == 5 and all(b["x"].device.type == "meta" for b in out)
    cpu = list(DevicePrefetcher(batches, "cpu"))
    assert [float(b["x"][0]) for b in cpu] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_bad_devices_are_refused_before_the_dataset_is_read():
    with pytest.raises(ValueError, match=r"device='gpu0' is not a torch device .*pass e\.g\. 'cuda'"):
        make_loader(_Untouchable(), device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"device='cuda': this torch \(.*\) sees no CUDA device"):
            make_loader(_Untouchable(), device="cuda")


@pytest.mark.blender
def test_stream_lands_on_the_device_and_pin_memory_works_with_the_ring(ray_session):
    """A real stream through the same-node ring: ``pin_memory=True`` batches equal unpinned
    ones' layout, and ``device=`` batches arrive on the device with every key."""
    with BlenderLauncher(script=CUBE, num_instances=1) as bl:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CPU-only torch warns that it cannot pin
            pinned = list(make_loader(bl.dataset(max_items=16), batch_size=8, pin_memory=True))
        assert len(pinned) == 2
        assert pinned[0]["image"].shape == (8, 480, 640, 4) and pinned[0]["image"].dtype == torch.uint8
        assert int(pinned[0]["image"].float().std()) > 0  # a rendered image, not zeros
        if torch.cuda.is_available():
            assert pinned[0]["image"].is_pinned()
        dev = "cuda" if torch.cuda.is_available() else "meta"
        on_device = list(make_loader(bl.dataset(max_items=16), batch_size=8, device=dev))
        assert len(on_device) == 2
        assert all(b["image"].device.type == dev for b in on_device)
        assert set(on_device[0]) == set(pinned[0])
        assert on_device[0]["btid"].shape == (8,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: bash scripts/gpu_check.sh runs this on a GPU machine")
def test_cuda_prefetch_matches_the_host_batches():
    host = [{"x": torch.from_numpy(np.random.default_rng(i).random((64, 64), dtype=np.float32))} for i in range(6)]
    got = list(DevicePrefetcher(host, "cuda"))
    assert all(b["x"].is_cuda for b in got)
    for h, g in zip(host, got):
        torch.testing.assert_close(g["x"].cpu(), h["x"])
