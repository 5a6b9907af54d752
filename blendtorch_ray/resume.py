"""Resumable, reproducible streams: what an item's ``(seed, btid, seq)`` means, the dataset's
state dict, and the checks a checkpoint must pass.

**Seeds and sequence numbers** (the one definition; Blender and the driver follow it):

- Instance ``btid`` of a group with base seed ``S`` streams with the *stream seed*
  ``seed = S + btid`` (``LaunchConfig.seed_for(btid, 0)``). Every item carries it as ``seed``.
- Its items are numbered ``seq = 0, 1, 2, ...``. A Blender restarted after a crash, or
  recycled (``recycle_after_items`` / ``recycle_rss_mb``), goes on with the next ``seq`` the
  actor has not received and the same stream seed: items lost in the crash are rendered
  again, none is skipped.
- Item ``seq`` draws its randomness from ``item_seed(seed, seq)``
  (`blender_worker.protocol.item_seed`, a pure function: blake2b of ``"{seed}:{seq}"``, 63
  bits). In Blender, ``DataPublisher.rng()`` is ``numpy.random.default_rng(item_seed(seed,
  pub.seq))``: a script that takes each item's randomness from it renders the same item for
  the same ``(seed, btid, seq)``, whatever happened before (restarts, resumes, other items).
- A fresh seed epoch (stream seed ``LaunchConfig.seed_for(btid, epoch)``, ``seq`` from 0)
  happens only when asked (``SupervisionConfig.reseed_on_restart=True``) or when Ray recreates
  an instance's actor (its node was lost) before any consumer told it where the stream stood.
  ``(seed, btid, seq)`` stays unique and reproducible either way.

So ``(seed, btid, seq)`` is an item's provenance: `blendtorch_ray.rerender.render_again`
renders it again from that alone (with the group's script and options).

**State dict** (`RemoteIterableDataset.state_dict`): per instance, the stream seed and the
next ``seq`` to consume, plus what the checkpoint belongs to (group, script, base seed,
number of instances) and a ``version``. Loading it (`RemoteIterableDataset.load_state_dict`)
makes every stream start at that position: items rendered ahead but not consumed when the
checkpoint was taken are rendered again, no item is consumed twice. Launching with
``LaunchConfig.resume_from=state`` starts each Blender at its position right away.

**DataLoader workers.** The state is per instance (next ``seq`` per ``btid``), and the
dataset tracks the items it yields in the process that iterates it:

- ``num_workers=0``: tracked in this process; at a batch boundary the dataset has yielded
  exactly the items of the batches the loop took, so ``ds.state_dict()`` is the checkpoint.
- torchdata's ``StatefulDataLoader`` with workers: it calls ``state_dict()`` in each worker
  (whose copy reads its own instances, `blendtorch_ray.dataset.worker_share`) with the batch
  it snapshots, and hands each worker its part back on ``load_state_dict``; keep the same
  ``num_workers`` to resume.
- a plain DataLoader with workers: the workers' copies are out of reach, and they prefetch.
  Call ``ds.mark_consumed(batch)`` for every batch the loop took (the batch needs its
  ``seed``, ``btid`` and ``seq``), then ``ds.state_dict()`` in the main process; on resume,
  ``ds.load_state_dict(state)`` before the DataLoader is made (the workers get copies).

This module imports only the standard library and the project's errors and protocol.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any, Iterable, Iterator, Optional

from blender_worker.protocol import item_seed  # noqa: F401 - the per-item seed, documented above
from blendtorch_ray.errors import BlendtorchError

STATE_VERSION = 1
"""Version of the state dict layout; a state with a higher one comes from a newer release."""
STATE_KIND = "blendtorch_ray.RemoteIterableDataset"
"""The ``kind`` of a state dict, so that another object's state is told apart."""
IDENTITY_KEYS = ("group", "script", "script_sha256", "seed", "num_instances")
"""What a checkpoint and the group that resumes it must agree on."""

log = logging.getLogger("blendtorch_ray")

REPOSITION_DRAIN_S = 10.0
"""Longest read of what a killed Blender left in the socket when an instance is repositioned."""

Position = tuple[int, int]
"""``(stream seed, next seq)`` of one instance."""


class ResumeError(BlendtorchError, ValueError):
    """A state dict cannot be loaded: not one of ours, from a newer version, or from another
    group or script (the message names what differs and the fix). Also a ``ValueError``."""


def script_digest(path: Optional[str]) -> str:
    """The sha256 of a script's bytes ("" if there is no such file).

    Args:
        path: The Blender-side script.

    Returns:
        The hex digest.
    """
    if not path or not os.path.isfile(path):
        return ""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def group_identity(config: Any) -> dict:
    """What a checkpoint of a group's stream belongs to.

    Args:
        config: The group's `blendtorch_ray.config.LaunchConfig`.

    Returns:
        ``{"group", "script", "script_sha256", "seed", "num_instances"}``.
    """
    return {"group": config.name, "script": os.path.basename(config.script),
            "script_sha256": script_digest(config.script), "seed": int(config.seed),
            "num_instances": int(config.num_instances)}


def advance(positions: dict, btid: int, seed: int, seq: int) -> None:
    """Record that item ``(seed, btid, seq)`` was consumed: the next one is ``seq + 1``.

    A new stream seed (a fresh seed epoch) replaces the old position; within one seed the
    position only moves forward.

    Args:
        positions: ``{btid: (seed, next seq)}``, updated in place.
        btid: The item's instance.
        seed: Its stream seed.
        seq: Its sequence number.
    """
    old = positions.get(btid)
    if old is None or old[0] != seed or seq + 1 > old[1]:
        positions[btid] = (int(seed), int(seq) + 1)


def provenance(batch: Any) -> Iterator[tuple[int, int, int]]:
    """The ``(seed, btid, seq)`` of every item of a batch.

    Args:
        batch: A list of item dicts, one item dict, or a collated batch (a dict whose
            ``seed``, ``btid`` and ``seq`` are tensors, arrays or lists).

    Yields:
        ``(seed, btid, seq)`` per item.

    Raises:
        ResumeError: The items have no ``seed``/``btid``/``seq`` (an ``item_transform``
            dropped them).
    """
    if isinstance(batch, Mapping):
        missing = [k for k in ("seed", "btid", "seq") if k not in batch]
        if missing:
            raise ResumeError(
                f"mark_consumed(batch): the batch has no {missing} (keys: {sorted(batch)[:8]}); keep "
                "'seed', 'btid' and 'seq' in what item_transform returns, or iterate without DataLoader workers")
        cols = [_as_list(batch[k]) for k in ("seed", "btid", "seq")]
        yield from zip(*cols)
        return
    for item in batch:
        yield from provenance(item)


def _as_list(value: Any) -> list:
    if hasattr(value, "tolist"):
        value = value.tolist()
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def make_state(identity: dict, positions: dict) -> dict:
    """A state dict (see the module docstring).

    Args:
        identity: From `group_identity`.
        positions: ``{btid: (seed, next seq)}``.

    Returns:
        ``{"kind", "version", **identity, "positions": {btid: {"seed", "seq"}}}``.
    """
    return {"kind": STATE_KIND, "version": STATE_VERSION, **{k: identity.get(k) for k in IDENTITY_KEYS},
            "positions": {int(b): {"seed": int(s), "seq": int(q)} for b, (s, q) in sorted(positions.items())}}


def check_state(state: Any, identity: Optional[dict], owner: str = "load_state_dict",
                ignore: Iterable[str] = ()) -> dict:
    """Check a state dict and return its positions.

    Args:
        state: What was saved (`make_state`'s dict).
        identity: The group that loads it (`group_identity`); None: not compared.
        owner: Who checks (named in the errors).
        ignore: Identity keys not to compare.

    Returns:
        ``{btid: (seed, next seq)}``.

    Raises:
        ResumeError: ``state`` is not a state dict of ours, has a newer ``version``, or
            belongs to another group or script (every difference is named).
    """
    if not isinstance(state, Mapping) or state.get("kind") != STATE_KIND:
        kind = state.get("kind") if isinstance(state, Mapping) else type(state).__name__
        raise ResumeError(f"{owner}(state): not a RemoteIterableDataset state dict (kind {kind!r}, expected "
                          f"{STATE_KIND!r}); pass what RemoteIterableDataset.state_dict() returned")
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ResumeError(f"{owner}(state): version={version!r} is not a state dict version; pass what "
                          "RemoteIterableDataset.state_dict() returned")
    if version > STATE_VERSION:
        raise ResumeError(f"{owner}(state): version={version} comes from a newer blendtorch-ray (this one "
                          f"reads versions up to {STATE_VERSION}); upgrade blendtorch-ray to resume from it")
    if identity is not None:
        differ = [f"{k}: checkpoint {state.get(k)!r}, here {identity.get(k)!r}"
                  for k in IDENTITY_KEYS if k not in ignore and state.get(k) != identity.get(k)]
        if differ:
            raise ResumeError(
                f"{owner}(state): the checkpoint belongs to another group or script ({'; '.join(differ)}). "
                f"Resume with the same script, seed and num_instances, and name the group "
                f"name={state.get('group')!r}; or start without the checkpoint")
    positions = state.get("positions")
    if not isinstance(positions, Mapping):
        raise ResumeError(f"{owner}(state): 'positions' is {positions!r}, expected {{btid: {{'seed', 'seq'}}}}")
    out: dict = {}
    for b, pos in positions.items():
        try:
            btid, seed, seq = int(b), int(pos["seed"]), int(pos["seq"])
        except (KeyError, TypeError, ValueError):
            raise ResumeError(f"{owner}(state): positions[{b!r}]={pos!r}, expected {{'seed': int, 'seq': int}}") from None
        if seq < 0 or btid < 0:
            raise ResumeError(f"{owner}(state): positions[{b!r}]={pos!r}: btid and seq must be >= 0")
        out[btid] = (seed, seq)
    return out


def merge_states(states: Iterable[dict]) -> dict:
    """One state dict from several of the same group (e.g. one per Ray Train rank, each
    reading its own instances).

    Args:
        states: State dicts from `RemoteIterableDataset.state_dict`.

    Returns:
        A state dict with every instance's position.

    Raises:
        ResumeError: A state is invalid, or they come from different groups.
    """
    states = list(states)
    if not states:
        raise ResumeError("merge_states(states): no state dicts given; pass at least one")
    first = states[0]
    positions: dict = {}
    for s in states:
        positions.update(check_state(s, {k: first.get(k) for k in IDENTITY_KEYS}, owner="merge_states"))
    return make_state(first, positions)


def check_launch_state(state: Any, config: Any) -> str:
    """Check ``LaunchConfig.resume_from`` against the config.

    Args:
        state: The state dict.
        config: The `blendtorch_ray.config.LaunchConfig` being built.

    Returns:
        The group name to use: ``config.name``, or the checkpoint's if ``name`` was not given.

    Raises:
        ResumeError: As `check_state` (the group name is compared only if ``name`` was given),
            or a position names a btid outside the group.
    """
    identity = group_identity(config)
    positions = check_state(state, identity, owner="LaunchConfig(resume_from=...)",
                            ignore=() if config.name else ("group",))
    bad = sorted(b for b in positions if b >= config.num_instances)
    if bad:
        raise ResumeError(f"LaunchConfig(resume_from=...): positions for btids {bad}, but the group has "
                          f"{config.num_instances} instances; resume with num_instances={state.get('num_instances')}")
    return config.name or str(state.get("group"))


def reposition(sup: Any, position: Optional[Position]) -> bool:
    """Make an instance go on at ``position``: the seek behind `load_state_dict` and every
    reopened stream (called by ``BlenderActor.stream``).

    If the instance's next item (``Supervisor.position``: the first not yet handed over, same
    stream seed) is the one asked for, nothing happens: what Blender sent since is exactly what comes next.
    Otherwise (the consumer lost items in flight, or resumes from a checkpoint) Blender is
    killed, whatever it sent is dropped and a new Blender starts at ``position``.

    Args:
        sup: The instance's `blendtorch_ray.supervisor.Supervisor`.
        position: ``(stream seed, next seq)``; None: go on where it is.

    Returns:
        True if Blender was restarted at ``position``.
    """
    if position is None or sup.position() == tuple(position):
        return False
    log.info("Blender instance %d: starting again at seed %d, seq %d (was at seed %d, seq %d)",
             sup.btid, position[0], position[1], sup.stream_seed, sup.next_seq)
    sup.process.signal(signal.SIGKILL)
    held: list = []
    sup.drain(held, timeout=REPOSITION_DRAIN_S)
    for header in held:  # dropped: the new Blender renders them again
        sup.receiver.release(header)
    sup.process.terminate(timeout=0)
    sup.pending.clear()  # read before the actor existed: rendered again too
    sup.stream_seed, sup.next_seq = int(position[0]), int(position[1])
    sup.epoch += 1
    sup.ready = False
    sup.process = sup._spawn()
    return True
