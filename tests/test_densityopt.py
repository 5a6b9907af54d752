"""densityopt, scaled down: real Blender renders, real discriminator, REINFORCE on mu."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from conftest import REPO


def load_example():
    path = REPO / "examples" / "densityopt" / "densityopt.py"
    spec = importlib.util.spec_from_file_location("densityopt_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.blender
@pytest.mark.slow
def test_mini_run_moves_parameters_toward_target(ray_session, tmp_path):
    ex = load_example()
    cfg = ex.DensityOptConfig(
        iterations=8, batch=32, num_target=64, resolution=32, num_instances=1, lr=0.08, seed=1, log=False
    )
    result = ex.run(cfg)
    traj = np.array(result.trajectory)
    print("trajectory:", np.round(traj, 3).tolist(), f"({result.seconds:.0f}s)")
    assert traj.shape == (cfg.iterations + 1, 2)
    start, end = result.distance(cfg.target, 0), result.distance(cfg.target)
    assert end < 0.75 * start, f"mu did not approach the target: {start:.3f} -> {end:.3f}"
    # Both components moved the right way: width up toward 1.5, height down toward 0.6.
    assert traj[-1, 0] > traj[0, 0] + 0.1 and traj[-1, 1] < traj[0, 1] - 0.1
    ex.plot(result, cfg, str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 0
