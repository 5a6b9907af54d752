"""The datagen example scenes stream real data (physics included)."""

import numpy as np
import pytest

from blendtorch_ray import BlenderLauncher
from conftest import REPO

pytestmark = [pytest.mark.blender, pytest.mark.ray]
DATAGEN = REPO / "examples" / "datagen"


def test_falling_cubes_come_to_rest_on_the_ground(ray_session):
    with BlenderLauncher(script=str(DATAGEN / "falling_cubes.blend.py"),
                         instance_args=[["--cubes", "3", "--frames", "60"]]) as bl:
        items = list(bl.dataset(max_items=2, timeout=180))
    for it in items:
        z = it["positions"][:, 2]
        assert np.all(z > 0.2) and np.all(z < 0.9), f"cubes not resting on the ground: z={z}"  # size 0.6
        h, w = it["image"].shape[:2]
        assert np.all((it["xy"] >= 0) & (it["xy"] <= [w, h]))
    assert [it["episode"] for it in items] == [0, 1]
    assert not np.allclose(items[0]["positions"], items[1]["positions"])


def test_cube_datagen_keypoints_surround_the_cube(ray_session):
    with BlenderLauncher(script=str(DATAGEN / "cube.blend.py")) as bl:
        (it,) = list(bl.dataset(max_items=1, timeout=120))
    img, xy = it["image"], it["xy"]
    assert img.shape == (240, 320, 4) and xy.shape == (8, 2)
    background = img[0, 0, :3].astype(int)
    ys, xs = np.nonzero(np.abs(img[..., :3].astype(int) - background).sum(-1) > 30)
    # The cube's pixels lie inside the box spanned by its projected corners.
    assert xs.min() >= xy[:, 0].min() - 2 and xs.max() <= xy[:, 0].max() + 2
    assert ys.min() >= xy[:, 1].min() - 2 and ys.max() <= xy[:, 1].max() + 2
