"""The Ray Train example at CI size: real Blender, real Ray Train (DDP over gloo), loss goes down."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ray_train" / "train.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("ray_train_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    # Ray Train workers cannot import the example by name: ship its functions by value.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(module)
    return module


def test_settings_reject_bad_combinations():
    example = _load_example()
    with pytest.raises(ValueError, match="--instances >= --workers"):
        example.TrainSettings.tiny(source="stream", instances=1, workers=2)
    with pytest.raises(ValueError, match="source"):
        example.TrainSettings.tiny(source="parquet")
    assert example.parse_args(["--tiny", "--epochs", "2"]) == example.TrainSettings.tiny(epochs=2)


@pytest.mark.blender
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("source", ["ray-data", "stream"])
def test_tiny_training_run_lowers_the_loss(ray_session, tmp_path, source):
    example = _load_example()
    epochs = 4 if source == "ray-data" else 2
    settings = example.TrainSettings.tiny(source=source, epochs=epochs, storage=str(tmp_path))
    history = example.run(settings)
    assert [int(r["epoch"]) for r in history] == list(range(epochs))
    assert all(int(r["items"]) == settings.items for r in history), history
    first, last = history[0]["loss"], history[-1]["loss"]
    print(f"{source}: loss per epoch {[round(r['loss'], 5) for r in history]}")
    assert last < first, f"loss did not go down: {first} -> {last}"
