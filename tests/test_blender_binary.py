"""A `blender` binary instead of the bpy wheel: Debian's package (Blender 3.4, system Python 3.11).

scripts/test.sh installs it with apt when it is missing. Without apt (and without a
`blender` on PATH) the tests that need it are skipped, saying so.
"""

import os
import shutil
import stat
import sys

import numpy as np
import psutil
import pytest

from blendtorch_ray import BlenderLauncher, BlenderNotFoundError, BlenderStartError
from blendtorch_ray.blender import bundled_python, check_binary, find_blender
from blendtorch_ray.errors import BlenderVersionError
from blender_worker.scenes import CUBE
from conftest import TEST_SCRIPTS, blender_pids, wait_until

BLENDER = shutil.which("blender")


@pytest.fixture(scope="module")
def debian_blender() -> str:
    """Path of the `blender` on PATH; fails (apt available) or skips (no apt) if there is none."""
    if BLENDER is None:
        if shutil.which("apt-get"):
            pytest.fail("no `blender` on PATH: run scripts/test.sh (it installs Debian's package) "
                        "or `apt-get install -y --no-install-recommends blender`")
        pytest.skip("no `blender` on PATH and no apt-get to install Debian's package")
    return BLENDER


@pytest.mark.blender
@pytest.mark.ray
def test_cube_scene_streams_through_the_binary(ray_session, debian_blender):
    version = check_binary(debian_blender)
    assert version[:2] >= (3, 0)
    with BlenderLauncher(script=CUBE, blender="blender", num_instances=2, seed=7,
                         instance_args=[["--width", "64", "--height", "48"]] * 2) as bl:
        pids = set(bl.pids())
        cmdlines = [psutil.Process(p).cmdline() for p in pids]
        items = list(bl.dataset(max_items=10, timeout=120))
    assert all(c[0] == debian_blender and "--background" in c for c in cmdlines)  # really the binary
    assert len(items) == 10
    for btid in {i["btid"] for i in items}:
        assert sorted(i["seq"] for i in items if i["btid"] == btid) == list(range(sum(i["btid"] == btid for i in items)))
    for it in items:
        img = it["image"]
        assert img.shape == (48, 64, 4) and img.dtype == np.uint8
        assert len(np.unique(img[..., :3].reshape(-1, 3), axis=0)) > 3  # cube on a background
        assert it["xy"].shape == (8, 2) and np.isfinite(it["xy"]).all()
        assert it["seed"] == 7 + it["btid"]
    assert wait_until(lambda: not blender_pids() & pids)  # closed: no Blender left behind


@pytest.mark.blender
@pytest.mark.ray
def test_script_error_in_the_binary_is_a_start_error_with_traceback(ray_session, debian_blender):
    with pytest.raises(BlenderStartError) as err:
        with BlenderLauncher(script=str(TEST_SCRIPTS / "raises_on_start.py"), blender="blender",
                             max_restarts=0, ready_timeout=120):
            pass
    msg = str(err.value)
    assert "boom from the test script" in msg and "Traceback" in msg and "raises_on_start.py" in msg


@pytest.mark.blender
@pytest.mark.ray
def test_recycle_through_sigterm_loses_nothing_in_the_binary(ray_session, debian_blender):
    """SIGTERM -> SystemExit(143) in Blender 3.4's Python flushes the publisher (atexit)."""
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), blender="blender",
                         recycle_after_items=10) as bl:
        items = []
        for item in bl.dataset(timeout=120):
            items.append(item)
            if item["epoch"] == 1:
                break
        health = bl.health()[0]
    first = [i["seq"] for i in items if i["epoch"] == 0]
    assert first == list(range(len(first))) and len(first) >= 10
    assert health.recycles >= 1 and health.restarts == 0 and health.lost_items == 0


def _fake_blender(tmp_path, output: str) -> str:
    path = tmp_path / "blender"
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_too_old_binary_names_version_and_fix(tmp_path):
    fake = _fake_blender(tmp_path, "Blender 2.79 (sub 0)")
    with pytest.raises(BlenderVersionError, match=r"Blender 2\.79\.0 .* too old.*>= 3\.0.*blender='bpy'"):
        find_blender(fake)
    # Also a BlenderNotFoundError, and the launcher fails fast in the driver (no Ray needed).
    with pytest.raises(BlenderNotFoundError, match="too old"):
        BlenderLauncher(script=CUBE, blender=fake).start()


def test_unknown_binary_and_python_mismatch(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    fake = _fake_blender(tmp_path / "a", "hello, I am not Blender")
    with pytest.raises(BlenderVersionError, match="does not look like Blender.*hello, I am not Blender"):
        find_blender(fake)
    # A blender.org-style build whose bundled Python is not this interpreter's.
    (tmp_path / "b").mkdir()
    other = (3, sys.version_info[1] - 1)
    (tmp_path / "b" / "3.6" / "python" / "lib" / f"python{other[0]}.{other[1]}").mkdir(parents=True)
    fake = _fake_blender(tmp_path / "b", "Blender 3.6.5")
    assert bundled_python(fake) == other
    with pytest.raises(BlenderVersionError, match=rf"bundled Python {other[0]}\.{other[1]}.*numpy"):
        find_blender(fake)
    # Through $BLENDTORCH_BLENDER as well.
    monkeypatch.setenv("BLENDTORCH_BLENDER", fake)
    with pytest.raises(BlenderVersionError, match="3.6.5"):
        find_blender()
    monkeypatch.setenv("BLENDTORCH_BLENDER", os.fspath(tmp_path / "missing"))
    with pytest.raises(BlenderNotFoundError, match="does not exist"):
        find_blender()


def test_numpy_exr_reader_matches_openexr(tmp_path):
    """blender_worker.exr (used inside Blender binaries) reads what the openexr package writes."""
    OpenEXR = pytest.importorskip("OpenEXR")
    from blender_worker.exr import read_channels

    rng = np.random.default_rng(0)
    chans = {"R": rng.random((5, 7), np.float32), "G": rng.random((5, 7), np.float32),
             "ViewLayer.Depth.Z": rng.random((5, 7), np.float32),
             "H": rng.random((5, 7)).astype(np.float16)}
    header = {"compression": OpenEXR.NO_COMPRESSION, "type": OpenEXR.scanlineimage}
    path = str(tmp_path / "x.exr")
    with OpenEXR.File(header, dict(chans)) as f:
        f.write(path)
    got = read_channels(path)
    assert set(got) == set(chans)
    for k, v in chans.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v)
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, dict(chans)) as f:
        f.write(path)
    with pytest.raises(ValueError, match="exr_codec='NONE'"):
        read_channels(path)


@pytest.mark.blender
@pytest.mark.ray
def test_linear_color_passes_and_engines_in_the_binary(ray_session, debian_blender, write_script):
    script = write_script(
        """
        import bpy
        import blender_worker as bw
        launch, _ = bw.parse_launch_args()
        pub = bw.DataPublisher(launch)
        r = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(32, 24)))
        lin = r.render(color="linear")["image"]
        p = r.render(passes=("rgba", "depth", "instance"))
        shapes = {}
        for engine in ("cycles", "eevee"):
            e = bw.Renderer(bw.RenderSettings(engine=engine, resolution=(32, 24), samples=1))
            shapes[engine] = (bpy.context.scene.render.engine, e.render()["image"].shape)
        pub.publish(lin=lin, rgba=p["rgba"], depth=p["depth"], instance=p["instance"], shapes=shapes)
        """
    )
    with BlenderLauncher(script=script, blender="blender", ready_timeout=120) as bl:
        (it,) = list(bl.dataset(timeout=180))
    assert it["lin"].shape == (24, 32, 4) and it["lin"].dtype == np.float32
    assert it["rgba"].shape == (24, 32, 4) and it["rgba"].dtype == np.uint8
    cube = it["instance"] > 0  # the default cube is in view, the background is not
    assert 0 < cube.sum() < cube.size
    assert np.isfinite(it["depth"][cube]).all() and np.isinf(it["depth"][~cube]).all()
    assert it["shapes"] == {"cycles": ("CYCLES", (24, 32, 4)), "eevee": ("BLENDER_EEVEE", (24, 32, 4))}
