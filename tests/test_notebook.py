"""Notebook support: `blendtorch_ray.show` contact sheets (unit tests on arrays) and the
example notebook ``examples/notebook.ipynb``, executed with nbclient on the venv's kernel."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from drivers.driver_process import driver_env

from blendtorch_ray.preview import show

NOTEBOOK = REPO / "examples" / "notebook.ipynb"


def _tiles(n: int, h: int = 6, w: int = 10) -> np.ndarray:
    """n (h, w, 4) uint8 images; image i is filled with gray level 5 * (i + 1)."""
    out = np.zeros((n, h, w, 4), np.uint8)
    for i in range(n):
        out[i, ..., :3] = 5 * (i + 1)
        out[i, ..., 3] = 255
    return out


def test_show_batch_shape_and_tile_placement():
    sheet = show({"image": _tiles(5), "btid": np.zeros(5)}, columns=2)
    assert sheet.mode == "RGB" and sheet.size == (2 * 10, 3 * 6)  # 2 columns, 3 rows
    px = np.asarray(sheet)
    # image 3 (0-based) is in row 1, column 1: pixels [6:12, 10:20]
    assert (px[6:12, 10:20] == 20).all()
    assert (px[12:18, 0:10] == 25).all()  # image 4: row 2, column 0
    assert (px[12:18, 10:20] == 255).all()  # the empty cell stays white


def test_show_items_floats_gray_and_limits():
    items = [{"image": np.full((4, 8, 3), 0.5, np.float32)}, {"image": np.full((4, 8), 1.0)}]
    px = np.asarray(show(items))
    assert px.shape == (4, 16, 3)  # fewer images than columns: one row, 2 cells
    assert (px[:, :8] == 128).all() and (px[:, 8:] == 255).all()
    sheet = show(iter({"image": t} for t in _tiles(40)), max_items=10, columns=4)
    assert sheet.size == (4 * 10, 3 * 6)
    assert (np.asarray(sheet)[12:18, 10:20] == 50).all()  # image 9: row 2, column 1


def test_show_torch_batch_and_thumb_width():
    torch = pytest.importorskip("torch")
    sheet = show({"image": torch.from_numpy(_tiles(3))}, thumb_width=20, columns=3)
    assert sheet.size == (60, 12)
    assert (np.asarray(sheet)[:, 40:60] == 15).all()


def test_show_refuses_bad_input():
    with pytest.raises(KeyError, match="depth"):
        show({"image": _tiles(2)}, key="depth")
    with pytest.raises(ValueError, match="no images"):
        show([])
    with pytest.raises(ValueError, match="columns"):
        show(_tiles(2), columns=0)
    with pytest.raises(ValueError, match="shape"):
        show([np.zeros((4, 4, 2), np.uint8)])
    with pytest.raises(TypeError):
        show(42)


def test_show_is_exported_lazily():
    import blendtorch_ray

    assert blendtorch_ray.show is show


def _ensure_kernel() -> None:
    """Make sure the ``python3`` kernel nbclient starts is this interpreter (the venv's).

    ipykernel ships a ``python3`` kernelspec in the venv whose command is ``python``, which
    jupyter_client replaces by the client's own ``sys.executable``. If another ``python3``
    spec wins (a user-wide one pointing elsewhere), install ours into the venv
    (``--sys-prefix``), which then comes first.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    except NoSuchKernel:
        argv0 = None
    if argv0 not in ("python", sys.executable):
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
                       check=True, capture_output=True, text=True)


@pytest.mark.blender
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_example_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    _ensure_kernel()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=driver_env())  # a fresh local Ray in the kernel, as a user's notebook
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert f"kernel python: {sys.executable}" in text, text[-2000:]
    pngs = [o.data["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert pngs, "no inline image/png in the notebook's outputs"
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(pngs[0]))) as im:
        assert im.size == (4 * 64, 2 * 48), im.size  # 8 frames of 64x48, 4 per row
        assert np.asarray(im.convert("L")).std() > 1  # not a blank sheet
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit() and "True" in line]
    assert "btid alive" in text and {r[0] for r in rows} >= {"0", "1"}, text[-3000:]
    htmls = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("<table" in h and "btid" in h for h in htmls), "no HTML health table (_repr_html_)"
    assert "closed: True" in text, text[-2000:]
