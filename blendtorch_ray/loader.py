"""``make_loader``: a DataLoader set up for a blendtorch-ray stream.

Kept apart from ``dataset`` so that ``from blendtorch_ray import make_loader`` does not import
torch: a script then imports torch while Ray and Blender start (see ``BlenderLauncher.start``).
"""

from __future__ import annotations

from typing import Any


def make_loader(dataset: Any, batch_size: int = 8, num_workers: int = 0, **kwargs: Any) -> Any:
    """A ``torch.utils.data.DataLoader`` over ``dataset`` (a ``RemoteIterableDataset``) that
    batches with ``blendtorch_ray.dataset.collate`` and whose workers can use Ray
    (forkserver start method when ``num_workers > 0``)."""
    from torch.utils.data import DataLoader

    from blendtorch_ray.dataset import collate

    kwargs.setdefault("collate_fn", collate)
    if num_workers > 0:
        kwargs.setdefault("multiprocessing_context", "forkserver")
        kwargs.setdefault("persistent_workers", False)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, **kwargs)
