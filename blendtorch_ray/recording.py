"""Record a stream to WebDataset tar shards and replay it without Blender or Ray.

Format (WebDataset-style, readable by ``ray.data.read_webdataset`` and ``webdataset``): each
item is a run of tar members sharing a key ``<prefix>-<index>``::

    <key>.<field>.npy      one per numpy array (``np.save`` format)
    <key>.<field>.pickle   one per other object that JSON cannot hold exactly
    <key>.json             the JSON-able fields, plus ``__fields__`` (written last)

The ``.json`` member is written last and the file is flushed after every item, so a
recording process killed at any point (SIGKILL included) leaves every complete item
readable: ``ReplayDataset`` keeps an item only when its ``.json`` and every member it lists
are complete, and reports how many items it found (``ReplayDataset.summary``).

Replay is a map-style torch ``Dataset`` with random access by index (it indexes member
offsets once and reads with ``seek``), so it works with DataLoader workers and shuffling.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import pickle
import tarfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from torch.utils.data import Dataset

log = logging.getLogger("blendtorch_ray")

FIELDS = "__fields__"
"""Key in each item's .json member listing its .npy / .pickle fields."""


def _json_exact(value: Any) -> bool:
    """True when ``value`` survives a JSON round trip unchanged (type included)."""
    if isinstance(value, (np.generic, tuple)):  # would come back as a float / list
        return False
    try:
        back = json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return False
    return type(back) is type(value) and back == value  # NaN != NaN: pickled


class Recorder:
    """Write items (dicts) into tar shards ``<prefix>-<shard:06d>.tar`` in ``directory``.

    ``BlenderLauncher.dataset(record_to=...)`` records with one of these; use it directly
    to record any iterable of items. ``items`` counts the items written, ``shards`` lists
    the shard paths.

    Args:
        directory: Created if missing. Several recorders may write into one directory
            (distinct prefixes).
        prefix: Shard name prefix; default a unique ``rec-<time>-<random>``.
        max_items_per_shard: A new shard starts after this many items ...
        max_shard_bytes: ... or once a shard grows past this size.
        fsync: Also ``fsync`` after every item (survives power loss, not only a killed
            process).

    Raises:
        ValueError: A limit is below 1, or ``prefix`` contains '.' or '/'.

    Example:
        Record a live stream, replay it later::

            with Recorder("recordings/run1") as rec:
                for item in bl.dataset(max_items=1000):
                    rec.write(item)
            ds = ReplayDataset("recordings/run1")   # later, without Blender or Ray
    """

    def __init__(
        self,
        directory: str,
        prefix: Optional[str] = None,
        max_items_per_shard: int = 1000,
        max_shard_bytes: int = 1 << 30,
        fsync: bool = False,
    ) -> None:
        if max_items_per_shard < 1 or max_shard_bytes < 1:
            raise ValueError("max_items_per_shard and max_shard_bytes must be >= 1")
        if prefix is not None and ("." in prefix or "/" in prefix):
            raise ValueError(f"prefix {prefix!r} must not contain '.' or '/' (WebDataset keys end at the first dot)")
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.prefix = prefix or f"rec-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.max_items_per_shard = max_items_per_shard
        self.max_shard_bytes = max_shard_bytes
        self.fsync = fsync
        self.items = 0
        self.shards: list[str] = []
        self._file: Optional[io.BufferedWriter] = None
        self._tar: Optional[tarfile.TarFile] = None
        self._in_shard = 0

    def _open_shard(self) -> None:
        path = os.path.join(self.directory, f"{self.prefix}-{len(self.shards):06d}.tar")
        self._file = open(path, "xb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.shards.append(path)
        self._in_shard = 0

    def _close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()  # writes the end-of-archive blocks
            self._file.close()  # type: ignore[union-attr]
        self._tar = self._file = None

    def _add(self, name: str, data: bytes, mtime: float) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = int(mtime)
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))  # type: ignore[union-attr]

    def write(self, item: dict) -> None:
        """Append one item; it is complete on disk when this returns.

        Arrays become ``.npy`` members, JSON-able values go into the item's ``.json``,
        anything else is pickled.

        Args:
            item: The item; its keys name tar members.

        Raises:
            TypeError: ``item`` is not a dict.
            ValueError: A key is not a string, contains '.' or '/', or is reserved
                (``__fields__``, ``json``).
        """
        if not isinstance(item, dict):
            raise TypeError(f"recorded items are dicts, got {type(item).__name__}")
        bad = [k for k in item if not isinstance(k, str) or "." in k or "/" in k or k in (FIELDS, "json")]
        if bad:
            raise ValueError(f"item keys {bad} cannot name tar members; use strings without '.' or '/'")
        if self._tar is None:
            self._open_shard()
        key = f"{self.prefix}-{self.items:09d}"
        now = time.time()
        meta: dict[str, Any] = {}
        fields: dict[str, str] = {}
        for name, value in item.items():
            if isinstance(value, np.ndarray) and not value.dtype.hasobject:
                buf = io.BytesIO()
                np.save(buf, value, allow_pickle=False)
                self._add(f"{key}.{name}.npy", buf.getvalue(), now)
                fields[name] = "npy"
            elif _json_exact(value):
                meta[name] = value
            else:
                self._add(f"{key}.{name}.pickle", pickle.dumps(value, protocol=5), now)
                fields[name] = "pickle"
        meta[FIELDS] = fields
        self._add(f"{key}.json", json.dumps(meta).encode(), now)
        self._file.flush()  # type: ignore[union-attr]
        if self.fsync:
            os.fsync(self._file.fileno())  # type: ignore[union-attr]
        self.items += 1
        self._in_shard += 1
        if self._in_shard >= self.max_items_per_shard or self._file.tell() >= self.max_shard_bytes:  # type: ignore[union-attr]
            self._close_shard()

    def close(self) -> None:
        """Finish the current shard (a killed recorder's shards stay readable anyway)."""
        self._close_shard()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class _Member:
    offset: int
    size: int


@dataclass
class ShardReport:
    """What the index found in one shard."""

    path: str
    """The shard file."""
    items: int
    """Complete items found in it."""
    complete: bool
    """False when the shard ends mid-item (recording killed); its complete items still count."""
    detail: str = ""
    """Why the shard is not complete ("" when it is)."""


def _scan(path: str) -> tuple[list[dict[str, Any]], ShardReport]:
    """Index the complete items of one shard: [{field: _Member, "json": _Member}]."""
    size = os.path.getsize(path)
    items: list[dict[str, Any]] = []
    current_key: Optional[str] = None
    members: dict[str, _Member] = {}
    clean, detail = True, ""

    def finish() -> None:
        meta = members.get("json")
        if meta is None:
            return
        items.append(dict(members))

    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                base = os.path.basename(info.name)
                key, _, suffix = base.partition(".")
                if key != current_key:
                    finish()
                    current_key, members = key, {}
                if info.offset_data + info.size > size:
                    clean, detail = False, f"member {info.name} is truncated"
                    break
                field = "json" if suffix == "json" else suffix.rsplit(".", 1)[0]
                members[field] = _Member(info.offset_data, info.size)
            else:
                finish()
                members = {}
    except (tarfile.ReadError, EOFError, OSError) as exc:
        clean, detail = False, f"{type(exc).__name__}: {exc}"
    if clean and not _closed(path, size):
        clean, detail = False, "no end-of-archive marker (recording killed or still running)"
    return items, ShardReport(path, len(items), clean, detail)


TAR_BLOCK = 512
"""Bytes of a tar block: a tar file is a whole number of them."""

TAR_END_OF_ARCHIVE = 2 * TAR_BLOCK
"""Bytes of the zero blocks that end a complete tar file."""


def _closed(path: str, size: int) -> bool:
    """True when the shard ends with tar's end-of-archive blocks (a finished recording)."""
    if size < TAR_END_OF_ARCHIVE or size % TAR_BLOCK:
        return False
    with open(path, "rb") as f:
        f.seek(size - TAR_END_OF_ARCHIVE)
        return f.read(TAR_END_OF_ARCHIVE) == bytes(TAR_END_OF_ARCHIVE)


def shard_paths(source: Union[str, Sequence[str]]) -> list[str]:
    """The .tar shards of a recording.

    Args:
        source: A recording directory, a glob pattern, a shard file or a list of files.

    Returns:
        The shard paths (sorted, unless given as a list).

    Raises:
        FileNotFoundError: No shard found.
    """
    if isinstance(source, (list, tuple)):
        paths = [str(p) for p in source]
    elif os.path.isdir(source):
        paths = sorted(glob.glob(os.path.join(source, "*.tar")))
    else:
        paths = sorted(glob.glob(str(source)))
    if not paths:
        raise FileNotFoundError(f"no .tar shards found at {source!r}; record with record_to=<dir> first")
    return paths


class ReplayDataset(Dataset):
    """A recording as a map-style torch ``Dataset`` (random access, DataLoader workers).

    Items come back as recorded (arrays, JSON-able values and pickled objects, with
    ``btid``, ``seq``, ... as published). ``summary`` says how many items were found and
    which shards were cut short. Needs neither Blender nor Ray.

    Args:
        source: Recording directory, glob pattern, or shard files (see `shard_paths`).
        item_transform: Applied to every item on access.

    Raises:
        FileNotFoundError: No shard found.

    Example:
        Shuffled batches from a recording::

            ds = ReplayDataset("recordings/run1")
            print(ds.summary)
            loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True,
                                                 collate_fn=blendtorch_ray.loader.collate)
    """

    def __init__(self, source: Union[str, Sequence[str]], item_transform: Optional[Callable[[dict], Any]] = None) -> None:
        self.paths = shard_paths(source)
        self.item_transform = item_transform
        self._index: list[tuple[int, dict[str, Any]]] = []
        self.reports: list[ShardReport] = []
        for s, path in enumerate(self.paths):
            items, report = _scan(path)
            self.reports.append(report)
            self._index.extend((s, members) for members in items)
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()
        log.info(self.summary)

    @property
    def summary(self) -> str:
        """E.g. ``"replay: 1000 items in 2 shard(s); 1 shard(s) cut short: ..."``."""
        cut = [r for r in self.reports if not r.complete]
        text = f"replay: {len(self)} items in {len(self.reports)} shard(s)"
        if cut:
            text += f"; {len(cut)} shard(s) cut short (kept their complete items): " + ", ".join(
                f"{os.path.basename(r.path)} ({r.items} items, {r.detail})" for r in cut
            )
        return text

    def __len__(self) -> int:
        return len(self._index)

    def _seek(self, shard: int, member: _Member) -> Any:
        if os.getpid() != self._pid:  # a DataLoader worker: do not share file positions
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.paths[shard], "rb")
        f.seek(member.offset)
        return f

    def _read(self, shard: int, member: _Member) -> bytes:
        return self._seek(shard, member).read(member.size)

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for a recording of {len(self)} items")
        shard, members = self._index[index]
        item = json.loads(self._read(shard, members["json"]))
        fields = item.pop(FIELDS, {})
        for name, kind in fields.items():
            if kind == "npy":  # read straight into the array, no intermediate copy
                item[name] = np.lib.format.read_array(self._seek(shard, members[name]), allow_pickle=False)
            else:
                item[name] = pickle.loads(self._read(shard, members[name]))
        return self.item_transform(item) if self.item_transform else item

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def close(self) -> None:
        """Close the shard files opened for reading (they reopen on the next access)."""
        for f in self._files.values():
            f.close()
        self._files = {}
