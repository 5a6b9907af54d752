"""Read the uncompressed scanline OpenEXR files that ``blender_worker.render`` writes, with numpy.

Used inside Blender binaries (e.g. Debian's 3.4) where importing the ``openexr`` wheel next to
Blender's own OpenEXR libraries crashes the process. Only what Blender writes with
``exr_codec = "NONE"`` is supported: single part, scanlines, no compression, no subsampling.
"""

from __future__ import annotations

import numpy as np

_MAGIC = b"\x76\x2f\x31\x01"
_TILED, _MULTIPART = 0x200, 0x1000
_DTYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


def _cstr(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode(), end + 1


def _header(buf: bytes, pos: int) -> tuple[dict[str, bytes], int]:
    header = {}
    while buf[pos] != 0:
        name, pos = _cstr(buf, pos)
        _type, pos = _cstr(buf, pos)
        size = int.from_bytes(buf[pos : pos + 4], "little")
        header[name] = buf[pos + 4 : pos + 4 + size]
        pos += 4 + size
    return header, pos + 1


def read_channels(path: str) -> dict[str, np.ndarray]:
    """Every channel of an uncompressed scanline OpenEXR file as an (H, W) array, top row first
    (all parts of a multi-part file)."""
    buf = open(path, "rb").read()
    if buf[:4] != _MAGIC:
        raise ValueError(f"{path}: not an OpenEXR file")
    flags = int.from_bytes(buf[4:8], "little")
    multipart = bool(flags & _MULTIPART)
    if flags & _TILED:
        raise ValueError(f"{path}: tiled OpenEXR is not supported")
    pos, headers = 8, []
    while True:
        header, pos = _header(buf, pos)
        headers.append(header)
        if not multipart or buf[pos] == 0:
            pos += 1 if multipart else 0
            break
    parts = []
    for header in headers:
        if header.get("compression", b"\0")[0] != 0:
            raise ValueError(f"{path}: compressed OpenEXR is not supported (write it with exr_codec='NONE')")
        if header.get("type", b"scanlineimage\0").rstrip(b"\0") != b"scanlineimage":
            raise ValueError(f"{path}: only scanline OpenEXR is supported")
        xmin, ymin, xmax, ymax = (int(v) for v in np.frombuffer(header["dataWindow"], "<i4"))
        width, height = xmax - xmin + 1, ymax - ymin + 1
        channels, cpos, chl = [], 0, header["channels"]
        while chl[cpos] != 0:
            cname, cpos = _cstr(chl, cpos)
            ptype, xs, ys = (int(v) for v in np.frombuffer(chl[cpos : cpos + 16], "<i4")[[0, 2, 3]])
            if xs != 1 or ys != 1:
                raise ValueError(f"{path}: subsampled channel {cname!r} is not supported")
            channels.append((cname, _DTYPES[ptype]))
            cpos += 16
        parts.append((ymin, width, height, channels))
    out: dict[str, np.ndarray] = {}
    for ymin, width, height, channels in parts:
        offsets = [int(o) for o in np.frombuffer(buf, "<u8", count=height, offset=pos)]
        pos += 8 * height
        row_bytes = sum(dt.itemsize for _, dt in channels) * width
        planes = {name: np.empty((height, width), dt) for name, dt in channels}
        for off in offsets:
            off += 4 if multipart else 0  # part number
            y = int.from_bytes(buf[off : off + 4], "little", signed=True) - ymin
            if int.from_bytes(buf[off + 4 : off + 8], "little") != row_bytes:
                raise ValueError(f"{path}: scanline block of unexpected size (more than one line per block?)")
            p = off + 8
            for name, dt in channels:
                planes[name][y] = np.frombuffer(buf, dt, count=width, offset=p)
                p += dt.itemsize * width
        out.update(planes)
    return out
