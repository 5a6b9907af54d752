"""Configuration of a group of Blender instances, grouped by concern (as Ray Train groups
``ScalingConfig`` / ``FailureConfig`` / ``RunConfig``):

- `BlenderSpec`: what to run (script, scene, which Blender, its environment, its log);
  shared with `blendtorch_ray.env.EnvConfig`;
- `PlacementConfig`: where instances run (CPUs, GPUs, custom resources);
- `SupervisionConfig`: how they are started and kept alive (readiness, restarts, recycling);
- `StreamConfig`: how items travel (batching, backpressure, shared memory, codec);
- `LaunchConfig`: a group of instances: a `BlenderSpec` plus count, seeds, name and the three
  groups above.

The common case stays one line, with any option by its own name::

    BlenderLauncher(script="scene.py", num_instances=4, batch_size=16, max_restarts=0)
    LaunchConfig.of(script="scene.py", num_instances=4, batch_size=16)   # the same config

Every value is checked when its group is built, so a bad option fails before Ray or Blender
start, with a message naming the option, the value and a fix.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from blendtorch_ray import validation as v
from blendtorch_ray.blender import check_ui

SEED_EPOCH_STRIDE = 100_003
"""Seed distance between restart epochs of one instance (a prime larger than any group, so
that the seeds of different instances and epochs never collide)."""


@dataclass
class BlenderSpec:
    """What to run: a Blender-side script, optionally a scene, in which Blender.

    Raises:
        FileNotFoundError: ``script`` or ``scene`` does not exist.
    """

    script: str
    """Path of the Blender-side Python script (it uses ``blender_worker``)."""
    scene: Optional[str] = None
    """Optional .blend file opened before the script runs."""
    blender: Optional[str] = None
    """Which Blender: None (``$BLENDTORCH_BLENDER`` or the bpy wheel), "bpy", "blender", or a path."""
    env: dict = field(default_factory=dict)
    """Extra environment variables for Blender."""
    log_dir: Optional[str] = None
    """Where Blender logs go (default: a private temp dir of the supervising process)."""
    ui: bool = False
    """Interactive mode: start Blender with its window (not ``--background``); the script's
    animation runs from Blender's event loop so that the user can watch and edit the scene
    (see blender_worker/interactive.py). Needs a Blender binary (``blender=``; the bpy wheel
    has no UI) and an X display (``$DISPLAY``, or ``env={"DISPLAY": ...}``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.ui, bool):
            raise TypeError(f"ui={self.ui!r}: must be True or False")
        if self.ui:
            check_ui(self.blender, self.env)
            # The driver's display travels with the config: Ray's workers (and so Blender) may
            # have been started before $DISPLAY was set, or on another node.
            self.env = {**{k: os.environ[k] for k in _DISPLAY_VARS if os.environ.get(k)}, **self.env}
        self.script = os.path.abspath(self.script)
        if not os.path.isfile(self.script):
            raise FileNotFoundError(f"Blender script not found: {self.script}; pass the path of a .py file")
        if self.scene is not None:
            self.scene = os.path.abspath(self.scene)
            if not os.path.isfile(self.scene):
                raise FileNotFoundError(f"scene file not found: {self.scene}; pass the path of a .blend file")


_DISPLAY_VARS = ("DISPLAY", "XAUTHORITY", "WAYLAND_DISPLAY")
"""Variables a UI instance needs to open its window, copied from the driver into ``env``."""


@dataclass
class PlacementConfig:
    """Where instances run: the Ray resources each instance's actor asks for.

    Raises:
        ValueError, TypeError: A value is out of range or of the wrong type.
    """

    num_cpus: Optional[float] = None
    """CPUs reserved per instance's actor. None (the default): 1 on a multi-node cluster; on
    a single node (local mode), ``min(1, CPUs / num_instances)`` but at least 0.25, so that a
    group fits a workstation (4 instances on a 2-core machine get 0.5 each)."""
    num_gpus: float = 0.0
    """GPUs per instance; the assigned GPU is handed to Blender via CUDA_VISIBLE_DEVICES."""
    resources: dict = field(default_factory=dict)
    """Custom Ray resources per instance, e.g. ``{"blender": 1}``."""
    wait_for_resources: bool = False
    """If the cluster cannot hold all instances now: False raises at once, True waits
    (for an autoscaling cluster to add nodes)."""
    nodes: Optional[tuple] = None
    """Ray node ids to place the instances on, round-robin (instance ``btid`` on
    ``nodes[btid % len(nodes)]``), e.g. the nodes of the trainer workers that read them
    (`blendtorch_ray.locality`); ``"local"`` in the list stands for the node the launcher runs
    on. None (default): wherever Ray finds room. The affinity is soft: an instance whose node is
    lost is recreated elsewhere."""

    def __post_init__(self) -> None:
        own = "PlacementConfig"
        if self.nodes is not None:
            if isinstance(self.nodes, str) or not all(isinstance(n, str) and n for n in self.nodes) or not self.nodes:
                raise TypeError(f"{own}.nodes={self.nodes!r}: must be a non-empty list of Ray node ids (hex strings, "
                                "e.g. ray.get_runtime_context().get_node_id()) or \"local\"; None places anywhere")
            self.nodes = tuple(self.nodes)
        if self.num_cpus is not None:
            v.non_negative("num_cpus", self.num_cpus, owner=own, example=1)
        v.non_negative("num_gpus", self.num_gpus, owner=own, example=1)
        v.resource_amounts("resources", self.resources, owner=own, example={"blender": 1})


@dataclass
class SupervisionConfig:
    """How instances are started and kept alive.

    Raises:
        ValueError, TypeError: A value is out of range or of the wrong type.
    """

    ready_timeout: float = 120.0
    """Seconds to wait for an instance's readiness handshake (first DataPublisher)."""
    max_restarts: int = 3
    """Restarts allowed per instance after a crash before the stream fails."""
    max_actor_restarts: int = 3
    """Times Ray may recreate an instance's actor (e.g. on another node after a node loss);
    -1: without limit."""
    restart_backoff: float = 0.5
    """Seconds before the first restart; doubles on each further restart."""
    recycle_after_items: Optional[int] = None
    """Restart Blender (transparently, between items) after this many items per process."""
    recycle_rss_mb: Optional[float] = None
    """Restart Blender (transparently) when its resident memory passes this many MiB."""
    reseed_on_restart: bool = False
    """False (default): a restarted or recycled Blender goes on with its sequence (the next
    ``seq``, the same stream seed), so every item stays reproducible from ``(seed, btid,
    seq)`` and items lost in the crash are rendered again. True: it starts a fresh seed
    epoch instead (stream seed ``LaunchConfig.seed_for(btid, epoch)``, ``seq`` from 0), e.g.
    for a scene that crashes on some seeds. See blendtorch_ray/resume.py."""
    prestart: bool = True
    """Local mode: when the launcher starts Ray itself, start Blender at the same time and let
    the actors adopt those processes (see blendtorch_ray/prestart.py). Ignored on clusters,
    for tcp, GPUs and custom resources."""
    read_before_ray: bool = True
    """With ``prestart``: ``start()`` returns once Blender said hello, Ray comes up in the
    background, and a dataset iterated in the launching process reads the prestarted
    Blenders directly until their actors adopt them, without a gap or a repeat; the first
    batch then arrives before Ray is up (see blendtorch_ray/early_read.py). False: ``start()``
    returns once Ray is up and every actor is ready."""

    def __post_init__(self) -> None:
        own = "SupervisionConfig"
        v.positive("ready_timeout", self.ready_timeout, owner=own, unit="seconds", example=120)
        v.non_negative_int("max_restarts", self.max_restarts, owner=own, example=3)
        v.integer("max_actor_restarts", self.max_actor_restarts, minimum=-1, owner=own, example=3,
                  hint="-1: Ray recreates the actor without limit")
        v.non_negative("restart_backoff", self.restart_backoff, owner=own, unit="seconds", example=0.5)
        v.optional_positive_int("recycle_after_items", self.recycle_after_items, owner=own, example=10_000)
        v.optional_positive("recycle_rss_mb", self.recycle_rss_mb, owner=own, unit="MiB", example=4096)
        if not isinstance(self.reseed_on_restart, bool):
            raise TypeError(f"{own}(reseed_on_restart={self.reseed_on_restart!r}): must be True or False")


@dataclass
class StreamConfig:
    """How items travel from Blender to the consumer.

    Raises:
        ValueError, TypeError: A value is out of range or of the wrong type.
    """

    batch_size: int = 8
    """Items per object-store put (one ``ray.put`` costs ~1 ms whatever the size)."""
    max_batch_delay: float = 0.5
    """Seconds after which a partial batch is sent anyway (for slow renderers)."""
    max_batches_in_flight: int = 4
    """Batches an instance may have produced but the consumer not yet taken (backpressure)."""
    transport: str = "ipc"
    """Local hop: "ipc" (unix socket in a private 0700 dir) or "tcp" (127.0.0.1, random port)."""
    codec: str = "pickle"
    """Item codec: "pickle" (any object) or "json" (arrays + JSON-able values, no pickle)."""
    shared_memory_hop: bool = True
    """Blender -> actor: the arrays of items of 64 KiB and more go through shared-memory slots
    (one copy in Blender) and only a small message through ZeroMQ (see
    blender_worker/slots.py). False: everything through the ZeroMQ socket."""
    item_slot_mb: float = 16.0
    """Largest item (its arrays' bytes) that goes through a shared-memory slot; larger ones go
    through the socket. Slots take memory only as far as they are written to."""
    shared_memory_ring: bool = True
    """Same-node fast path: consumers on the actor's node get arrays through a ring of
    /dev/shm slots instead of the object store (see blendtorch_ray/shm_ring.py); consumers
    on other nodes always use the object store. False: object store for everyone."""
    ring_slot_mb: float = 32.0
    """Size of one ring slot; a batch whose arrays do not fit goes through the object store."""
    cross_node: str = "tcp"
    """How batches reach a consumer on another node than the instance's actor: "tcp" (a direct
    ZeroMQ connection from the actor to the consumer, which binds a random port on its node's
    IP; the Ray generator still carries order, backpressure and failures; see
    blendtorch_ray/tcp_link.py) or "object_store" (Ray's object stores and raylets: several
    times the CPU per byte, but only Ray's own ports). "tcp" falls back to the object store,
    with a warning, when the actor cannot reach the consumer's port."""
    max_message_mb: float = 1024.0
    """Messages larger than this (the bytes that cross the socket; arrays in shared-memory
    slots do not count) are dropped by the actor, counted in ``health().dropped_messages``
    and warned about; the stream goes on with the next item."""
    encode: dict = field(default_factory=dict)
    """Compress arrays in Blender before they leave it, per item key: ``{key: codec}``, e.g.
    ``{"image": "jpeg:90", "depth": "zstd"}``. Codecs: lossless ``"lz4"``, ``"zstd[:level]"``,
    ``"png[:level]"``; lossy ``"jpeg[:quality]"`` (uint8 images only; an RGBA image must have
    alpha 255 everywhere). Decoded per item in the consumer (the DataLoader workers when
    ``num_workers > 0``; ``dataset(decode=False)`` keeps them encoded). Empty (default): no
    compression, which is fastest on one node. Needs ``pip install 'blendtorch-ray[compress]'``;
    see blender_worker/compress.py."""

    def __post_init__(self) -> None:
        own = "StreamConfig"
        v.positive_int("batch_size", self.batch_size, owner=own, example=8)
        v.non_negative("max_batch_delay", self.max_batch_delay, owner=own, unit="seconds", example=0.5)
        v.positive_int("max_batches_in_flight", self.max_batches_in_flight, owner=own, example=4)
        v.one_of("transport", self.transport, ("ipc", "tcp"), owner=own)
        v.one_of("codec", self.codec, ("pickle", "json"), owner=own)
        v.positive("item_slot_mb", self.item_slot_mb, owner=own, unit="MiB", example=16)
        v.positive("ring_slot_mb", self.ring_slot_mb, owner=own, unit="MiB", example=32)
        v.one_of("cross_node", self.cross_node, CROSS_NODE, owner=own)
        v.positive("max_message_mb", self.max_message_mb, owner=own, unit="MiB", example=1024)
        from blender_worker.compress import check_encode

        self.encode = check_encode(self.encode, owner=f"{own}.encode")

    @property
    def slots_per_instance(self) -> int:
        """Shared-memory item slots one Blender process gets: every item that can be in a
        batch in flight (``max_batches_in_flight``), in the batch being filled and in the
        one being handed over, plus one being written and one being read."""
        return self.batch_size * (self.max_batches_in_flight + 2) + 2


CROSS_NODE = ("tcp", "object_store")
"""Values of ``StreamConfig.cross_node``."""

_GROUPS = {"placement": PlacementConfig, "supervision": SupervisionConfig, "stream": StreamConfig}


@dataclass
class LaunchConfig(BlenderSpec):
    """Everything needed to start and supervise N Blender instances.

    Only ``script`` is required; the defaults suit a workstation. The options of the three
    groups can also be given by their own names through `LaunchConfig.of` and
    `blendtorch_ray.launcher.BlenderLauncher` (``batch_size=16`` for
    ``stream=StreamConfig(batch_size=16)``).

    Raises:
        FileNotFoundError: ``script`` or ``scene`` does not exist.
        ValueError: A count, time or size is out of range, or ``instance_args`` does not
            have one entry per instance; the message names the field, the value and a fix.

    Example:
        Four instances of a scene, each with its own arguments::

            cfg = LaunchConfig(script="scene.py", scene="room.blend", num_instances=4,
                               instance_args=[["--shape", s] for s in "abcd"],
                               supervision=SupervisionConfig(max_restarts=0))
            with BlenderLauncher(cfg) as bl:
                ...
    """

    num_instances: int = 1
    """Number of Blender instances (``btid`` 0..N-1)."""
    instance_args: Optional[Sequence[Sequence[str]]] = None
    """Per-instance extra command line arguments for the script (one list per instance)."""
    seed: int = 0
    """Base seed; instance ``btid`` streams with seed ``seed + btid`` (``seed_for``), its item
    ``seq`` draws from ``item_seed(seed + btid, seq)`` (see blendtorch_ray/resume.py)."""
    name: Optional[str] = None
    """Group name; actors are named ``{name}/{btid}`` in ``namespace`` so others can attach."""
    namespace: str = "blendtorch"
    """Ray namespace of the named actors."""
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    """Where instances run (CPUs, GPUs, custom resources)."""
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    """How instances are started and kept alive."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    """How items travel (batching, backpressure, shared memory, codec)."""
    resume_from: Optional[dict] = None
    """A ``RemoteIterableDataset.state_dict()``: each instance starts at the next item of that
    state (its stream seed and ``seq``) instead of ``seq`` 0; the group takes the state's
    name unless ``name`` is given. Checked against this config (blendtorch_ray/resume.py)."""

    def __post_init__(self) -> None:
        own = "LaunchConfig"
        v.positive_int("num_instances", self.num_instances, owner=own, example=1)
        super().__post_init__()
        if self.instance_args is not None and len(self.instance_args) != self.num_instances:
            raise ValueError(
                f"instance_args has {len(self.instance_args)} entries for {self.num_instances} "
                "instances; give one list of arguments per instance"
            )
        v.non_negative_int("seed", self.seed, owner=own, example=0, hint="numpy's default_rng takes seeds >= 0")
        for name, cls in _GROUPS.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"LaunchConfig({name}={getattr(self, name)!r}): must be a {cls.__name__}")
        if self.resume_from is not None:
            from blendtorch_ray.resume import check_launch_state

            self.name = check_launch_state(self.resume_from, self)

    @classmethod
    def of(cls, **options: Any) -> "LaunchConfig":
        """A config from options given by their own names, whatever group they belong to.

        Args:
            **options: Fields of `LaunchConfig` and of its groups, e.g.
                ``script="scene.py", num_instances=4, batch_size=16, max_restarts=0``.

        Returns:
            The `LaunchConfig`.

        Raises:
            TypeError: An option is not a field of the config or of any group.
        """
        own, grouped = _split_options(options)
        for name, values in grouped.items():
            own[name] = dataclasses.replace(own[name], **values) if name in own else _GROUPS[name](**values)
        return cls(**own)

    def with_options(self, **options: Any) -> "LaunchConfig":
        """A copy with some options changed, given by their own names (see `of`).

        Args:
            **options: Fields of `LaunchConfig` and of its groups.

        Returns:
            The new `LaunchConfig` (validated again).

        Raises:
            TypeError: An option is not a field of the config or of any group.
        """
        own, grouped = _split_options(options)
        for name, values in grouped.items():
            own[name] = dataclasses.replace(own.get(name, getattr(self, name)), **values)
        return dataclasses.replace(self, **own)

    def seed_for(self, btid: int, epoch: int) -> int:
        """The launch seed of an instance in a restart epoch (see ``seed``).

        Args:
            btid: Instance id.
            epoch: Restart epoch (0 on first start).

        Returns:
            ``seed + btid + SEED_EPOCH_STRIDE * epoch``.
        """
        return self.seed + btid + SEED_EPOCH_STRIDE * epoch

    def args_for(self, btid: int) -> list[str]:
        """The script arguments of instance ``btid`` (see ``instance_args``).

        Args:
            btid: Instance id.

        Returns:
            A copy of ``instance_args[btid]``; empty without ``instance_args``.
        """
        return list(self.instance_args[btid]) if self.instance_args else []


def _split_options(options: dict) -> tuple[dict, dict]:
    """Options of `LaunchConfig` itself, and those of each group keyed by the group's field."""
    own_fields = {f.name for f in dataclasses.fields(LaunchConfig)}
    owner = {f.name: group for group, cls in _GROUPS.items() for f in dataclasses.fields(cls)}
    own: dict = {}
    grouped: dict = {}
    for key, value in options.items():
        if key in own_fields:
            own[key] = value
        elif key in owner:
            grouped.setdefault(owner[key], {})[key] = value
        else:
            known = sorted(own_fields | set(owner))
            raise TypeError(f"unknown launch option {key}={value!r}; the options are: {', '.join(known)}")
    return own, grouped
