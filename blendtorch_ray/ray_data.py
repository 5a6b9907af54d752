"""A bounded Ray Data ``Dataset`` of items from a running group of Blender instances.

Ray Data has no unbounded source, so this reads exactly ``num_items`` items and stops.
Each read task runs in a Ray worker, looks the group's actors up by name (group, namespace,
btids travel to the task, never actor handles), pulls batches from their ``stream()``
generators through ``RemoteIterableDataset`` and emits blocks of ``block_size`` rows.

Item dicts become table rows; how each key becomes a column:

- arrays of the same shape and dtype in every item: a tensor column (``ArrowTensorType``),
  e.g. ``image`` (H, W, 4) uint8 -> ``iter_torch_batches()["image"]`` of shape (B, H, W, 4);
- arrays whose shape differs between items: a variable-shaped tensor column;
- numbers, bools, strings (numpy or Python scalars): a plain column;
- anything else (dicts, lists, None, objects): ``objects="pickle"`` (default) stores
  ``pickle.dumps(value)`` in a binary column; ``"drop"`` leaves it out; ``"error"`` raises.

The dataset is lazy, as every Ray Data dataset: each execution (each ``iter_*`` pass, each
Ray Train epoch, each ``write_*``) renders fresh items. ``materialize()`` pins one set.
When a read task has its items it cancels its generators; items the actor had already
rendered ahead for it (up to ``max_batches_in_flight`` batches) are discarded.
"""

from __future__ import annotations

import numbers
import pickle
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import ray
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from blendtorch_ray import validation
from blendtorch_ray.errors import BlendtorchError

_OBJECT_MODES = ("pickle", "drop", "error")


@dataclass(frozen=True)
class ReadOptions:
    """How items are pulled from the instances and shaped into blocks.

    Give its fields as keyword arguments of ``BlenderLauncher.ray_dataset()``.

    Raises:
        ValueError: A field is out of range, or ``columns`` is a string or empty.
    """

    block_size: int = 32
    """Rows per block (8-64 frames keeps blocks within Ray's 1-128 MiB target)."""
    columns: Optional[tuple] = None
    """Keep only these item keys (None: every key, including btid/seq/seed/epoch)."""
    objects: str = "pickle"
    """Values that are neither arrays nor scalars: "pickle" (binary column), "drop" or "error"."""
    timeout: float = 60.0
    """Seconds without any item before the read fails with ``StreamTimeout``."""
    max_batches_in_flight: int = 4
    """Batches each instance may render ahead of its read task."""
    item_nbytes: Optional[int] = None
    """Approximate bytes per item, used for Ray's memory estimate (None: unknown)."""

    def __post_init__(self) -> None:
        validation.positive_int("block_size", self.block_size, owner="ReadOptions", example=32)
        validation.one_of("objects", self.objects, _OBJECT_MODES, owner="ReadOptions")
        validation.stream_options("ReadOptions", timeout=self.timeout, max_batches_in_flight=self.max_batches_in_flight)
        validation.optional_positive_int("item_nbytes", self.item_nbytes, owner="ReadOptions", example=1_228_800,
                                         hint="None: unknown")
        if self.columns is not None and (isinstance(self.columns, str) or not self.columns):
            raise ValueError("columns must be a non-empty sequence of item keys, e.g. ('image', 'xy')")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (numbers.Number, np.generic, str, bytes)) and not isinstance(value, np.ndarray)


def items_to_batch(items: Sequence[dict], options: ReadOptions = ReadOptions()) -> dict[str, np.ndarray]:
    """Turn item dicts into one column batch (dict of numpy arrays), as described above.

    Args:
        items: The rows.
        options: ``columns`` and ``objects`` decide which keys become columns and how.

    Returns:
        ``{column: array with one entry per item}``.

    Raises:
        KeyError: A requested column is in none of the items.
        TypeError: A value is neither an array nor a scalar and ``objects="error"``.
    """
    keys: list[str] = list(options.columns) if options.columns else []
    if not keys:
        for item in items:
            keys.extend(k for k in item if k not in keys)
    batch: dict[str, np.ndarray] = {}
    for key in keys:
        values = [item.get(key) for item in items]
        if options.columns and not any(key in item for item in items):
            raise KeyError(f"column {key!r} is not in the items; they have keys {sorted(items[0])}")
        if all(isinstance(v, np.ndarray) for v in values):
            if len({(v.shape, v.dtype) for v in values}) == 1:
                batch[key] = np.stack(values)
            else:
                ragged = np.empty(len(values), dtype=object)
                ragged[:] = values
                batch[key] = ragged
        elif all(_is_scalar(v) for v in values) and len({type(v) for v in values}) == 1:
            batch[key] = np.asarray(values)
        elif options.objects == "pickle":
            column = np.empty(len(values), dtype=object)
            column[:] = [pickle.dumps(v, protocol=5) for v in values]
            batch[key] = column
        elif options.objects == "error":
            kinds = sorted({type(v).__name__ for v in values})
            raise TypeError(
                f"item key {key!r} holds {kinds}, which is neither an array nor a scalar; publish "
                "arrays/numbers, or read with objects='pickle' (binary column) or objects='drop'"
            )
    return batch


def _read_instances(
    group: str,
    namespace: str,
    num_instances: int,
    btids: list[int],
    budget: int,
    options: ReadOptions,
) -> Iterator[Block]:
    """Body of one read task: ``budget`` items from ``btids``, in blocks."""
    from blendtorch_ray.dataset import RemoteIterableDataset

    source = RemoteIterableDataset(
        group=group,
        namespace=namespace,
        num_instances=num_instances,
        max_items=budget,
        timeout=options.timeout,
        max_batches_in_flight=options.max_batches_in_flight,
        btids=btids,
    )
    rows: list[dict] = []
    count = 0
    for item in source:
        rows.append(item)
        count += 1
        if len(rows) == options.block_size:
            yield BlockAccessor.batch_to_block(items_to_batch(rows, options))
            rows = []
    if rows:
        yield BlockAccessor.batch_to_block(items_to_batch(rows, options))
    if count < budget:
        raise BlendtorchError(
            f"instances {btids} of group {group!r} finished after {count} of the {budget} items "
            "this read task needs; ask for fewer items or let the scene publish more "
            "(e.g. --frames 0 for the bundled cube scene)"
        )


class BlenderDatasource(Datasource):
    """Ray Data source reading ``num_items`` items from a running group (see module doc).

    Read tasks: one per instance, or fewer when Ray asks for less parallelism (then each task
    reads several instances at once); the item budget is split evenly over the tasks.

    Args:
        group: Name of the launched group.
        namespace: Its Ray namespace.
        num_instances: Number of instances in the group.
        num_items: Rows of the dataset (the group must render at least that many).
        btids: Read only these instances; None: all.
        options: How items are read and shaped into blocks.

    Raises:
        ValueError: ``num_items`` is not a positive integer, or ``btids`` is empty or not
            a subset of the group.
    """

    def __init__(
        self,
        group: str,
        namespace: str,
        num_instances: int,
        num_items: int,
        btids: Optional[Sequence[int]] = None,
        options: ReadOptions = ReadOptions(),
    ) -> None:
        super().__init__()
        if not isinstance(num_items, int) or num_items < 1:
            raise ValueError(
                f"num_items must be a positive integer, got {num_items!r}: a Ray Dataset is bounded "
                "(for an endless stream use BlenderLauncher.dataset())"
            )
        self.group = group
        self.namespace = namespace
        self.num_instances = num_instances
        self.num_items = num_items
        self.btids = list(range(num_instances)) if btids is None else [int(b) for b in btids]
        if not self.btids or any(not 0 <= b < num_instances for b in self.btids):
            raise ValueError(f"btids must be a non-empty subset of 0..{num_instances - 1}, got {btids!r}")
        self.options = options

    def get_name(self) -> str:
        """Name of the source in Ray Data's progress output.

        Returns:
            ``"Blender"``.
        """
        return "Blender"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        """Bytes the dataset takes in memory, for Ray's planning.

        Returns:
            ``ReadOptions.item_nbytes * num_items``, or None when ``item_nbytes`` is unknown.
        """
        if self.options.item_nbytes is None:
            return None
        return self.options.item_nbytes * self.num_items

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: Optional[int] = None,
        data_context: Any = None,
    ) -> list[ReadTask]:
        """Split the read into tasks (called by Ray Data).

        Args:
            parallelism: Tasks Ray asks for; at most one per instance and per item.
            per_task_row_limit: Row limit Ray passes on to each task (e.g. from ``limit()``).
            data_context: Ray Data's context (unused).

        Returns:
            One ``ReadTask`` per group of instances, each with its share of ``num_items``.
        """
        n = max(1, min(parallelism, len(self.btids), self.num_items))
        tasks = []
        for k in range(n):
            btids = self.btids[k::n]
            budget = self.num_items // n + (1 if k < self.num_items % n else 0)
            size = None if self.options.item_nbytes is None else self.options.item_nbytes * budget
            meta = BlockMetadata(num_rows=budget, size_bytes=size, input_files=None, exec_stats=None)
            args = (self.group, self.namespace, self.num_instances, btids, budget, self.options)
            tasks.append(
                ReadTask(
                    lambda args=args: _read_instances(*args),
                    meta,
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks


def read_group(
    group: str,
    namespace: str,
    num_instances: int,
    num_items: int,
    btids: Optional[Sequence[int]] = None,
    ray_remote_args: Optional[dict] = None,
    **options: Any,
) -> "ray.data.Dataset":
    """A ``ray.data.Dataset`` of ``num_items`` items from a running group.

    Usually called as ``BlenderLauncher.ray_dataset(n)``.

    Args:
        group: Name of the launched group.
        namespace: Its Ray namespace.
        num_instances: Number of instances in the group.
        num_items: Rows of the dataset.
        btids: Read only these instances; None: all.
        ray_remote_args: Resources of the read tasks (e.g. ``{"num_cpus": 0.5}``).
        **options: `ReadOptions` fields (``block_size``, ``columns``, ``objects``,
            ``timeout``, ``max_batches_in_flight``, ``item_nbytes``).

    Returns:
        The (lazy) ``ray.data.Dataset``.

    Raises:
        ValueError: An argument or option is invalid (see `ReadOptions`, `BlenderDatasource`).

    Example:
        256 rows of two columns, as torch batches::

            ds = read_group("my-group", "blendtorch", num_instances=2, num_items=256,
                            columns=("image", "xy"))
            for batch in ds.iter_torch_batches(batch_size=32):
                images = batch["image"]
    """
    if "columns" in options and options["columns"] is not None:
        options["columns"] = tuple(options["columns"])
    source = BlenderDatasource(group, namespace, num_instances, num_items, btids, ReadOptions(**options))
    # Ray 2.60 takes the read tasks' resources as named parameters (its ray_remote_args is
    # deprecated, to be removed in 2.64); any other remote argument still goes through it.
    named = {k: v for k, v in (ray_remote_args or {}).items() if k in _NAMED_READ_ARGS}
    rest = {k: v for k, v in (ray_remote_args or {}).items() if k not in _NAMED_READ_ARGS}
    return ray.data.read_datasource(
        source,
        override_num_blocks=len(source.btids),
        **named,
        **({"ray_remote_args": rest} if rest else {}),
    )


_NAMED_READ_ARGS = ("num_cpus", "num_gpus", "memory", "resources", "accelerator_type", "runtime_env",
                    "label_selector", "max_calls")
"""Remote arguments that ``ray.data.read_datasource`` takes as named parameters."""
