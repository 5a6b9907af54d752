"""Per-key compression of item arrays: encoded in Blender, decoded in the consumer.

``StreamConfig.encode`` (``LaunchConfig.of(encode={"image": "jpeg:90", "depth": "zstd"})``)
names, per item key, a codec spec:

============  ==========  ============================================  ==================
spec          kind        takes                                         library (pip)
============  ==========  ============================================  ==================
``lz4``       lossless    any non-object numpy array                    ``lz4``
``zstd[:L]``  lossless    any non-object numpy array; level L (1..22,   ``zstandard``
                          default 1)
``png[:L]``   lossless    uint8 (H,W), (H,W,3), (H,W,4); uint16 (H,W);  ``pillow``
                          zlib level L (0..9, default 6)
``jpeg[:Q]``  lossy       uint8 (H,W), (H,W,3), (H,W,4); quality Q      ``simplejpeg``
                          (1..100, default 90), 4:4:4
============  ==========  ============================================  ==================

JPEG has no alpha channel: an (H,W,4) image is encoded as RGB and decoded with alpha 255,
which is only exact if every alpha value was 255; a frame with any other alpha raises
(``CompressError`` naming the key) instead of silently losing it. Use a lossless codec for
images with transparency. Float (and any non-uint8) arrays are refused by jpeg and png.

What can be checked at launch is checked at launch (``check_spec``: the codec name, its
level, that its library imports, with the ``pip install`` fix). The dtype and shape of a
key are only known at the first ``publish``: a float image for ``jpeg`` raises there, in
Blender, at the first item, with a message naming the key and the codec (the stream fails
with ``BlenderCrashedError`` carrying that message in its log tail), never later.

On the wire an encoded item keeps every key; an encoded key holds a 1-D uint8 array (the
compressed bytes, so it travels through shared-memory slots and rings like any array)
and the item gets one extra JSON-able key, ``MARKER``, describing each encoded key
(codec, dtype, shape). That form passes the pickle and the json codecs alike.
``decode_item`` restores the arrays; ``RemoteIterableDataset`` calls it per item in the
DataLoader worker (``decode=False`` keeps items encoded).

This module runs inside Blender: it imports only the standard library and numpy; codec
libraries are imported when a codec is first used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

MARKER = "__btr_enc__"
"""Item key describing the encoded keys of an item: ``{key: {"codec", "dtype", "shape"}}``."""


class CompressError(ValueError):
    """A codec spec is invalid, or a value cannot be encoded/decoded with its codec."""


class CodecUnavailableError(CompressError, ImportError):
    """The library a codec needs is not installed (the message holds the ``pip install``)."""


@dataclass
class CodecInfo:
    """A codec: its library and its level (quality) range."""

    module: str
    """Module imported to use the codec (a test may point it at one that does not exist)."""
    pip: str
    """Package that provides ``module``."""
    lossless: bool
    level: tuple[int, int, int]
    """``(minimum, maximum, default)`` of the level (zstd/png level, jpeg quality)."""


CODECS: dict[str, CodecInfo] = {
    "lz4": CodecInfo("lz4.frame", "lz4", True, (0, 16, 0)),
    "zstd": CodecInfo("zstandard", "zstandard", True, (1, 22, 1)),
    "png": CodecInfo("PIL.Image", "pillow", True, (0, 9, 6)),
    "jpeg": CodecInfo("simplejpeg", "simplejpeg", False, (1, 100, 90)),
}
"""The known codecs by name."""


def parse_spec(spec: str) -> tuple[str, int]:
    """``"jpeg:85"`` -> ``("jpeg", 85)``; ``"zstd"`` -> ``("zstd", 1)`` (the default level).

    Raises:
        CompressError: Unknown codec or level out of range.
    """
    if not isinstance(spec, str):
        raise CompressError(f"codec spec {spec!r} must be a string such as 'jpeg:90' or 'zstd'")
    name, _, level_text = spec.strip().partition(":")
    info = CODECS.get(name)
    if info is None:
        raise CompressError(
            f"unknown codec {spec!r}; choose one of {', '.join(CODECS)} (e.g. 'zstd', 'jpeg:90')"
        )
    lo, hi, default = info.level
    if not level_text:
        return name, default
    try:
        level = int(level_text)
    except ValueError:
        raise CompressError(f"codec {spec!r}: level {level_text!r} is not an integer ({lo}..{hi})") from None
    if not lo <= level <= hi:
        raise CompressError(f"codec {spec!r}: level {level} out of range {lo}..{hi} (e.g. '{name}:{default}')")
    return name, level


def _module(name: str) -> Any:
    info = CODECS[name]
    try:
        return importlib.import_module(info.module)
    except ImportError as exc:
        raise CodecUnavailableError(
            f"codec {name!r} needs the Python package {info.pip!r}, which is not installed "
            f"({exc}); fix: pip install {info.pip}  (or pip install 'blendtorch-ray[compress]'), "
            "in the Python of the driver and of Blender"
        ) from exc


def check_spec(spec: str) -> tuple[str, int]:
    """``parse_spec`` plus: the codec's library imports.

    Raises:
        CompressError: Unknown codec or bad level.
        CodecUnavailableError: Its library is missing (the message holds the pip fix).
    """
    name, level = parse_spec(spec)
    _module(name)
    return name, level


def check_encode(encode: Any, *, owner: str = "encode") -> dict:
    """Validate a ``{key: spec}`` mapping (see ``check_spec``); returns a plain dict copy."""
    if not isinstance(encode, Mapping):
        raise TypeError(f"{owner}={encode!r}: must be a dict of item key -> codec spec, e.g. {{'image': 'jpeg:90'}}")
    out = {}
    for key, spec in encode.items():
        if not isinstance(key, str) or not key or any(c in key for c in ",= "):
            raise CompressError(f"{owner}: key {key!r} must be a non-empty item key without ',', '=' or spaces")
        if key == MARKER:
            raise CompressError(f"{owner}: key {MARKER!r} is reserved")
        try:
            check_spec(spec)
        except CompressError as exc:
            raise type(exc)(f"{owner}[{key!r}]: {exc}") from exc
        out[key] = spec
    return out


# -- the codecs ---------------------------------------------------------------------------------
def _image_kind(key: str, spec: str, arr: np.ndarray, allowed: tuple) -> int:
    """Channels of an image array a codec accepts (0: 2-D), else a clear error."""
    channels = 0 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else -1)
    if arr.dtype not in allowed or channels not in (0, 3, 4):
        kinds = " or ".join(str(np.dtype(d)) for d in allowed)
        raise CompressError(
            f"item key {key!r}: codec {spec!r} takes {kinds} images of shape (H, W), (H, W, 3) or "
            f"(H, W, 4), got {arr.dtype} {arr.shape}; convert it (e.g. (img * 255).astype(np.uint8)) "
            "or use a lossless codec for any dtype: 'zstd' or 'lz4'"
        )
    return channels


def _raw(arr: np.ndarray) -> memoryview:
    """The bytes of ``arr`` (a view when it is C-contiguous; empty arrays too)."""
    return memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


class Encoder:
    """Encodes the configured keys of items (in Blender, by ``DataPublisher.publish``).

    Args:
        encode: ``{key: spec}``; checked here (library imports included), so a bad spec
            fails when the publisher is created, before the first item.
    """

    def __init__(self, encode: Mapping[str, str]):
        self.specs = check_encode(encode)
        self._codecs = {k: parse_spec(s) for k, s in self.specs.items()}
        self._ctx: dict = {}

    def __bool__(self) -> bool:
        return bool(self.specs)

    def encode_item(self, item: dict) -> dict:
        """A copy of ``item`` with the configured keys encoded (absent keys are skipped)."""
        if MARKER in item:
            raise CompressError(f"item key {MARKER!r} is reserved for encoded values")
        meta = {}
        out = dict(item)
        for key, (name, level) in self._codecs.items():
            if key not in item:
                continue
            value = item[key]
            if not isinstance(value, np.ndarray) or value.dtype.hasobject:
                raise CompressError(
                    f"item key {key!r}: codec {self.specs[key]!r} encodes numpy arrays, got "
                    f"{type(value).__name__}; publish it as an array or drop it from encode"
                )
            data, info = self._encode(key, name, level, value)
            info.update(codec=name, dtype=value.dtype.str, shape=list(value.shape))
            meta[key] = info
            out[key] = np.frombuffer(data, np.uint8)
        if meta:
            out[MARKER] = meta
        return out

    def _encode(self, key: str, name: str, level: int, arr: np.ndarray) -> tuple[Any, dict]:
        spec = self.specs[key]
        if name == "zstd":
            cctx = self._ctx.get(("zstd", level))
            if cctx is None:
                cctx = self._ctx[("zstd", level)] = _module("zstd").ZstdCompressor(level=level)
            return cctx.compress(_raw(arr)), {}
        if name == "lz4":
            return _module("lz4").compress(_raw(arr), compression_level=level), {}
        if name == "png":
            import io

            channels = _image_kind(key, spec, arr, (np.uint8, np.uint16))
            if arr.dtype == np.uint16 and channels:
                raise CompressError(f"item key {key!r}: codec {spec!r} takes uint16 only as (H, W), got {arr.shape}")
            buf = io.BytesIO()
            _module("png").fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=level)
            return buf.getvalue(), {}
        if name == "jpeg":
            channels = _image_kind(key, spec, arr, (np.uint8,))
            sj = _module("jpeg")
            if channels == 4 and arr[..., 3].min() != 255:
                raise CompressError(
                    f"item key {key!r}: codec {spec!r}: JPEG has no alpha channel and this (H, W, 4) "
                    "image has alpha values other than 255; publish image[..., :3], or use a "
                    "lossless codec ('png', 'zstd') to keep the alpha"
                )
            colorspace = {0: "GRAY", 3: "RGB", 4: "RGBX"}[channels]
            img = np.ascontiguousarray(arr)
            if channels == 0:
                img = img[:, :, None]
            return sj.encode_jpeg(img, quality=level, colorspace=colorspace, colorsubsampling="444"), {"cs": colorspace}
        raise CompressError(f"unknown codec {name!r}")  # unreachable: parse_spec checked it


def decode_value(data: Any, info: Mapping[str, Any]) -> np.ndarray:
    """Decode one encoded value (its bytes and its ``MARKER`` entry) into the array."""
    name = info["codec"]
    dtype = np.dtype(info["dtype"])
    shape = tuple(info["shape"])
    buf = _raw(data) if isinstance(data, np.ndarray) else data
    if name == "zstd":
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        out = np.empty(shape, dtype)
        view = memoryview(out.reshape(-1).view(np.uint8)) if nbytes else memoryview(b"")
        got = 0
        with _module("zstd").ZstdDecompressor().stream_reader(buf) as reader:
            while got < nbytes:
                n = reader.readinto(view[got:])
                if not n:
                    break
                got += n
        if got != nbytes:
            raise CompressError(f"zstd value decoded to {got} bytes, expected {nbytes} for {dtype} {shape}")
        return out
    if name == "lz4":
        raw = _module("lz4").decompress(buf, return_bytearray=True)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if name == "png":
        import io

        image = _module("png").open(io.BytesIO(bytes(buf)))
        return np.array(image, dtype=dtype).reshape(shape)
    if name == "jpeg":
        cs = info.get("cs", "RGB")
        out = _module("jpeg").decode_jpeg(bytes(buf), colorspace="RGBA" if cs == "RGBX" else cs)
        return out.reshape(shape)
    raise CompressError(f"unknown codec {name!r} in an encoded item")


def decode_item(item: dict) -> dict:
    """``item`` with every encoded value (see ``MARKER``) decoded; items without are returned as is."""
    meta = item.get(MARKER) if isinstance(item, dict) else None
    if meta is None:
        return item
    out = {k: v for k, v in item.items() if k != MARKER}
    for key, info in meta.items():
        try:
            out[key] = decode_value(item[key], info)
        except CompressError:
            raise
        except Exception as exc:  # noqa: BLE001 - the library's error, with the key named
            raise CompressError(f"cannot decode item key {key!r} ({info.get('codec')}): {type(exc).__name__}: {exc}") from exc
    return out
