"""Batching a stream: ``make_loader`` (a DataLoader set up for a blendtorch-ray stream) and
``collate`` (how items become a batch).

Kept apart from ``dataset`` and importing torch only when called, so that
``from blendtorch_ray import make_loader`` does not import torch: a script then imports torch
while Ray and Blender start (see ``BlenderLauncher.start``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from blendtorch_ray.shm_ring import ring_block


def make_loader(dataset: Any, batch_size: int = 8, num_workers: int = 0, device: Any = None, **kwargs: Any) -> Any:
    """A ``torch.utils.data.DataLoader`` over a stream, whose workers can use Ray.

    Batches with `blendtorch_ray.loader.collate`. With ``num_workers > 0`` the workers
    start with the forkserver method (a forked child cannot use its parent's Ray
    connection) and each one reads its own share of the instances. The workers are persistent
    (they live from one epoch to the next, and so do their streams) unless
    ``persistent_workers=False`` is passed.

    Args:
        dataset: A `blendtorch_ray.dataset.RemoteIterableDataset` (any dataset works).
        batch_size: Items per batch.
        num_workers: DataLoader worker processes; 0 reads in this process.
        device: None (default): batches stay in host memory. A device (``"cuda"``,
            ``"cuda:1"``, ``"cpu"``): batches arrive with every tensor on it, the next batch
            copied to a CUDA device on a side stream while the trainer uses the current one
            (`blendtorch_ray.prefetch.DevicePrefetcher`); ``pin_memory`` then defaults to True
            for CUDA devices.
        **kwargs: Further ``DataLoader`` arguments; ``collate_fn``,
            ``multiprocessing_context``, ``persistent_workers`` and ``pin_memory`` override
            the defaults.

    Returns:
        The ``torch.utils.data.DataLoader``; with ``device``, a
        `blendtorch_ray.prefetch.DevicePrefetcher` over it.

    Raises:
        ValueError: ``device`` is not a device torch knows.
        RuntimeError: ``device`` is a CUDA device that this torch or machine does not have.

    Example:
        Two workers, each reading its share of the instances::

            for batch in make_loader(bl.dataset(max_items=1000), batch_size=8, num_workers=2):
                images = batch["image"]   # (8, H, W, 4) uint8 tensor
    """
    from torch.utils.data import DataLoader

    prefetcher = None
    if device is not None:
        from blendtorch_ray.prefetch import DevicePrefetcher

        prefetcher = DevicePrefetcher((), device)  # checks the device before any worker starts
        if prefetcher.asynchronous:
            kwargs.setdefault("pin_memory", True)  # page-locked: usable by every GPU of the process
    kwargs.setdefault("collate_fn", collate)
    if num_workers > 0:
        kwargs.setdefault("multiprocessing_context", "forkserver")
        # Workers that live from one epoch to the next keep their Ray connection and their
        # open streams (blendtorch_ray/open_streams.py); new ones each epoch take seconds to
        # start and connect (benchmarks/epochs.py).
        kwargs.setdefault("persistent_workers", True)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, **kwargs)
    if prefetcher is not None:
        prefetcher.batches = loader
        return prefetcher
    return loader


def collate(batch: list) -> Any:
    """Collate items into a batch, like torch's ``default_collate`` but faster on arrays.

    Numpy arrays are stacked with ``np.stack`` (5x faster than torch's per-item
    ``as_tensor`` + ``stack`` here) and the warning about read-only arrays is not raised
    (Ray's zero-copy arrays are read-only; stacking copies them anyway). Rows that the
    shared-memory ring already copied out as one block are returned as that block, without a
    second copy (so a batch and the items it was made of share memory; arrays from anywhere
    else are always copied).

    Args:
        batch: The items (dicts, arrays or anything ``default_collate`` takes).

    Returns:
        Dicts collated key by key; arrays of one shape and dtype as one tensor with a
        leading batch dimension; anything else as ``default_collate`` returns it.
    """
    import torch
    from torch.utils.data import default_collate

    elem = batch[0]
    if isinstance(elem, np.ndarray) and elem.dtype != object:
        if all(isinstance(b, np.ndarray) and b.shape == elem.shape and b.dtype == elem.dtype for b in batch):
            rows = _consecutive_rows(batch)
            return torch.from_numpy(rows if rows is not None else np.stack(batch))
    if isinstance(elem, Mapping) and all(isinstance(b, Mapping) and b.keys() == elem.keys() for b in batch):
        return {key: collate([b[key] for b in batch]) for key in elem}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return default_collate(batch)


def _consecutive_rows(arrays: list) -> Optional[np.ndarray]:
    """If ``arrays`` are consecutive rows ``block[k], block[k+1], ...`` of memory that
    ``ShmRing.take`` copied out of the ring or the tcp link received (`register_block`),
    return ``block[k:k+n]``: the batch already exists, stacking would only copy it again.
    Otherwise (any other array) None."""
    first = arrays[0]
    owner = ring_block(first)
    if owner is None or not owner.flags.c_contiguous or owner.dtype != first.dtype or not first.size \
            or owner.size % first.size:
        return None
    block = owner.reshape((owner.size // first.size, *first.shape))
    row = block.strides[0]
    start = first.__array_interface__["data"][0] - block.__array_interface__["data"][0]
    if start % row or start // row + len(arrays) > block.shape[0]:
        return None
    k = start // row
    for j, a in enumerate(arrays):
        if a.base is not owner or not a.flags.c_contiguous or a.__array_interface__["data"][0] != block.__array_interface__["data"][0] + (k + j) * row:
            return None
    return block[k : k + len(arrays)]