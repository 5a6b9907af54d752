"""Train a small CNN with Ray Train on live Blender renders of the bundled cube scene.

The network regresses the 8 projected cube corners (``xy``, in pixels) from the image. Blender
instances render while the ``TorchTrainer`` workers train; every epoch sees fresh renders.
Two ways for the workers to get their share of the stream (``--source``):

- ``ray-data`` (default): a bounded Ray Dataset of ``--items`` renders per epoch, passed to
  the trainer; each worker reads its shard with ``ray.train.get_dataset_shard("train")``.
- ``stream``: no Ray Data; rank ``r`` of ``w`` reads the instances with ``btid % w == r``
  through a torch ``RemoteIterableDataset`` (needs at least as many instances as workers).

Run locally (starts Ray), or on a cluster started with ``ray up`` (``--address auto``, or
``ray job submit -- python examples/ray_train/train.py --address auto --blender-resource``)::

    python examples/ray_train/train.py --tiny
    python examples/ray_train/train.py --instances 8 --workers 4 --epochs 20 --items 4096

Checkpoints and resuming: rank 0 reports a Ray Train ``Checkpoint`` after every epoch with the
model, the optimizer, the epoch and (``--source stream``) the stream's state: every instance's
stream seed and next ``seq`` (``RemoteIterableDataset.state_dict()``, gathered from all ranks).
Give the run a ``--name`` (and ``--storage``): running the same command again after the job
was stopped or killed restores the run (Ray Train finds its latest checkpoint under
``storage/name``; ``ray.train.get_checkpoint()`` returns it), and each rank's dataset goes on
from the checkpoint (``load_state_dict``): the next items of each instance, none seen twice::

    python examples/ray_train/train.py --tiny --source stream --name cube-1 --storage /tmp/runs
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from typing import Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from blender_worker.scenes import CUBE
from blendtorch_ray import BlenderLauncher
from blendtorch_ray.dataset import RemoteIterableDataset, make_loader
from blendtorch_ray.resume import merge_states
from blendtorch_ray.runtime import ensure_ray


@dataclass
class TrainSettings:
    """Everything the example can be told on the command line."""

    source: str = "ray-data"
    """"ray-data" (Dataset shards) or "stream" (each rank reads its own instances)."""
    instances: int = 4
    """Blender instances rendering the cube scene."""
    workers: int = 2
    """Ray Train workers (torch DDP ranks, gloo on CPU)."""
    cpus_per_worker: float = 1.0
    """Logical CPUs reserved per training worker."""
    cpus_per_instance: float = 1.0
    """Logical CPUs reserved per Blender instance (its actor)."""
    cpus_per_read_task: float = 0.5
    """Logical CPUs per Ray Data read task (one per instance)."""
    epochs: int = 10
    items: int = 2048
    """Renders per epoch, over all workers."""
    batch_size: int = 32
    lr: float = 3e-3
    width: int = 128
    height: int = 96
    blender_resource: bool = False
    """Place each instance on a node advertising the ``blender`` resource (cluster_configs/)."""
    address: Optional[str] = None
    """Ray address: None = local (or $RAY_ADDRESS), "auto" = the cluster this node belongs to."""
    storage: Optional[str] = None
    """Ray Train storage path (shared storage such as s3://... or NFS on a multi-node cluster)."""
    name: Optional[str] = None
    """Name of the run and of its Blender group; the same name (and storage) again resumes the
    run from its latest checkpoint. None: a fresh name, nothing to resume."""
    seed: int = 0
    """Base seed of the renders (a resumed run must keep it)."""

    @classmethod
    def tiny(cls, **overrides) -> "TrainSettings":
        """CI size: a few hundred 64x48 renders, 2 workers of half a CPU."""
        base = cls(instances=2, workers=2, cpus_per_worker=0.5, cpus_per_instance=0.5, epochs=4,
                   items=128, batch_size=16, width=64, height=48)
        return replace(base, **overrides)

    def __post_init__(self) -> None:
        if self.source not in ("ray-data", "stream"):
            raise ValueError(f"source must be 'ray-data' or 'stream', got {self.source!r}")
        if self.source == "stream" and self.instances < self.workers:
            raise ValueError(
                f"--source stream gives each worker its own instances: need --instances >= "
                f"--workers, got {self.instances} < {self.workers}"
            )
        if self.items < self.workers * self.batch_size:
            raise ValueError(f"--items {self.items} is less than one batch per worker "
                             f"({self.workers} x {self.batch_size})")


class CornerNet(nn.Module):
    """Image (B, 3, H, W) in [0, 1] -> 8 corners (B, 16), as fractions of width/height."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d((3, 4)), nn.Flatten(),
        )
        self.head = nn.Linear(64 * 12, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_tensors(image: torch.Tensor, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, H, W, 4) + pixel corners (B, 8, 2) -> network input and normalised target."""
    h, w = image.shape[1:3]
    x = image[..., :3].permute(0, 3, 1, 2).float().div_(255.0)
    y = (xy.float() / torch.tensor([w, h], dtype=torch.float32)).reshape(len(xy), -1)
    return x, y


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimisation step on a batch; returns the batch's mean loss."""
    loss = F.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _dataset_batches(cfg: dict) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    shard = ray.train.get_dataset_shard("train")
    for batch in shard.iter_torch_batches(batch_size=cfg["batch_size"], drop_last=True):
        yield batch["image"], batch["xy"]


class RankStream:
    """Rank ``r`` of ``w``: the instances with ``btid % w == r``, one stream over all epochs
    (batches are taken from one iterator, so nothing rendered for this rank is dropped
    between epochs), resumable from a checkpoint's stream state."""

    def __init__(self, cfg: dict, rank: int, world: int, state: Optional[dict]) -> None:
        btids = [b for b in range(cfg["num_instances"]) if b % world == rank]
        self.steps = cfg["items"] // world // cfg["batch_size"]
        self.dataset = RemoteIterableDataset(
            group=cfg["group"], namespace=cfg["namespace"], num_instances=cfg["num_instances"], btids=btids,
            item_transform=lambda item: {"image": item["image"], "xy": item["xy"]},
        )
        if state is not None:
            self.dataset.load_state_dict(state)  # each instance goes on at the checkpoint's next seq
        self._batches = iter(make_loader(self.dataset, batch_size=cfg["batch_size"]))

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch's batches (the same number on every rank, as DDP needs)."""
        for _ in range(self.steps):
            batch = next(self._batches)
            yield batch["image"], batch["xy"]


def _restore(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, Optional[dict]]:
    """Load the latest checkpoint of a restored run: the first epoch to train and the stream state."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, None
    with checkpoint.as_directory() as d:
        saved = torch.load(os.path.join(d, "train.pt"))
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        stream = os.path.join(d, "stream.json")
        state = json.load(open(stream)) if os.path.exists(stream) else None
    return saved["epoch"] + 1, state


def train_loop_per_worker(cfg: dict) -> None:
    """Runs in every Ray Train worker: DDP training, one report (and checkpoint) per epoch."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(0)
    net = CornerNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    start, state = _restore(net, optimizer)
    model = ray.train.torch.prepare_model(net)
    stream = RankStream(cfg, rank, world, state) if cfg["source"] == "stream" else None
    for epoch in range(start, cfg["epochs"]):
        batches = stream.epoch() if stream else _dataset_batches(cfg)
        total, count = 0.0, 0
        for image, xy in batches:
            x, y = to_tensors(image, xy)
            total += train_step(model, optimizer, x, y) * len(x)
            count += len(x)
        stats = torch.tensor([total, count], dtype=torch.float64)
        dist.all_reduce(stats)
        metrics = {"epoch": epoch, "loss": float(stats[0] / max(stats[1], 1)), "items": int(stats[1])}
        # The stream's position on every rank (each reads its own instances), merged on rank 0.
        states = [None] * world
        dist.all_gather_object(states, stream.dataset.state_dict() if stream else None)
        if rank == 0:
            print(f"epoch {epoch:3d}  loss {metrics['loss']:.5f}  items {metrics['items']}", flush=True)
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                           os.path.join(d, "train.pt"))
                if stream:
                    with open(os.path.join(d, "stream.json"), "w") as f:
                        json.dump(merge_states(states), f)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def cpus_needed(settings: TrainSettings) -> float:
    """Logical CPUs the run reserves at once: instances, training workers, read tasks."""
    reads = settings.instances * settings.cpus_per_read_task if settings.source == "ray-data" else 0.0
    return settings.instances * settings.cpus_per_instance + settings.workers * settings.cpus_per_worker + reads


def connect(settings: TrainSettings) -> None:
    """Join the given Ray, or start a local one with enough logical CPUs for this run.

    Reservations are logical: a local Ray on a 2-core machine may promise more CPUs than it
    has (Blender and the trainer then share the cores), but a cluster has to have them, or
    Ray Train would wait for its workers forever.
    """
    local = settings.address is None and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized()
    needed = cpus_needed(settings)
    if local:
        ensure_ray(num_cpus=max(os.cpu_count() or 1, int(needed + 1.999)))
        return
    ensure_ray(address=settings.address)
    have = ray.cluster_resources().get("CPU", 0.0)
    if have < needed:
        raise RuntimeError(
            f"this run reserves {needed:g} CPUs ({settings.instances} instances x "
            f"{settings.cpus_per_instance:g} + {settings.workers} workers x {settings.cpus_per_worker:g} + "
            f"read tasks) but the Ray cluster has {have:g}; lower --instances/--workers or "
            "--cpus-per-instance/--cpus-per-worker, or add nodes"
        )


def run(settings: TrainSettings) -> list[dict]:
    """Launch the renderers, train, and return the per-epoch metrics (epoch, loss, items)."""
    connect(settings)
    size = ["--width", str(settings.width), "--height", str(settings.height)]
    resources = {"blender": 1} if settings.blender_resource else {}
    with BlenderLauncher(script=CUBE, num_instances=settings.instances, name=settings.name, seed=settings.seed,
                         instance_args=[size] * settings.instances, resources=resources,
                         num_cpus=settings.cpus_per_instance) as bl:
        cfg = dict(asdict(settings), group=bl.name, namespace=bl.namespace, num_instances=bl.num_instances)
        datasets = {}
        if settings.source == "ray-data":
            datasets["train"] = bl.ray_dataset(settings.items, columns=["image", "xy"],
                                               ray_remote_args={"num_cpus": settings.cpus_per_read_task})
        # A named run keeps its checkpoints where a rerun finds them (Ray's ~/ray_results by default).
        storage = settings.storage or (None if settings.name else tempfile.mkdtemp(prefix="btr-train-"))
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=cfg,
            scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=False,
                                         resources_per_worker={"CPU": settings.cpus_per_worker}),
            datasets=datasets,
            run_config=RunConfig(name=settings.name or f"cube-corners-{bl.name}", storage_path=storage,
                                 checkpoint_config=CheckpointConfig(num_to_keep=None)),
        )
        result = trainer.fit()
    history = result.metrics_dataframe.sort_values("epoch")
    return history[["epoch", "loss", "items"]].to_dict("records")


def parse_args(argv: Optional[list[str]] = None) -> TrainSettings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CI size: 2 instances, 2 workers, 4 epochs of 128 items, 64x48")
    p.add_argument("--source", choices=["ray-data", "stream"])
    for name in ("instances", "workers", "epochs", "items", "batch_size", "width", "height"):
        p.add_argument("--" + name.replace("_", "-"), type=int)
    for name in ("cpus_per_worker", "cpus_per_instance", "cpus_per_read_task"):
        p.add_argument("--" + name.replace("_", "-"), type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--blender-resource", action="store_true", default=None,
                   help='schedule instances on nodes with the "blender" resource')
    p.add_argument("--address", help='Ray address ("auto" on a cluster node); default: local Ray')
    p.add_argument("--storage", help="Ray Train storage path (shared storage on multi-node clusters)")
    p.add_argument("--name", help="run (and Blender group) name: the same name and --storage again resumes the run")
    p.add_argument("--seed", type=int, help="base seed of the renders")
    args = vars(p.parse_args(argv))
    tiny = args.pop("tiny")
    overrides = {k: v for k, v in args.items() if v is not None}
    return TrainSettings.tiny(**overrides) if tiny else TrainSettings(**overrides)


def main(argv: Optional[list[str]] = None) -> None:
    settings = parse_args(argv)
    history = run(settings)
    print("epoch  loss")
    for row in history:
        print(f"{int(row['epoch']):5d}  {row['loss']:.5f}")
    first, last = history[0]["loss"], history[-1]["loss"]
    print(f"loss {first:.5f} -> {last:.5f} ({last / first:.2f}x)")


if __name__ == "__main__":
    main()
