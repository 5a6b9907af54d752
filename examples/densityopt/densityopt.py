"""densityopt: learn the distribution of simulation parameters from rendered images.

Blender (``scene.py``) renders silhouettes of ellipsoids whose shape ``theta = (width,
height)`` is drawn from ``N(mu, sigma)``. A target set is rendered once from ``mu*``. Then,
alternately:

1. the trainer broadcasts the current ``mu`` over the duplex channel and keeps only items
   rendered from it (``channel.is_fresh``: the generation counter tells stale ones apart);
2. a small CNN discriminator learns to tell target images from these;
3. ``mu`` follows the score-function (REINFORCE) gradient of the discriminator's belief that
   the rendered images are real: ``grad = E[(r - mean r) * d/dmu log N(theta; mu, sigma)]``,
   with ``r`` the discriminator logit. Rendering needs no gradient.

Run ``python examples/densityopt/densityopt.py`` (about 2-4 minutes on 2 CPU cores); it
prints the parameter trajectory and writes ``densityopt.png``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from blendtorch_ray import BlenderLauncher

SCENE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scene.py")


@dataclass
class DensityOptConfig:
    """Settings of one densityopt run (defaults: the README run)."""

    target: tuple[float, float] = (1.5, 0.6)
    """Shape parameters (width, height) the target images are rendered from."""
    init: tuple[float, float] = (0.7, 1.3)
    """Initial guess of ``mu``."""
    sigma: float = 0.1
    """Fixed standard deviation of the shape distribution."""
    iterations: int = 50
    """Optimisation steps (one broadcast, one discriminator and one ``mu`` update each)."""
    batch: int = 48
    """Fresh rendered images per step."""
    num_target: int = 192
    """Images in the target set."""
    lr: float = 0.05
    """Adam learning rate of ``mu`` (cosine-annealed to a tenth over the run)."""
    d_lr: float = 2e-3
    """Adam learning rate of the discriminator."""
    d_steps: int = 3
    """Discriminator updates per step."""
    resolution: int = 64
    """Square image size in pixels."""
    num_instances: int = 2
    """Blender instances rendering in parallel."""
    seed: int = 0
    """Seeds torch and the Blender instances."""
    log: bool = True
    """Print the trajectory while running."""


@dataclass
class DensityOptResult:
    """What a run produced: ``mu`` after every step, and bookkeeping."""

    trajectory: list[list[float]] = field(default_factory=list)
    """``mu`` before the first step and after each step."""
    stale_dropped: int = 0
    """Items skipped because they were rendered from an older ``mu``."""
    seconds: float = 0.0

    def distance(self, target: tuple[float, float], index: int = -1) -> float:
        return float(np.linalg.norm(np.subtract(self.trajectory[index], target)))


class Discriminator(nn.Module):
    """A small CNN: silhouette image -> logit of "from the target set"."""

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(8, 16, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(16, 32, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(32 * (resolution // 8) ** 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """(N, H, W) uint8 silhouettes -> (N, 1, H, W) float in [0, 1]."""
    return torch.from_numpy(np.stack(images)).float().div_(255.0).unsqueeze(1)


def collect(items: Iterator[dict], channel, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The next ``n`` items rendered from the latest parameters; returns (images, thetas, stale)."""
    images, thetas, stale = [], [], 0
    while len(images) < n:
        item = next(items)
        if not channel.is_fresh(item):
            stale += 1
            continue
        images.append(item["image"])
        thetas.append(item["theta"])
    return to_tensor(images), torch.from_numpy(np.stack(thetas)).float(), stale


def run(cfg: DensityOptConfig) -> DensityOptResult:
    """Launch Blender, render the target set, then optimise ``mu``; returns the trajectory."""
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    args = ["--width", str(cfg.resolution), "--height", str(cfg.resolution)]
    result = DensityOptResult()
    sigma = torch.full((2,), cfg.sigma)
    with BlenderLauncher(
        script=SCENE,
        num_instances=cfg.num_instances,
        instance_args=[args] * cfg.num_instances,
        seed=cfg.seed,
        batch_size=4,
        max_batches_in_flight=1,
        max_batch_delay=0.05,
    ) as bl:
        channel = bl.channel()
        items = iter(bl.dataset(timeout=120))

        per_instance = -(-cfg.num_target // cfg.num_instances)
        channel.broadcast(mu=list(cfg.target), sigma=sigma.tolist(), count=per_instance)
        real, _, result.stale_dropped = collect(items, channel, cfg.num_target)

        mu = torch.tensor(cfg.init, requires_grad=True)
        opt_mu = torch.optim.Adam([mu], lr=cfg.lr, betas=(0.5, 0.9))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt_mu, cfg.iterations, eta_min=cfg.lr / 10)
        disc = Discriminator(cfg.resolution)
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999))
        bce = nn.BCEWithLogitsLoss()
        result.trajectory.append(mu.detach().tolist())
        for step in range(cfg.iterations):
            # Ask for just enough images: every instance renders its share, then waits.
            per_instance = -(-cfg.batch // cfg.num_instances)
            channel.broadcast(mu=mu.detach().tolist(), sigma=sigma.tolist(), count=per_instance)
            fake, theta, stale = collect(items, channel, cfg.batch)
            result.stale_dropped += stale

            for _ in range(cfg.d_steps):
                pick = torch.randint(len(real), (cfg.batch,))
                logits = disc(torch.cat([real[pick], fake]))
                labels = torch.cat([torch.ones(cfg.batch), torch.zeros(cfg.batch)])
                opt_d.zero_grad()
                bce(logits, labels).backward()
                opt_d.step()

            with torch.no_grad():
                reward = disc(fake)
            advantage = (reward - reward.mean()) / (reward.std() + 1e-6)
            logp = torch.distributions.Normal(mu, sigma).log_prob(theta).sum(1)
            opt_mu.zero_grad()
            (-(advantage * logp).mean()).backward()
            opt_mu.step()
            schedule.step()
            with torch.no_grad():
                mu.clamp_(0.2, 1.9)
            result.trajectory.append(mu.detach().tolist())
            if cfg.log:
                w, h = result.trajectory[-1]
                print(
                    f"step {step + 1:3d}  mu = ({w:.3f}, {h:.3f})  target = {cfg.target}  "
                    f"distance {result.distance(cfg.target):.3f}  stale skipped {stale}",
                    flush=True,
                )
    result.seconds = time.perf_counter() - t0
    return result


def plot(result: DensityOptResult, cfg: DensityOptConfig, path: str, size: tuple[int, int] = (640, 360)) -> None:
    """Draw ``mu`` per step (solid) against the target (dashed) into a PNG with Pillow."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 50, 110, 20, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    traj = np.array(result.trajectory)
    steps = len(traj) - 1
    lo, hi = 0.2, 1.9

    def xy(i: float, v: float) -> tuple[float, float]:
        x = left + (w - left - right) * i / max(steps, 1)
        y = top + (h - top - bottom) * (hi - v) / (hi - lo)
        return x, y

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for v in (0.4, 0.8, 1.2, 1.6):
        d.text((8, xy(0, v)[1] - 6), f"{v:.1f}", fill="black")
        d.line([xy(0, v), (left + 4, xy(0, v)[1])], fill="black")
    for i in range(0, steps + 1, max(1, steps // 8)):
        d.text((xy(i, lo)[0] - 6, h - bottom + 6), str(i), fill="black")
    d.text((w // 2 - 40, h - 18), "optimisation step", fill="black")
    for k, (name, colour) in enumerate([("width", (31, 119, 180)), ("height", (214, 39, 40))]):
        ty = xy(0, cfg.target[k])[1]
        for x0 in range(left, w - right, 12):  # dashed target line
            d.line([(x0, ty), (min(x0 + 6, w - right), ty)], fill=colour, width=1)
        d.line([xy(i, v) for i, v in enumerate(traj[:, k])], fill=colour, width=3)
        d.text((w - right + 8, xy(steps, traj[-1, k])[1] - 14), f"mu {name}", fill=colour)
        d.text((w - right + 8, ty + 2), f"target {cfg.target[k]}", fill=colour)
    img.save(path)


def main(argv: Optional[list[str]] = None) -> int:
    defaults = DensityOptConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=defaults.iterations)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--instances", type=int, default=defaults.num_instances)
    parser.add_argument("--resolution", type=int, default=defaults.resolution)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "densityopt.png"))
    a = parser.parse_args(argv)
    if a.resolution % 8:
        parser.error("--resolution must be a multiple of 8")
    cfg = DensityOptConfig(iterations=a.iterations, batch=a.batch, num_instances=a.instances,
                           resolution=a.resolution, seed=a.seed)
    print("config:", asdict(cfg), flush=True)
    result = run(cfg)
    plot(result, cfg, a.out)
    print(f"distance to target: {result.distance(cfg.target, 0):.3f} -> {result.distance(cfg.target):.3f} "
          f"in {result.seconds:.0f}s ({result.stale_dropped} stale items skipped); plot: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
