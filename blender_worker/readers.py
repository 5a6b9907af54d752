"""Read what Blender wrote: uncompressed Targa and OpenEXR files into numpy arrays.

The renderer (``blender_worker.render``) and the passes (``blender_worker.passes``) both read
through this module; it sits below both and imports neither.
"""

from __future__ import annotations

import numpy as np

TGA_HEADER_BYTES = 18
"""Size of a Targa file's fixed header; the image id and then the pixels follow it."""

TGA_TRUE_COLOR = 2
"""Targa image type of uncompressed true-colour images (the only one Blender writes raw)."""

TGA_TOP_LEFT = 0x20
"""Bit of the Targa image descriptor that puts the origin at the top left."""


def read_tga(path: str) -> np.ndarray:
    """Read an uncompressed 24/32-bit Targa file into an (H, W, 4) uint8 RGBA array."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size < TGA_HEADER_BYTES:
        raise ValueError(f"{path}: not a Targa file ({data.size} bytes)")
    id_len, _, img_type = int(data[0]), int(data[1]), int(data[2])
    width = int(data[12]) | (int(data[13]) << 8)
    height = int(data[14]) | (int(data[15]) << 8)
    bpp, descriptor = int(data[16]), int(data[17])
    if img_type != TGA_TRUE_COLOR or bpp not in (24, 32):
        raise ValueError(f"{path}: only uncompressed true-colour Targa is supported")
    channels = bpp // 8
    start = TGA_HEADER_BYTES + id_len
    pix = data[start : start + width * height * channels].reshape(height, width, channels)
    if not descriptor & TGA_TOP_LEFT:  # bottom-left origin
        pix = pix[::-1]
    rgba = np.empty((height, width, 4), dtype=np.uint8)
    rgba[..., 0] = pix[..., 2]
    rgba[..., 1] = pix[..., 1]
    rgba[..., 2] = pix[..., 0]
    rgba[..., 3] = pix[..., 3] if channels == 4 else 255
    return rgba


def _numpy_exr() -> bool:
    """Inside a Blender binary the openexr wheel clashes with Blender's own OpenEXR libraries
    (Debian's 3.4 segfaults in it): read with ``blender_worker.exr`` there instead."""
    import bpy

    return bool(bpy.app.binary_path)


def read_exr(path: str) -> dict[str, np.ndarray]:
    """Read every channel group of an OpenEXR file as float arrays (top-left origin)."""
    if _numpy_exr():
        from blender_worker.exr import read_channels

        ch = read_channels(path)
        for group in ("RGBA", "RGB"):
            if set(group) <= set(ch):
                return {group: np.stack([ch.pop(c) for c in group], axis=-1), **ch}
        return ch
    import OpenEXR  # the openexr package; imported lazily as only float output needs it

    with OpenEXR.File(path) as f:
        return {name: np.array(ch.pixels) for name, ch in f.channels().items()}


def read_exr_layers(path: str) -> dict[str, np.ndarray]:
    """Read a multilayer OpenEXR as written by Blender: one float32 array per render pass.

    Keys are Blender's pass names without the view layer ("Combined", "Depth", "Normal",
    "Object Index", AOV names); single-channel passes are (H, W), others (H, W, C) with the
    channels in R, G, B, A / X, Y, Z order.
    """
    if _numpy_exr():
        from blender_worker.exr import read_channels

        return _group_layers([read_channels(path)])
    import OpenEXR

    with OpenEXR.File(path, separate_channels=True) as f:
        return _group_layers([{n: np.array(ch.pixels) for n, ch in part.channels.items()} for part in f.parts])


def _group_layers(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    order = {c: i for i, c in enumerate("RGBAXYZUVW")}
    out: dict[str, np.ndarray] = {}
    for channels in parts:
        groups: dict[str, list[tuple[str, np.ndarray]]] = {}
        for name, pixels in channels.items():
            layer, _, comp = name.rpartition(".")
            groups.setdefault(layer, []).append((comp, pixels))
        for layer, chans in groups.items():
            key = layer.split(".", 1)[1] if "." in layer else layer
            chans.sort(key=lambda c: order.get(c[0], 99))
            out[key] = chans[0][1] if len(chans) == 1 else np.stack([c[1] for c in chans], axis=-1)
    return out
