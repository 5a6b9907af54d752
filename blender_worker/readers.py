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


TIFF_TAGS = {256: "width", 257: "height", 258: "bits", 259: "compression", 273: "offsets", 274: "orientation",
             277: "channels", 279: "counts", 284: "planar"}
"""The TIFF tags that ``read_tiff`` needs, by number."""


def read_tiff(path: str) -> np.ndarray:
    """Read an uncompressed 8-bit RGB(A) little-endian TIFF (as Blender writes it with
    ``tiff_codec = "NONE"``) into an (H, W, 4) uint8 RGBA array, top row first."""
    data = np.fromfile(path, dtype=np.uint8)
    if data[:4].tobytes() != b"II*\0":
        raise ValueError(f"{path}: not a little-endian TIFF file")
    ifd = int(data[4:8].view("<u4")[0])
    count = int(data[ifd : ifd + 2].view("<u2")[0])
    entry = np.dtype([("tag", "<u2"), ("type", "<u2"), ("count", "<u4"), ("value", "<u4")])
    tags: dict[str, list[int]] = {}
    for tag, typ, n, value in np.frombuffer(data, entry, count=count, offset=ifd + 2).tolist():
        if tag not in TIFF_TAGS:
            continue
        size = {3: 2, 4: 4}.get(typ)
        if size is None:
            raise ValueError(f"{path}: unexpected type {typ} of TIFF tag {tag}")
        if n * size <= 4:  # the values sit in the entry itself
            raw = np.array([value], "<u4").view("<u2" if size == 2 else "<u4")[:n]
        else:
            raw = np.frombuffer(data, "<u2" if size == 2 else "<u4", count=n, offset=value)
        tags[TIFF_TAGS[tag]] = [int(v) for v in raw]
    width, height, channels = tags["width"][0], tags["height"][0], tags.get("channels", [1])[0]
    if tags.get("compression", [1])[0] != 1 or set(tags["bits"]) != {8} or channels not in (3, 4):
        raise ValueError(f"{path}: only uncompressed 8-bit RGB/RGBA TIFF is supported")
    if tags.get("planar", [1])[0] != 1 or tags.get("orientation", [1])[0] != 1:
        raise ValueError(f"{path}: only interleaved, top-left-origin TIFF is supported")
    offsets, counts = tags["offsets"], tags["counts"]
    if all(offsets[i] + counts[i] == offsets[i + 1] for i in range(len(offsets) - 1)):  # contiguous strips
        pix = data[offsets[0] : offsets[0] + width * height * channels]
    else:
        pix = np.concatenate([data[o : o + c] for o, c in zip(offsets, counts)])
    pix = pix.reshape(height, width, channels)
    if channels == 4:
        return pix
    rgba = np.empty((height, width, 4), dtype=np.uint8)
    rgba[..., :3] = pix
    rgba[..., 3] = 255
    return rgba
