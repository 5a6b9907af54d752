"""The wire protocol between Blender and the driver, in one place.

Both sides import this module: ``blender_worker`` (inside Blender) and ``blendtorch_ray`` (the
driver and its actors); Blender never imports the driver. It holds:

* the launch flags (``--btid``, ``--btseed``, ...): ``LaunchArgs.to_argv()`` builds them on the
  driver side, ``parse_launch_args()`` reads them in Blender; ``EnvArgs`` likewise for envs;
* message kinds: the ``kind`` field of every message header (framing: ``blender_worker.codec``,
  sockets: ``blender_worker.sockets``);
* env commands: the ``cmd`` of every request on the env channel;
* reserved item keys: the fields ``DataPublisher.publish`` adds to every item, and the
  reserved keys of duplex payloads.

Blender passes everything after ``--`` on its command line to the script untouched; the
driver puts the launch flags there, followed by the user's per-instance arguments.
``parse_launch_args`` splits the two. Imports only the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

# -- message kinds (the ``kind`` of a header) ------------------------------------------------
KIND_ITEM = "item"
"""An item published by ``DataPublisher.publish`` (Blender -> actor)."""
KIND_READY = "ready"
"""The publisher's readiness handshake, ``{"btid", "seed", "epoch"}`` (Blender -> actor)."""
KIND_END = "end"
"""The publisher's end marker, ``{"count", "epoch"}``: everything of this epoch was sent."""
KIND_CONTROL = "control"
"""A duplex message from the trainer (actor -> Blender)."""
KIND_REPLY = "reply"
"""A duplex reply from Blender (Blender -> actor)."""
KIND_ENV = "env"
"""Every request and reply on the env channel (one request, one reply, over `blender_worker.pipe`)."""
KIND_INFO = "info"
"""Where Blender renders, sent whenever it changes, ``{"device": DeviceChoice.to_dict(),
"warnings": [new warnings]}`` (Blender -> actor; see ``blender_worker.devices``)."""
KIND_PAUSED = "paused"
"""``{"seq"}``: the last message a prestarted Blender sends to the driver that read it before its
actor existed; it sends nothing more until the actor has bound (see ``LaunchArgs.handover_path``)."""


class EnvCommand:
    """The ``cmd`` of a request on the env channel; replies are dicts (``{"error": text}`` on
    failure)."""

    HELLO = "hello"
    """Readiness handshake; answered with the env's spaces and metadata."""
    RESET = "reset"
    """``{"cmd", "seed", "options"}`` -> ``(obs, info)``."""
    STEP = "step"
    """``{"cmd", "action"}`` -> ``(obs, reward, terminated, truncated, info)``."""
    RENDER = "render"
    """-> an (H, W, 3) uint8 frame."""
    CLOSE = "close"
    """End the env's loop; Blender exits."""
    VECTOR_RESET = "vreset"
    """Vector env (``blender_worker.vector_env``): ``{"cmd", "seed", "options"}`` -> ``(obs, info)``,
    ``obs`` one array with the sub-envs along axis 0."""
    VECTOR_STEP = "vstep"
    """Vector env: ``{"cmd", "actions"}`` (one array, sub-envs along axis 0) -> ``(obs, rewards,
    terminations, truncations, info)``, each one array of ``num_envs`` rows (gymnasium's
    next-step autoreset: a sub-env that ended is reset by the next step, which ignores its action)."""


# -- reserved item keys ----------------------------------------------------------------------
RESERVED_ITEM_KEYS = ("btid", "seq", "seed", "epoch", "generation")
"""Keys ``DataPublisher.publish`` sets on every item: instance id, per-instance sequence
number, the instance's seed and restart epoch, and the duplex generation. User items must
not use them."""


def check_item_keys(keys: Iterable[str]) -> None:
    """Raise ``ValueError`` if a user item uses a reserved key.

    Args:
        keys: The keys of the item about to be published.

    Raises:
        ValueError: A key is one of ``RESERVED_ITEM_KEYS``; the message names it.
    """
    clash = [k for k in keys if k in RESERVED_ITEM_KEYS]
    if clash:
        raise ValueError(
            f"publish(): item key(s) {clash} are reserved (blendtorch-ray sets "
            f"{', '.join(RESERVED_ITEM_KEYS)} on every item); rename them, e.g. {clash[0]}_"
        )


def item_seed(seed: int, seq: int) -> int:
    """The seed of item ``seq`` of a stream whose seed is ``seed``: a pure function, the one
    definition of per-item seeds (``DataPublisher.item_seed`` / ``rng()`` use it in Blender;
    ``blendtorch_ray.resume`` documents how it makes items reproducible).

    Args:
        seed: The stream seed (``LaunchArgs.seed``, the ``seed`` of every item).
        seq: The item's sequence number (its ``seq``).

    Returns:
        The first 63 bits of ``blake2b(f"{seed}:{seq}")``: the same on every machine,
        Python and numpy version.
    """
    digest = hashlib.blake2b(f"{int(seed)}:{int(seq)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# -- duplex payload keys --------------------------------------------------------------------
MSG_ID = "btmsgid"
"""Reserved duplex payload key carrying the message id."""
GENERATION = "btgeneration"
"""Reserved duplex payload key carrying the generation number."""
REPLY_TO = "btreplyto"
"""Reserved duplex payload key carrying the id of the answered message (None: unsolicited)."""
RESERVED_PAYLOAD_KEYS = (MSG_ID, GENERATION, REPLY_TO)
"""Keys a duplex message or reply must not use."""


# -- launch flags ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchArgs:
    """What one Blender instance knows about itself (the launch flags on its command line)."""

    btid: int
    """Instance id, unique within a launch (0..N-1). Flag ``--btid``."""
    seed: int
    """Stream seed of this instance (base seed + btid; kept across restarts unless
    ``SupervisionConfig.reseed_on_restart``). Item ``seq`` uses ``item_seed(seed, seq)``. ``--btseed``."""
    epoch: int = 0
    """Restart epoch: 0 on first start, +1 each time the supervisor restarts this instance."""
    start_seq: int = 0
    """``seq`` of the first item this process publishes (a restarted or resumed instance goes
    on with its sequence). Flag ``--btseq``."""
    data_address: Optional[str] = None
    """ZeroMQ address of the actor's PULL socket that ``DataPublisher`` connects to."""
    control_address: Optional[str] = None
    """Address of the duplex control socket (ZeroMQ), or of the env channel's message pipe
    (``blender_worker.pipe``: the same ``ipc://`` / ``tcp://`` notation), if any."""
    parent_pid: int = 0
    """Pid of the supervising process; Blender exits when it goes away (0: no watchdog)."""
    ack_path: Optional[str] = None
    """The supervisor creates ``{ack_path}.{epoch}`` once it has read this epoch's end marker."""
    codec: str = "pickle"
    """Message codec for published items (see ``blender_worker.codec``)."""
    slots: Optional[tuple[str, int, int]] = None
    """Shared-memory slot file for large items: ``(path, slots, slot_bytes)`` (see ``blender_worker.slots``)."""
    encode: dict = field(default_factory=dict)
    """Item key -> codec spec that ``DataPublisher`` compresses (see ``blender_worker.compress``).
    Flag ``--btencode image=jpeg:90,depth=zstd``."""
    handover_path: Optional[str] = None
    """A prestarted Blender's hand-over flag file (``blendtorch_ray.early_read``): while it exists,
    ``DataPublisher`` sends ``KIND_PAUSED`` once and waits until it is removed. Flag ``--bthandover``."""
    remainder: list[str] = field(default_factory=list)
    """Instance arguments for the user's script (everything the launcher did not consume)."""

    def to_argv(self) -> list[str]:
        """The launch flags, as ``parse_launch_args`` reads them back (``remainder`` not included).

        Returns:
            The list of command-line arguments, e.g. ``["--btid", "0", "--btseed", "7", ...]``.
        """
        argv = ["--btid", str(self.btid), "--btseed", str(self.seed), "--btepoch", str(self.epoch)]
        if self.start_seq:
            argv += ["--btseq", str(self.start_seq)]
        if self.data_address:
            argv += ["--btdata", self.data_address]
        if self.control_address:
            argv += ["--btcontrol", self.control_address]
        if self.parent_pid:
            argv += ["--btparent", str(self.parent_pid)]
        if self.codec != "pickle":
            argv += ["--btcodec", self.codec]
        if self.ack_path:
            argv += ["--btack", self.ack_path]
        if self.slots:
            argv += ["--btslots", ",".join(str(x) for x in self.slots)]
        if self.encode:
            argv += ["--btencode", ",".join(f"{k}={v}" for k, v in self.encode.items())]
        if self.handover_path:
            argv += ["--bthandover", self.handover_path]
        return argv


PARENT_FLAG = "--btparent"
"""The flag ``blender_worker.bootstrap`` reads before the script runs (to arm the lifeline)."""


def _script_argv(argv: Optional[Sequence[str]]) -> list[str]:
    """Arguments meant for the script: after ``--`` in sys.argv, or ``argv`` as given."""
    if argv is None:
        return sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    argv = list(argv)
    return argv[argv.index("--") + 1 :] if "--" in argv else argv


def _parse_slots(value: Optional[str]) -> Optional[tuple[str, int, int]]:
    if not value:
        return None
    path, slots, slot_bytes = value.rsplit(",", 2)
    return path, int(slots), int(slot_bytes)


def _parse_encode(value: Optional[str]) -> dict:
    """``"image=jpeg:90,depth=zstd"`` -> ``{"image": "jpeg:90", "depth": "zstd"}``."""
    if not value:
        return {}
    pairs = [part.partition("=") for part in value.split(",")]
    bad = [k for k, sep, v in pairs if not sep or not k or not v]
    if bad:
        raise ValueError(f"--btencode {value!r}: every part must be KEY=CODEC")
    return {k: v for k, _, v in pairs}


def parse_launch_args(argv: Optional[Sequence[str]] = None) -> tuple[LaunchArgs, list[str]]:
    """Parse the launch flags from ``sys.argv`` (or ``argv``) after ``--``.

    Also arms the parent watchdog, so that this Blender never outlives its supervisor.

    Args:
        argv: The arguments to parse; None: ``sys.argv``.

    Returns:
        ``(launch_args, remainder)``: what this instance knows about itself, and the user's
        instance arguments, ready for the script's own ``argparse``.

    Example::

        launch, args = bw.parse_launch_args()
        rng = np.random.default_rng(launch.seed)
    """
    parser = argparse.ArgumentParser(prog="blender_worker", add_help=False)
    parser.add_argument("-btid", "--btid", type=int, required=True)
    parser.add_argument("-btseed", "--btseed", type=int, required=True)
    parser.add_argument("-btepoch", "--btepoch", type=int, default=0)
    parser.add_argument("-btseq", "--btseq", type=int, default=0)
    parser.add_argument("-btdata", "--btdata", default=None)
    parser.add_argument("-btcontrol", "--btcontrol", default=None)
    parser.add_argument("-btparent", PARENT_FLAG, type=int, default=0)
    parser.add_argument("-btcodec", "--btcodec", default="pickle")
    parser.add_argument("-btack", "--btack", default=None)
    parser.add_argument("-btslots", "--btslots", default=None, help="PATH,SLOTS,SLOT_BYTES")
    parser.add_argument("-btencode", "--btencode", default=None, help="KEY=CODEC,...")
    parser.add_argument("-bthandover", "--bthandover", default=None)
    args, remainder = parser.parse_known_args(_script_argv(argv))
    launch = LaunchArgs(
        btid=args.btid,
        seed=args.btseed,
        epoch=args.btepoch,
        start_seq=args.btseq,
        data_address=args.btdata,
        control_address=args.btcontrol,
        parent_pid=args.btparent,
        codec=args.btcodec,
        ack_path=args.btack,
        slots=_parse_slots(args.btslots),
        encode=_parse_encode(args.btencode),
        handover_path=args.bthandover,
        remainder=list(remainder),
    )
    if launch.parent_pid:
        from blender_worker.lifeline import exit_gracefully_on_sigterm, watch_parent

        watch_parent(launch.parent_pid)
        exit_gracefully_on_sigterm()
    return launch, list(remainder)


@dataclass(frozen=True)
class EnvArgs:
    """Env options the driver passes on Blender's command line (after the launch flags)."""

    real_time: bool = False
    """Free-running simulation instead of one frame per step (``--btrealtime``)."""
    real_time_fps: Optional[float] = None
    """Frames per second in real-time mode (``--btfps``); None = the scene's frame rate."""
    num_envs: Optional[int] = None
    """Sub-envs of a vector env in this one Blender (``--btnumenvs``); None: a single env."""

    def to_argv(self) -> list[str]:
        """The env flags, as ``parse_env_args`` reads them back.

        Returns:
            The list of command-line arguments (empty in stepped mode).
        """
        argv = ["--btrealtime"] if self.real_time else []
        if self.real_time and self.real_time_fps:
            argv += ["--btfps", str(self.real_time_fps)]
        if self.num_envs is not None:
            argv += ["--btnumenvs", str(self.num_envs)]
        return argv


def parse_env_args(argv: Optional[Sequence[str]] = None) -> tuple[LaunchArgs, EnvArgs, list[str]]:
    """``parse_launch_args`` plus the env flags.

    Args:
        argv: The arguments to parse; None: ``sys.argv``.

    Returns:
        ``(launch, env_args, remainder)``; ``remainder`` holds what is left for the script's
        own ``argparse``.
    """
    launch, remainder = parse_launch_args(argv)
    parser = argparse.ArgumentParser(prog="blender_worker.env", add_help=False)
    parser.add_argument("--btrealtime", action="store_true")
    parser.add_argument("--btfps", type=float, default=None)
    parser.add_argument("--btnumenvs", type=int, default=None)
    args, rest = parser.parse_known_args(remainder)
    return launch, EnvArgs(real_time=args.btrealtime, real_time_fps=args.btfps, num_envs=args.btnumenvs), list(rest)
