"""Ray Data adapter: a bounded Dataset over live renders of the bundled cube scene."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from blendtorch_ray.ray_data import BlenderDatasource, ReadOptions, items_to_batch

W, H = 64, 48


# -- item -> column conversion (no Blender needed) ------------------------------------------
def _item(i: int, **extra) -> dict:
    return {"image": np.full((H, W, 4), i, np.uint8), "xy": np.zeros((8, 2), np.float32), "seq": i, **extra}


def test_items_to_batch_makes_tensor_and_scalar_columns():
    batch = items_to_batch([_item(0), _item(1), _item(2)])
    assert batch["image"].shape == (3, H, W, 4) and batch["image"].dtype == np.uint8
    assert batch["xy"].shape == (3, 8, 2)
    assert batch["seq"].tolist() == [0, 1, 2]


def test_items_to_batch_objects_pickle_drop_error():
    items = [_item(0, meta={"a": 1}), _item(1, meta=None)]
    pickled = items_to_batch(items)
    assert [pickle.loads(b) for b in pickled["meta"]] == [{"a": 1}, None]
    assert "meta" not in items_to_batch(items, ReadOptions(objects="drop"))
    with pytest.raises(TypeError, match="'meta'.*objects='pickle'"):
        items_to_batch(items, ReadOptions(objects="error"))


def test_items_to_batch_ragged_arrays_and_column_selection():
    items = [{"pts": np.zeros((2, 3))}, {"pts": np.zeros((5, 3))}]
    batch = items_to_batch(items)
    assert [a.shape for a in batch["pts"]] == [(2, 3), (5, 3)]
    assert list(items_to_batch([_item(0)], ReadOptions(columns=("xy",)))) == ["xy"]
    with pytest.raises(KeyError, match="'depth'"):
        items_to_batch([_item(0)], ReadOptions(columns=("depth",)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_items"):
        BlenderDatasource("g", "ns", 2, 0)
    with pytest.raises(ValueError, match="btids"):
        BlenderDatasource("g", "ns", 2, 10, btids=[2])
    with pytest.raises(ValueError, match="objects"):
        ReadOptions(objects="json")
    with pytest.raises(ValueError, match="block_size"):
        ReadOptions(block_size=0)


# -- with real Blender and Ray -----------------------------------------------------------------
@pytest.fixture(scope="module")
def cubes(_ray_shutdown_at_end):
    """Two cube instances shared by the module (the conftest's local Ray, started on demand)."""
    from conftest import _init_local_ray

    from blender_worker.scenes import CUBE

    _init_local_ray()
    from blendtorch_ray import BlenderLauncher

    args = ["--width", str(W), "--height", str(H)]
    with BlenderLauncher(script=CUBE, num_instances=2, instance_args=[args, args], batch_size=8) as bl:
        yield bl


@pytest.mark.blender
@pytest.mark.slow
def test_bounded_dataset_has_exactly_n_items_with_columns(cubes):
    rows = cubes.ray_dataset(37, block_size=8).take_all()
    assert len(rows) == 37
    row = rows[0]
    assert {"image", "xy", "frameid", "btid", "seq", "seed", "epoch"} <= set(row)
    assert row["image"].shape == (H, W, 4) and row["image"].dtype == np.uint8
    assert row["xy"].shape == (8, 2) and row["xy"].dtype == np.float32
    assert {r["btid"] for r in rows} == {0, 1}
    keys = [(r["btid"], r["epoch"], r["seq"]) for r in rows]
    assert len(set(keys)) == len(keys), "an item was read twice"
    for r in rows:  # the cube is where its row's corners say: the mean corner (inside its
        # silhouette) has another colour than the image corner (background)
        x, y = np.floor(r["xy"].mean(axis=0)).astype(int)
        rgb = r["image"][..., :3]
        assert (rgb[y, x] != rgb[0, 0]).any(), f"no cube at ({x}, {y}) in item {r['btid'], r['seq']}"


@pytest.mark.blender
@pytest.mark.slow
def test_iter_torch_batches(cubes):
    import torch

    ds = cubes.ray_dataset(24, columns=["image", "xy", "btid"])
    sizes = []
    for batch in ds.iter_torch_batches(batch_size=8):
        assert set(batch) == {"image", "xy", "btid"}
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (H, W, 4)
        assert batch["xy"].dtype == torch.float32 and batch["xy"].shape[1:] == (8, 2)
        sizes.append(len(batch["image"]))
    assert sum(sizes) == 24


@pytest.mark.blender
@pytest.mark.slow
def test_read_task_resources_go_to_ray_as_named_parameters(cubes):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = cubes.ray_dataset(8, columns=["btid"], ray_remote_args={"num_cpus": 0.25}).take_all()
    assert len(rows) == 8
    # Ray 2.60 deprecates ray_remote_args (removed in 2.64): the resources must not go through it
    assert not [w for w in caught if "ray_remote_args" in str(w.message)], [str(w.message) for w in caught]
    # a remote argument without a named parameter still reaches Ray (through ray_remote_args)
    rows = cubes.ray_dataset(8, columns=["btid"], ray_remote_args={"num_cpus": 0.25, "max_retries": 1}).take_all()
    assert len(rows) == 8


@pytest.mark.blender
@pytest.mark.slow
def test_map_batches_and_btids_subset(cubes):
    def brightness(batch: dict) -> dict:
        flat = batch["image"][..., :3].reshape(len(batch["image"]), -1).astype(np.float64)
        return {"mean": flat.mean(axis=1), "image": batch["image"], "btid": batch["btid"]}

    rows = cubes.ray_dataset(12, btids=[1]).map_batches(brightness).take_all()
    assert len(rows) == 12
    assert {r["btid"] for r in rows} == {1}
    for r in rows:
        assert r["mean"] == pytest.approx(r["image"][..., :3].astype(np.float64).mean())


@pytest.mark.blender
@pytest.mark.slow
def test_write_numpy_and_parquet(cubes, tmp_path):
    import pyarrow.parquet as pq

    cubes.ray_dataset(10, columns=["image", "xy"]).write_numpy(str(tmp_path / "npy"), column="image")
    images = np.concatenate([np.load(p) for p in sorted((tmp_path / "npy").glob("*.npy"))])
    assert images.shape == (10, H, W, 4) and images.dtype == np.uint8
    rgb = images[..., :3]  # alpha is 255 everywhere
    assert all(len(np.unique(im.reshape(-1, 3), axis=0)) > 1 for im in rgb), "an image is one flat colour"
    assert len({im.tobytes() for im in rgb}) == 10, "the same image was written twice"

    cubes.ray_dataset(10, columns=["xy", "btid", "seq"]).write_parquet(str(tmp_path / "pq"))
    table = pq.read_table(str(tmp_path / "pq"))
    assert table.num_rows == 10
    assert {"xy", "btid", "seq"} <= set(table.column_names)


@pytest.mark.blender
@pytest.mark.slow
def test_a_stream_that_ends_too_early_is_an_error(ray_session, tmp_path):
    import ray
    from blender_worker.scenes import CUBE
    from blendtorch_ray import BlenderLauncher

    args = ["--width", str(W), "--height", str(H), "--frames", "3"]
    with BlenderLauncher(script=CUBE, num_instances=1, instance_args=[args]) as bl:
        with pytest.raises((ray.exceptions.RayError, RuntimeError), match="finished after 3 of the 10 items"):
            bl.ray_dataset(10).take_all()
