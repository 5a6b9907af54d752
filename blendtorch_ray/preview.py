"""Contact sheets of streamed images, as PIL images that notebooks display inline.

`show` accepts what a stream gives you at each stage: a list of item dicts (or of bare
arrays), a collated batch (``make_loader``'s dicts of tensors), or a `RemoteIterableDataset`
itself, from which it reads up to ``max_items`` items. Jupyter renders the returned
``PIL.Image.Image`` as a PNG when it is the value of the last line of a cell.

Imports only numpy and Pillow at module level (torch tensors are converted through their
``numpy()`` method), so it is cheap to import.
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Iterable, Optional

import numpy as np


def _to_numpy(value: Any) -> np.ndarray:
    """An array from a numpy array, a torch tensor (detached, on the CPU) or a sequence."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _to_uint8_rgb(img: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 or float in [0, 1] -> (H, W, 3) uint8."""
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {img.shape}")
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img = img[..., :3]
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if np.issubdtype(img.dtype, np.floating):
        return np.ascontiguousarray((np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    if img.dtype == np.bool_ or np.issubdtype(img.dtype, np.integer):
        return np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
    raise ValueError(f"an image must be uint8 or float in [0, 1]; got dtype {img.dtype}")


def _images(source: Any, key: str, max_items: int) -> list[np.ndarray]:
    """Up to ``max_items`` images, each an array, from any source `show` accepts."""
    if isinstance(source, dict):  # a collated batch: source[key] is (B, H, W[, C])
        if key not in source:
            raise KeyError(f"the batch has no key {key!r}; its keys: {sorted(source)}")
        batch = _to_numpy(source[key])
        if batch.ndim not in (3, 4):
            raise ValueError(f"batch[{key!r}] must be (B, H, W) or (B, H, W, C); got shape {batch.shape}")
        return list(batch[:max_items])
    if hasattr(source, "ndim") and hasattr(source, "shape"):  # one stacked array or tensor
        batch = _to_numpy(source)
        if batch.ndim not in (3, 4):
            raise ValueError(f"an array of images must be (B, H, W) or (B, H, W, C); got shape {batch.shape}")
        return list(batch[:max_items])
    if not isinstance(source, Iterable):
        raise TypeError(f"show() takes items, a batch or a dataset; got {type(source).__name__}")
    images: list[np.ndarray] = []
    for item in islice(iter(source), max_items):
        if isinstance(item, dict):
            if key not in item:
                raise KeyError(f"an item has no key {key!r}; its keys: {sorted(item)}")
            item = item[key]
        images.append(_to_numpy(item))
    return images


def show(
    items_or_batch: Any,
    key: str = "image",
    columns: int = 8,
    max_items: int = 32,
    thumb_width: Optional[int] = None,
):
    """A contact sheet (a grid of images) of streamed items, as a PIL image.

    Images are laid out row by row, left to right, each in a cell the size of the first
    image (or ``thumb_width`` wide, keeping its aspect ratio); empty cells stay white. Alpha
    is dropped, gray images are shown as RGB.

    Args:
        items_or_batch: A list (or any iterable) of item dicts or of bare images; a collated
            batch, i.e. a dict whose ``key`` holds a (B, H, W, C) or (B, H, W) tensor or
            array; a single such stacked array; or a `RemoteIterableDataset` (or any other
            iterable of items), from which up to ``max_items`` items are read. Images are
            uint8, or float in [0, 1] (clipped).
        key: The item key that holds the image.
        columns: Images per row (fewer if there are fewer images).
        max_items: At most this many images are shown (and read from a dataset).
        thumb_width: Width of each cell in pixels; None: the first image's own size.

    Returns:
        A ``PIL.Image.Image`` in RGB mode, ``min(columns, n)`` cells wide and
        ``ceil(n / columns)`` cells high for ``n`` images. Notebooks display it inline;
        ``.save("sheet.png")`` writes it.

    Raises:
        ValueError: No images, an argument out of range, or an image of an unsupported shape
            or dtype.
        KeyError: An item or the batch has no ``key``.
        TypeError: ``items_or_batch`` is none of the accepted kinds.

    Example:
        In a notebook cell, after a launcher started::

            from blendtorch_ray import make_loader, show

            batch = next(iter(make_loader(bl.dataset(max_items=16), batch_size=16)))
            show(batch, columns=4)                  # displayed inline
            show(bl.dataset(max_items=8)).save("sheet.png")
    """
    from PIL import Image

    for name, value in (("columns", columns), ("max_items", max_items)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"show(): {name} must be a positive int; got {value!r}")
    if thumb_width is not None and (not isinstance(thumb_width, int) or thumb_width < 1):
        raise ValueError(f"show(): thumb_width must be a positive int or None; got {thumb_width!r}")
    images = [_to_uint8_rgb(img) for img in _images(items_or_batch, key, max_items)]
    if not images:
        raise ValueError("show(): there are no images to show")
    h0, w0 = images[0].shape[:2]
    cell_w = w0 if thumb_width is None else thumb_width
    cell_h = h0 if thumb_width is None else max(1, int(h0 * thumb_width / w0))
    cols = min(columns, len(images))
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    for i, img in enumerate(images):
        tile = Image.fromarray(img)
        if tile.size != (cell_w, cell_h):
            tile = tile.resize((cell_w, cell_h))
        sheet.paste(tile, ((i % cols) * cell_w, (i // cols) * cell_h))
    return sheet
