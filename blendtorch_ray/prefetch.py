"""Batches that arrive on the trainer's device: ``DevicePrefetcher``.

A trainer on a GPU should not wait for host-to-device copies. ``DevicePrefetcher`` wraps any
iterable of batches (a ``make_loader`` DataLoader) and copies batch ``n + 1`` to the device on a
side CUDA stream while the trainer works on batch ``n``:

* the DataLoader pins each batch (``pin_memory=True``, the default ``make_loader`` picks when
  ``device`` is a CUDA device), so the copy is an asynchronous DMA from page-locked memory;
* the copy is issued on a separate ``torch.cuda.Stream`` with ``non_blocking=True``;
* before a batch is handed out, the consumer's stream waits for the copy (``wait_stream``), and
  every tensor is marked as used by the consumer's stream (``record_stream``), so that the
  caching allocator does not reuse its memory while the consumer's kernels still read it.

On a CPU device (or without CUDA) the same class moves tensors with ``.to(device)`` and
prefetches nothing: code written for a GPU runs unchanged on a laptop.

Batches may be tensors, or dicts / lists / tuples of them (nested); anything else (strings,
ints, numpy arrays of objects) passes through unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional


def move_to(batch: Any, device: Any, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor in it moved to ``device`` (dicts, lists, tuples nested).

    Args:
        batch: A tensor, or a dict / list / tuple holding tensors; other values pass through.
        device: A ``torch.device`` or a string such as ``"cuda:0"``.
        non_blocking: Passed to ``Tensor.to``: asynchronous from pinned memory on CUDA.

    Returns:
        The same structure with tensors on ``device``.
    """
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device, non_blocking) for v in batch)
    return batch


def _tensors(batch: Any) -> Iterator[Any]:
    """Every tensor in ``batch`` (the structures ``move_to`` walks)."""
    import torch

    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for v in batch.values():
            yield from _tensors(v)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            yield from _tensors(v)


class DevicePrefetcher:
    """Iterate ``batches`` with every tensor already on ``device``, one batch copied ahead.

    Args:
        batches: Any iterable of batches, e.g. ``make_loader(...)``; iterated once per
            ``iter()`` of the prefetcher.
        device: Where batches land: ``"cuda"``, ``"cuda:1"``, a ``torch.device``, or ``"cpu"``.

    Raises:
        ValueError: ``device`` is not a device torch knows (names the value and the fix).
        RuntimeError: ``device`` is a CUDA device and this torch has no CUDA, or no such GPU.

    Example:
        On a GPU trainer::

            loader = make_loader(bl.dataset(), batch_size=8, num_workers=2, device="cuda")
            for batch in loader:          # batch["image"] is a CUDA tensor already
                loss = model(batch["image"].float())
    """

    def __init__(self, batches: Iterable, device: Any) -> None:
        import torch

        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device={device!r} is not a torch device ({e}); pass e.g. 'cuda', 'cuda:0' or 'cpu'") from e
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"device={device!r}: this torch ({torch.__version__}) sees no CUDA device; "
                    "install a CUDA build of torch on a machine with an NVIDIA GPU, or pass device='cpu'")
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            if index >= torch.cuda.device_count():
                raise RuntimeError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) visible "
                                   f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
            self.device = torch.device("cuda", index)
        self.batches = batches

    @property
    def asynchronous(self) -> bool:
        """True when copies run on a side CUDA stream, one batch ahead of the consumer."""
        return self.device.type == "cuda"

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        if not self.asynchronous:
            for batch in self.batches:
                yield move_to(batch, self.device)
            return
        yield from self._cuda_iter()

    def _cuda_iter(self) -> Iterator[Any]:
        import torch

        stream = torch.cuda.Stream(device=self.device)
        it = iter(self.batches)

        def ahead() -> Optional[tuple[Any]]:
            try:
                host = next(it)
            except StopIteration:
                return None
            with torch.cuda.stream(stream):
                return (move_to(host, self.device, non_blocking=True),)

        nxt = ahead()
        while nxt is not None:
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_stream(stream)
            batch = nxt[0]
            for t in _tensors(batch):
                if t.device.type == "cuda":
                    t.record_stream(consumer)
            nxt = ahead()
            yield batch
