"""Recording and replay: tar shards on disk, real subprocesses, real Ray Data, real Blender."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from blendtorch_ray.recording import Recorder, ReplayDataset

from conftest import REPO, wait_until

PY = sys.executable


def sample_item(i: int) -> dict:
    """An item with every kind of value a stream may carry."""
    rng = np.random.default_rng(i)
    return {
        "image": rng.integers(0, 255, size=(6, 8, 4), dtype=np.uint8),
        "xy": rng.normal(size=(8, 2)).astype(np.float32),
        "strided": np.arange(20, dtype=np.int64).reshape(4, 5)[:, ::2],  # non-contiguous
        "scalar_array": np.array(3.5, dtype=np.float16),
        "empty": np.zeros((0, 3), dtype=np.float64),
        "mask": rng.random((3, 3)) > 0.5,
        "btid": i % 2,
        "seq": i,
        "name": f"item-{i}",
        "meta": {"nested": [1, 2.5, None, True], "text": "ü"},
        "tuple": (i, "x"),
        "np_scalar": np.float32(i / 3),
        "nan": float("nan"),
        "int_keys": {1: "a", 2: "b"},
        "bytes": bytes([i % 256]) * 3,
        "tensor": torch.arange(4) * i,
    }


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key, va in a.items():
        vb = b[key]
        if isinstance(va, np.ndarray):
            assert isinstance(vb, np.ndarray) and vb.dtype == va.dtype and vb.shape == va.shape, key
            np.testing.assert_array_equal(vb, va, err_msg=key)
        elif isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), key
        elif isinstance(va, float) and va != va:
            assert isinstance(vb, float) and vb != vb, key
        else:
            assert type(vb) is type(va) and vb == va, key


def test_record_replay_equality_across_shards(tmp_path):
    items = [sample_item(i) for i in range(7)]
    with Recorder(str(tmp_path), prefix="t", max_items_per_shard=3) as rec:
        for item in items:
            rec.write(item)
    assert len(rec.shards) == 3
    ds = ReplayDataset(str(tmp_path))
    assert len(ds) == 7
    assert ds.summary == "replay: 7 items in 3 shard(s)"
    for i in [6, 0, 3, 5, 1, 2, 4]:  # random access
        assert_same(items[i], ds[i])
    assert_same(items[-1], ds[-1])
    with pytest.raises(IndexError, match="out of range"):
        ds[7]


def test_bad_input_names_the_problem(tmp_path):
    with Recorder(str(tmp_path)) as rec:
        with pytest.raises(ValueError, match="a.b"):
            rec.write({"a.b": 1})
        with pytest.raises(TypeError, match="dicts"):
            rec.write([1, 2])
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        ReplayDataset(str(tmp_path / "nothing"))


def test_truncation_at_every_block_keeps_complete_items(tmp_path):
    """Cut a recording at every 512-byte block: exactly the items written before survive."""
    src = tmp_path / "src"
    with Recorder(str(src), prefix="t") as rec:
        ends = []
        for i in range(4):
            rec.write(sample_item(i))
            ends.append(rec._file.tell())  # file offset once item i is complete
    data = open(rec.shards[0], "rb").read()
    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()
    for cut in range(0, ends[-1] + 1, 512):
        path = cut_dir / "t-000000.tar"
        path.write_bytes(data[:cut])
        ds = ReplayDataset(str(cut_dir))
        expected = sum(1 for e in ends if e <= cut)
        assert len(ds) == expected, f"cut at {cut}"
        assert "cut short" in ds.summary and f"{expected} items" in ds.summary
        for i in range(expected):
            assert_same(sample_item(i), ds[i])


WRITER = """
import sys, time, numpy as np
from blendtorch_ray.recording import Recorder
rec = Recorder(sys.argv[1], prefix="crash", max_items_per_shard=10**6)
i = 0
while True:
    rec.write({"big": np.full((512, 1024), i % 251, dtype=np.uint8), "seq": i})
    i += 1
    time.sleep(0.005)
"""


def test_sigkill_mid_shard_keeps_everything_before(tmp_path):
    proc = subprocess.Popen([PY, "-c", WRITER, str(tmp_path)], cwd=REPO)
    try:
        shard = tmp_path / "crash-000000.tar"
        assert wait_until(lambda: shard.exists() and shard.stat().st_size > 20 * (512 * 1024 + 2048), 60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    size = shard.stat().st_size
    ds = ReplayDataset(str(tmp_path))
    n = len(ds)
    assert n >= 20
    assert f"replay: {n} items in 1 shard(s)" in ds.summary and "cut short" in ds.summary
    # Every item found is whole and in order; at most one item (the one being written) is lost.
    for i in range(n):
        item = ds[i]
        assert item["seq"] == i and item["big"].shape == (512, 1024) and (item["big"] == i % 251).all()
    per_item = 512 * 1024 + 128 + 4 * 512  # array bytes + npy header + tar headers/padding
    assert size - n * per_item < 2 * per_item


@pytest.mark.ray
def test_ray_data_reads_a_recording(ray_session, tmp_path):
    import ray

    items = [{k: v for k, v in sample_item(i).items() if k in ("image", "xy", "btid", "name", "meta")} for i in range(5)]
    with Recorder(str(tmp_path), prefix="rd", max_items_per_shard=2) as rec:
        for item in items:
            rec.write(item)
    rows = sorted(ray.data.read_webdataset(str(tmp_path)).take_all(), key=lambda r: r["__key__"])
    assert len(rows) == 5
    for item, row in zip(items, rows):
        np.testing.assert_array_equal(row["image.npy"], item["image"])
        np.testing.assert_array_equal(row["xy.npy"], item["xy"])
        meta = row["json"] if isinstance(row["json"], dict) else json.loads(row["json"])
        assert (meta["btid"], meta["name"], meta["meta"]) == (item["btid"], item["name"], item["meta"])


def test_dataloader_workers_over_replay(tmp_path):
    with Recorder(str(tmp_path), prefix="dl", max_items_per_shard=5) as rec:
        for i in range(23):
            rec.write({"image": np.full((4, 4, 3), i, dtype=np.uint8), "seq": i})
    ds = ReplayDataset(str(tmp_path))
    # Replay needs no Ray: plain forked workers (the default) are fine.
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, timeout=120,
                        generator=torch.Generator().manual_seed(0))
    seen = []
    for batch in loader:
        assert batch["image"].shape[1:] == (4, 4, 3)
        assert (batch["image"][:, 0, 0, 0] == batch["seq"]).all()
        seen.extend(batch["seq"].tolist())
    assert sorted(seen) == list(range(23)) and seen != list(range(23))


def _tar_names(path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


@pytest.mark.blender
def test_record_live_stream_and_cli(ray_session, tmp_path):
    from blender_worker.scenes import CUBE
    from blendtorch_ray import BlenderLauncher

    args = ["--width", "64", "--height", "48"]
    live_dir = tmp_path / "live"
    with BlenderLauncher(script=CUBE, num_instances=2, instance_args=[args, args], batch_size=4) as bl:
        live = [dict(item) for item in bl.dataset(max_items=10, record_to=str(live_dir))]
    ds = ReplayDataset(str(live_dir))
    assert len(ds) == 10
    for i, item in enumerate(live):
        assert_same(item, ds[i])
    assert all({"btid", "seq", "image", "xy"} <= set(item) for item in live)
    assert any(n.endswith(".image.npy") for n in _tar_names(ds.paths[0]))

    # The CLI, in a subprocess joining this test's Ray.
    cli_dir = tmp_path / "cli"
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    t0 = time.monotonic()
    out = subprocess.run(
        [os.path.join(os.path.dirname(PY), "blendtorch-ray"), "record", "--out", str(cli_dir), "--items", "6",
         "--shard-items", "4", "--", "--width", "64", "--height", "48"],
        capture_output=True, text=True, timeout=240, env=env, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "recorded 6 items in 2 shard(s)" in out.stdout
    assert "replay: 6 items in 2 shard(s)" in out.stdout
    assert "recording" in out.stderr  # the tqdm progress bar
    replay = ReplayDataset(str(cli_dir))
    assert [replay[i]["image"].shape for i in range(6)] == [(48, 64, 4)] * 6
    print(f"CLI record of 6 items took {time.monotonic() - t0:.1f}s")
