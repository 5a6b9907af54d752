"""Start a named group of supervised Blender instances on Ray, or attach to a running one."""

from __future__ import annotations

import atexit
import os
import logging
import uuid
from dataclasses import replace
from typing import Any, Callable, Optional

import ray

from blendtorch_ray.health import InstanceHealth, health_for_display
from blendtorch_ray.blender import find_blender
from blendtorch_ray.config import LaunchConfig
from blendtorch_ray.early_read import EarlyGroup
from blendtorch_ray.group_start import create_actors, find_actors, prepare_ray
from blendtorch_ray.prestart import can_prestart, prefetch_consumer_imports, prestart
from blendtorch_ray.runtime import run_in_keeper_thread

log = logging.getLogger("blendtorch_ray")


CLOSE_TIMEOUT_S = 15.0
"""How long ``close()`` waits for the actors to end their Blenders before killing them."""


class BlenderLauncher:
    """Launch ``num_instances`` Blender processes, each under its own Ray actor.

    In local mode (no Ray running) ``ray.init()`` is called for you. Instances start in
    parallel; ``start()`` returns once every instance passed its readiness handshake, or
    raises ``BlenderStartError`` (with the Blender log tail) and cleans up. The actors are
    named ``{name}/{btid}`` in ``namespace``, so other processes can ``attach`` to the group.

    Args:
        config: The whole configuration; None builds a `LaunchConfig` from ``kwargs``.
        **kwargs: `LaunchConfig` fields (``script=`` is required without ``config``); with
            ``config`` they replace its fields.

    Raises:
        FileNotFoundError: The script or scene does not exist (from `LaunchConfig`).
        ValueError: An option is out of range (from `LaunchConfig`).

    Example:
        Use it as a context manager, so that every Blender ends with the block::

            with BlenderLauncher(script="scene.py", num_instances=2) as bl:
                for item in bl.dataset(max_items=100):
                    ...
    """

    def __init__(self, config: Optional[LaunchConfig] = None, **kwargs: Any) -> None:
        if config is None:
            config = LaunchConfig.of(**kwargs)
        elif kwargs:
            config = config.with_options(**kwargs)
        if config.name is None:
            config = replace(config, name=f"btr-{uuid.uuid4().hex[:8]}")
        self.config = config
        self.name: str = config.name  # type: ignore[assignment]
        self.namespace = config.namespace
        self._actors: list = []
        self._early: Optional[EarlyGroup] = None
        """The prestarted Blenders read before Ray is up (``read_before_ray``), or None."""
        self._owner = True
        self._started = False

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> "BlenderLauncher":
        """Create the actors and wait until every instance is ready (``with`` calls this).

        In local mode with ``read_before_ray`` (the default), this returns once every
        Blender said hello, while Ray and the actors come up in the background: a dataset
        iterated in this process reads the Blenders directly meanwhile
        (`blendtorch_ray.early_read`), and anything that needs the actors waits for them (and
        raises what kept them from coming up).

        Returns:
            This launcher, started (calling ``start()`` again does nothing).

        Raises:
            BlenderNotFoundError: No usable Blender (``LaunchConfig.blender``).
            ValueError: The cluster cannot hold the group (see `check_capacity`), unless
                ``wait_for_resources=True``.
            BlenderStartError: An instance did not pass its readiness handshake in time,
                or not every instance was scheduled; carries the Blender log tail.
        """
        if self._started:
            return self
        cfg = self.config
        blender = find_blender(cfg.blender, ui=cfg.ui)  # fail fast, in the driver, with the fix in the message
        prestarted: dict = {}
        read_early = False
        if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS") and can_prestart(cfg):
            # Local mode, Ray not up yet: Blender boots while Ray starts; actors adopt it.
            read_early = cfg.supervision.read_before_ray
            prestarted = {b: prestart(cfg, b, blender, read_early) for b in range(cfg.num_instances)}
        prefetch_consumer_imports()
        self._prestarted = list(prestarted.values())
        if read_early:
            try:
                self._early = EarlyGroup.open(cfg, prestarted)
            except BaseException:
                self._discard_prestarted()
                raise
            self._early.up = run_in_keeper_thread(lambda: self._bring_up(prestarted))
        else:
            self._bring_up(prestarted)
        self._started = True
        atexit.register(self.close)
        return self

    def _bring_up(self, prestarted: dict) -> None:
        """Start Ray if needed, create the actors and wait until every one is ready."""
        try:
            self.config = prepare_ray(self.config, self.namespace)
        except BaseException:
            self._discard_prestarted()
            raise
        try:
            create_actors(self.config, self.name, self.namespace, prestarted, self._actors, self._early)
        except BaseException:
            self._close_group()
            raise

    def _wait_up(self) -> None:
        """Wait for a start in the background (``read_before_ray``); raise why it failed."""
        if self._early is not None:
            self._early.wait_up()

    def _discard_prestarted(self) -> None:
        """End prestarted Blender processes no actor runs any more (or ever adopted)."""
        if self._early is not None:
            self._early.close()
        for p in getattr(self, "_prestarted", []):
            p.discard()
        self._prestarted = []

    @property
    def actors(self) -> list:
        """The instances' actor handles, in ``btid`` order (waits for a start in the background)."""
        if self._started:
            self._wait_up()
        return self._actors

    def close(self) -> None:
        """Stop every Blender and its actor; safe to call more than once.

        Only the launching process owns the group: on a launcher from `attach`, this does
        nothing.
        """
        if not self._owner:
            return
        if self._early is not None:  # a start in the background finishes first (bounded by its timeouts)
            try:
                self._early.wait_up()
            except Exception as exc:  # it cleaned up after itself
                log.debug("group %r: its start failed: %s", self.name, exc)
        self._close_group()

    def _close_group(self) -> None:
        actors, self._actors = self._actors, []
        if actors:
            try:
                ray.get([a.close.remote() for a in actors], timeout=CLOSE_TIMEOUT_S)
            except ray.exceptions.RayError as exc:  # dead actors are fine here
                log.debug("group %r: closing its actors: %s", self.name, exc)
            for a in actors:
                try:
                    ray.kill(a)
                except (ray.exceptions.RayError, ValueError) as exc:  # already gone
                    log.debug("group %r: ray.kill: %s", self.name, exc)
        self._discard_prestarted()
        self._started = False

    def __enter__(self) -> "BlenderLauncher":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- attach ----------------------------------------------------------------------
    @classmethod
    def attach(cls, name: str, namespace: str = "blendtorch", address: Optional[str] = "auto") -> "BlenderLauncher":
        """Attach to a running group by name (from another driver or a notebook).

        Args:
            name: The group's name (``BlenderLauncher.name`` / ``LaunchConfig.name``).
            namespace: Its Ray namespace.
            address: Ray address to connect to if Ray is not initialized yet ("auto": the
                running cluster on this machine).

        Returns:
            A launcher that reads the group (``dataset``, ``health``, ...) but does not own
            it: ``close()`` leaves its instances running.

        Raises:
            ValueError: No group of that name in the namespace.

        Example:
            From a second process, while the first one trains::

                bl = BlenderLauncher.attach("my-group")
                print(bl.health())
        """
        actors = find_actors(name, namespace, address)
        self = cls.__new__(cls)
        self.config = None  # type: ignore[assignment]
        self.name, self.namespace, self._actors, self._early = name, namespace, actors, None
        self._owner, self._started = False, True
        return self

    # -- use ---------------------------------------------------------------------------
    @property
    def num_instances(self) -> int:
        """Number of instances in the group."""
        return len(self._actors) or (self.config.num_instances if self._started and self.config else 0)

    def dataset(
        self,
        max_items: Optional[int] = None,
        item_transform: Optional[Callable[[dict], Any]] = None,
        timeout: float = 60.0,
        max_batches_in_flight: Optional[int] = None,
        record_to: Optional[str] = None,
        **options: Any,
    ):
        """A torch ``IterableDataset`` over the items of this group; starts the group if needed.

        Args:
            max_items: Items in total (whatever the number of DataLoader workers); None:
                until every instance finishes.
            item_transform: Applied to every item dict before it is yielded.
            timeout: Seconds without any item before `StreamTimeout` is raised.
            max_batches_in_flight: Batches each instance may render ahead of the consumer;
                None: ``StreamConfig.max_batches_in_flight``.
            record_to: A directory to record every item to (`blendtorch_ray.recording`).
            **options: Further `RemoteIterableDataset` arguments (``btids``,
                ``reconnect_timeout``, ``shared_memory_ring``, ``cross_node``).

        Returns:
            A `RemoteIterableDataset`; iterate it directly or through `make_loader`.

        Raises:
            ValueError: An argument is out of range (checked before anything starts).
        """
        from blendtorch_ray import validation
        from blendtorch_ray.dataset import RemoteIterableDataset

        # Checked here, before Ray or Blender start, so that a bad argument fails at once.
        validation.stream_options(
            "BlenderLauncher.dataset",
            max_items=max_items,
            timeout=timeout,
            max_batches_in_flight=4 if max_batches_in_flight is None else max_batches_in_flight,
            reconnect_timeout=options.get("reconnect_timeout", 120.0),
        )
        if self.config is not None:
            from blendtorch_ray.resume import group_identity

            options.setdefault("shared_memory_ring", self.config.stream.shared_memory_ring)
            options.setdefault("cross_node", self.config.stream.cross_node)
            options.setdefault("identity", group_identity(self.config))

        if not self._started:
            self.start()
        inflight = max_batches_in_flight or (self.config.stream.max_batches_in_flight if self.config else 4)
        return RemoteIterableDataset(
            early=self._early if self._early is not None and not self._early.up.done() else None,
            group=self.name,
            namespace=self.namespace,
            num_instances=self.num_instances,
            max_items=max_items,
            item_transform=item_transform,
            timeout=timeout,
            max_batches_in_flight=inflight,
            record_to=record_to,
            **options,
        )

    def ray_dataset(self, num_items: int, **options: Any):
        """A bounded ``ray.data.Dataset`` of ``num_items`` items from this group.

        Lazy, like every Ray Data dataset: each pass renders fresh items. Starts the group
        if needed.

        Args:
            num_items: Rows of the dataset.
            **options: ``btids`` (read only these instances), ``ray_remote_args`` (for the
                read tasks) and the `blendtorch_ray.ray_data.ReadOptions` fields
                (``block_size``, ``columns``, ``objects``, ``timeout``, ...).

        Returns:
            A ``ray.data.Dataset`` (see `blendtorch_ray.ray_data` for how items become columns).

        Raises:
            ValueError: ``num_items`` or an option is invalid (checked before anything starts).
        """
        from blendtorch_ray import validation
        from blendtorch_ray.ray_data import ReadOptions, read_group

        # Checked here, before Ray or Blender start, so that a bad argument fails at once.
        validation.positive_int(
            "num_items", num_items, owner="BlenderLauncher.ray_dataset", example=1000,
            hint="a Ray Dataset is bounded; for an endless stream use BlenderLauncher.dataset()",
        )
        read_options = {k: v for k, v in options.items() if k not in ("btids", "ray_remote_args")}
        if read_options.get("columns") is not None:
            read_options["columns"] = tuple(read_options["columns"])
        ReadOptions(**read_options)
        if not self._started:
            self.start()
        if self.config is not None:
            options.setdefault("max_batches_in_flight", self.config.stream.max_batches_in_flight)
        self._wait_up()
        return read_group(self.name, self.namespace, self.num_instances, num_items, **options)

    def channel(self) -> "GroupChannel":
        """A duplex channel to this group's instances (messages, replies, generations).

        The Blender script receives with ``blender_worker.duplex.DuplexChannel``. Starts the
        group if needed.

        Returns:
            A `blendtorch_ray.duplex.GroupChannel`.
        """
        from blendtorch_ray.duplex import GroupChannel

        if not self._started:
            self.start()
        return GroupChannel(self.actors)

    def health(self) -> list[InstanceHealth]:
        """Per-instance health (fps, restarts, queue depth, last error, ...).

        Returns:
            One `InstanceHealth` per instance, in ``btid`` order.
        """
        return ray.get([a.health.remote() for a in self.actors])

    def pids(self) -> list[int]:
        """Pids of the current Blender processes (for fault tests and monitoring).

        Returns:
            One pid per instance, in ``btid`` order.
        """
        return ray.get([a.pid.remote() for a in self.actors])

    # -- notebooks ----------------------------------------------------------------------
    def show(self, n: int = 16, key: str = "image", columns: int = 8, timeout: float = 60.0, **options: Any):
        """Read ``n`` fresh items from the group and return their contact sheet.

        Starts the group if needed. In a notebook, the returned image is displayed inline
        when it is the last value of a cell.

        Args:
            n: Items to read (from a new `dataset`, so they do not come from another reader).
            key: The item key that holds the image.
            columns: Images per row.
            timeout: Seconds without any item before `StreamTimeout` is raised.
            **options: Further `blendtorch_ray.preview.show` arguments (``thumb_width``).

        Returns:
            A ``PIL.Image.Image`` (see `blendtorch_ray.preview.show`).

        Example:
            In a notebook cell::

                bl = BlenderLauncher(script=CUBE, num_instances=2).start()
                bl.show(8, columns=4)
        """
        from blendtorch_ray.preview import show

        return show(self.dataset(max_items=n, timeout=timeout), key=key, columns=columns, max_items=n, **options)

    def _health_for_display(self) -> tuple[Optional[list[InstanceHealth]], str]:
        """Health for ``repr``: (rows, "") or (None, why not), never raising or hanging long."""
        if self._early is not None and not self._early.up.done():
            return None, "starting: Ray is coming up"
        return health_for_display(self._actors, self._started)

    def _summary(self) -> str:
        state = "started" if self._started else "not started"
        owner = "" if self._owner else ", attached"
        count = self.num_instances or (self.config.num_instances if self.config else 0)
        return f"BlenderLauncher(name={self.name!r}, instances={count}, {state}{owner})"

    def __repr__(self) -> str:
        from blendtorch_ray.health import health_table

        rows, why = self._health_for_display()
        return self._summary() + "\n" + (health_table(rows) if rows is not None else f"  ({why})")

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the group's name and a health table, one row per instance."""
        from blendtorch_ray.health import health_html

        rows, why = self._health_for_display()
        return health_html(self._summary(), rows, why)
