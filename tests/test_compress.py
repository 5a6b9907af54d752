"""StreamConfig.encode / blender_worker.compress: codec round trips, errors at launch, and the
real stream (cube scene through the launcher, decoded in a DataLoader worker)."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest

from blender_worker import codec as wire
from blender_worker import compress
from blender_worker.compress import MARKER, CodecUnavailableError, CompressError, Encoder, decode_item
from blender_worker.protocol import LaunchArgs, parse_launch_args
from blendtorch_ray.config import LaunchConfig, StreamConfig

CUBE = os.path.join(os.path.dirname(compress.__file__), "scenes", "cube.py")


def _smooth_rgba(h: int = 120, w: int = 160) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = [xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255]
    return np.stack([*rgb, np.full_like(xx, 255)], -1).round().astype(np.uint8)


ARRAYS = {
    "rgba": _smooth_rgba(),
    "rgb": _smooth_rgba()[..., :3].copy(),
    "gray": _smooth_rgba()[..., 0].copy(),
    "f32": np.random.default_rng(0).random((17, 5, 3), dtype=np.float32),
    "u16": np.random.default_rng(1).integers(0, 65535, (9, 13), dtype=np.uint16),
    "i64_0d": np.array(-7, np.int64),
    "empty": np.zeros((0, 3), np.float64),
    "strided": np.arange(200, dtype=np.int32).reshape(10, 20)[:, ::3],
}


def _round_trip(spec: str, keys: list[str], wire_codec: str = "pickle") -> tuple[dict, dict]:
    item = {k: ARRAYS[k] for k in keys}
    item["label"] = 3
    enc = Encoder({k: spec for k in keys}).encode_item(item)
    header, on_wire = wire.decode(wire.encode(enc, codec=wire_codec))  # the codecs carry it
    return enc, decode_item(on_wire)


@pytest.mark.parametrize("spec", ["lz4", "lz4:9", "zstd", "zstd:19"])
@pytest.mark.parametrize("wire_codec", ["pickle", "json"])
def test_general_lossless_codecs_are_exact_for_any_dtype_and_shape(spec, wire_codec):
    keys = list(ARRAYS)
    enc, dec = _round_trip(spec, keys, wire_codec)
    assert set(enc[MARKER]) == set(keys) and all(enc[k].dtype == np.uint8 and enc[k].ndim == 1 for k in keys)
    for k in keys:
        assert dec[k].dtype == ARRAYS[k].dtype and dec[k].shape == ARRAYS[k].shape, k
        np.testing.assert_array_equal(dec[k], ARRAYS[k])
        assert dec[k].flags.writeable  # torch.from_numpy without a warning
    assert dec["label"] == 3 and MARKER not in dec


@pytest.mark.parametrize("spec", ["png", "png:0", "png:9"])
def test_png_is_exact_for_uint8_images_and_uint16_planes(spec):
    keys = ["rgba", "rgb", "gray", "u16"]
    enc, dec = _round_trip(spec, keys)
    for k in keys:
        assert dec[k].dtype == ARRAYS[k].dtype and dec[k].shape == ARRAYS[k].shape
        np.testing.assert_array_equal(dec[k], ARRAYS[k])
    if spec != "png:0":  # level 0: stored, not compressed
        assert enc["rgb"].nbytes < ARRAYS["rgb"].nbytes / 10  # a smooth image compresses well


@pytest.mark.parametrize("quality,bound", [(95, 4), (90, 6), (75, 10), (50, 16)])
def test_jpeg_error_on_a_smooth_image_is_bounded_by_its_quality(quality, bound):
    """A smooth gradient at 4:4:4 has only quantisation error, which grows as quality falls:
    the bound is a property of the quality, not of timing or machine."""
    enc, dec = _round_trip(f"jpeg:{quality}", ["rgba", "rgb", "gray"])
    for k in ("rgba", "rgb", "gray"):
        assert dec[k].dtype == np.uint8 and dec[k].shape == ARRAYS[k].shape
        err = np.abs(dec[k].astype(int) - ARRAYS[k].astype(int))
        assert err.max() <= bound, (k, err.max())
    np.testing.assert_array_equal(dec["rgba"][..., 3], 255)  # alpha restored
    assert enc["rgb"].nbytes < ARRAYS["rgb"].nbytes / 5


def test_higher_jpeg_quality_gives_smaller_error_and_more_bytes():
    errs, sizes = [], []
    for q in (30, 60, 95):
        enc, dec = _round_trip(f"jpeg:{q}", ["rgb"])
        errs.append(np.abs(dec["rgb"].astype(int) - ARRAYS["rgb"]).mean())
        sizes.append(enc["rgb"].nbytes)
    assert errs == sorted(errs, reverse=True) and sizes == sorted(sizes)


# -- errors at launch --------------------------------------------------------------------------
def test_unknown_codec_and_bad_level_fail_when_the_config_is_built():
    with pytest.raises(CompressError, match=r"encode\['image'\].*unknown codec 'webp'.*lz4, zstd, png, jpeg"):
        LaunchConfig.of(script=CUBE, encode={"image": "webp"})
    with pytest.raises(CompressError, match=r"'jpeg:0'.*out of range 1\.\.100"):
        StreamConfig(encode={"image": "jpeg:0"})
    with pytest.raises(CompressError, match=r"'zstd:fast'.*not an integer"):
        StreamConfig(encode={"depth": "zstd:fast"})
    with pytest.raises(TypeError, match="must be a dict"):
        StreamConfig(encode="jpeg")
    with pytest.raises(CompressError, match="without ','"):
        StreamConfig(encode={"a,b": "zstd"})


def test_missing_library_fails_at_config_with_the_pip_fix(monkeypatch):
    monkeypatch.setattr(compress.CODECS["jpeg"], "module", "no_such_module_btr_test")
    with pytest.raises(CodecUnavailableError, match=r"'jpeg' needs the Python package 'simplejpeg'.*pip install simplejpeg"):
        LaunchConfig.of(script=CUBE, encode={"image": "jpeg:90"})
    with pytest.raises(ImportError):  # also an ImportError, for except clauses that expect one
        Encoder({"image": "jpeg"})
    StreamConfig(encode={"image": "zstd"})  # the others still work


def test_float_into_jpeg_and_alpha_are_refused_naming_the_key_and_codec():
    enc = Encoder({"image": "jpeg:80", "mask": "png"})
    with pytest.raises(CompressError, match=r"'image': codec 'jpeg:80' takes uint8.*float32.*'zstd'"):
        enc.encode_item({"image": np.zeros((4, 4, 3), np.float32)})
    see_through = _smooth_rgba()
    see_through[0, 0, 3] = 128
    with pytest.raises(CompressError, match=r"'image'.*no alpha channel.*image\[\.\.\., :3\]"):
        enc.encode_item({"image": see_through})
    with pytest.raises(CompressError, match=r"'mask': codec 'png'.*got float64"):
        enc.encode_item({"mask": np.zeros((4, 4))})
    with pytest.raises(CompressError, match="encodes numpy arrays, got list"):
        enc.encode_item({"image": [1, 2, 3]})
    assert enc.encode_item({"other": 1}) == {"other": 1}  # absent keys are skipped


def test_launch_flag_round_trip():
    la = LaunchArgs(btid=1, seed=2, data_address="ipc://x", encode={"image": "jpeg:90", "depth": "zstd"})
    argv = la.to_argv()
    assert argv[-2:] == ["--btencode", "image=jpeg:90,depth=zstd"]
    parsed, rest = parse_launch_args(argv + ["--mine", "1"])
    assert parsed.encode == {"image": "jpeg:90", "depth": "zstd"} and rest == ["--mine", "1"]
    assert "--btencode" not in LaunchArgs(btid=0, seed=0).to_argv()


def test_items_without_encoding_pass_decode_unchanged_and_encoded_items_pickle():
    item = {"a": np.ones(3)}
    assert decode_item(item) is item
    enc = Encoder({"a": "zstd"}).encode_item(item)
    np.testing.assert_array_equal(decode_item(pickle.loads(pickle.dumps(enc)))["a"], item["a"])


# -- the real stream ----------------------------------------------------------------------------
CUBE_CHECK = """
import hashlib
import bpy
import numpy as np
import blender_worker as bw

launch, rest = bw.parse_launch_args()
n = int(rest[0])
rng = np.random.default_rng(launch.seed)
cube = bpy.data.objects["Cube"]
bpy.context.scene.display.shading.color_type = "OBJECT"
renderer = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(640, 480), workbench_aa="OFF"))
cam = bw.Camera()
cam.look_at(look_at=(0, 0, 0), look_from=(6.0, -6.0, 4.5))
pub = bw.DataPublisher(launch)
for i in range(n):
    cube.rotation_euler = rng.uniform(0, np.pi, size=3)
    cube.color = (*rng.uniform(0.2, 1.0, size=3), 1.0)
    bpy.context.scene.frame_set(1 + i)
    img = renderer.render()["image"]
    # raw: the same image, not in encode; sha: of the bytes Blender encoded
    pub.publish(image=img, raw=img.copy(), sha=hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest())
pub.close()
"""


def _pid_and_item(item):
    item["consumer_pid"] = os.getpid()
    return item


@pytest.mark.blender
@pytest.mark.ray
@pytest.mark.parametrize("spec", ["zstd", "jpeg:90"])
def test_cube_stream_is_decoded_in_the_dataloader_worker(ray_session, write_script, spec):
    from blendtorch_ray import BlenderLauncher, make_loader

    script = write_script(CUBE_CHECK)
    with BlenderLauncher(script=script, instance_args=[["4"]], encode={"image": spec}, seed=3) as bl:
        ds = bl.dataset(max_items=4, item_transform=_pid_and_item, timeout=120)
        items = [it for batch in make_loader(ds, batch_size=1, num_workers=1) for it in _unbatch(batch)]
    assert len(items) == 4
    for it in items:
        assert it["consumer_pid"] != os.getpid()  # decoded (and transformed) in the worker
        img, raw = it["image"], it["raw"]
        assert img.dtype == np.uint8 and img.shape == (480, 640, 4)
        if spec == "zstd":
            assert hashlib.sha256(img.tobytes()).hexdigest() == it["sha"]
            np.testing.assert_array_equal(img, raw)
        else:
            err = np.abs(img.astype(int) - raw.astype(int))
            assert err.mean() < 1.5 and np.percentile(err, 99) <= 16, (err.mean(), err.max())
            np.testing.assert_array_equal(img[..., 3], 255)


def _unbatch(batch):
    """make_loader(batch_size=1) -> the one item, tensors back to numpy."""
    import torch

    yield {k: (v[0].numpy() if isinstance(v, torch.Tensor) else v[0]) for k, v in batch.items()}


@pytest.mark.blender
@pytest.mark.ray
def test_decode_false_keeps_items_encoded_and_float_into_jpeg_fails_at_the_first_item(ray_session, write_script):
    from blendtorch_ray import BlenderLauncher
    from blendtorch_ray.errors import BlendtorchError

    script = write_script("""
        import numpy as np
        import blender_worker as bw
        launch, rest = bw.parse_launch_args()
        pub = bw.DataPublisher(launch)
        dtype = rest[0]
        for i in range(2):
            pub.publish(image=np.full((8, 8, 3), 100, dtype))
        pub.close()
    """)
    with BlenderLauncher(script=script, instance_args=[["uint8"]], encode={"image": "jpeg"}) as bl:
        (first, second) = list(bl.dataset(timeout=60, decode=False))
    assert set(first[MARKER]) == {"image"} and first["image"].ndim == 1
    np.testing.assert_allclose(decode_item(first)["image"], 100, atol=2)

    with BlenderLauncher(script=script, instance_args=[["float32"]], encode={"image": "jpeg"}, max_restarts=0) as bl:
        with pytest.raises(BlendtorchError) as info:
            list(bl.dataset(timeout=60))
    text = str(info.value) + str(getattr(info.value, "log_tail", ""))
    assert "'image': codec 'jpeg' takes uint8" in text and "float32" in text
