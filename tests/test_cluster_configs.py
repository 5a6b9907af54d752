"""Validate every `ray up` YAML in cluster_configs/ offline, with Ray's own autoscaler code.

`ray up` has no dry run; ``prepare_config`` + ``validate_config`` are what it runs first
(defaults merged, JSON schema checked, node types checked), without touching any network.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "cluster_configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _resources_from_start_commands(commands: list[str]) -> dict:
    """Run the `ray start` line through bash with `ray` replaced by echo; parse --resources."""
    line = commands[-1]
    assert "ray start" in line, line
    script = line.replace("~/btr-venv/bin/ray start", "printf '%s\\n'").replace("ray start", "printf '%s\\n'")
    out = subprocess.run(
        ["bash", "-c", script.replace("ulimit -n 65536;", "")],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin", "RAY_HEAD_IP": "10.0.0.1"},
    ).stdout.splitlines()
    values = [a.split("=", 1)[1] for a in out if a.startswith("--resources=")]
    assert len(values) == 1, f"expected one --resources argument in {out}"
    return json.loads(values[0])


def test_there_are_configs_for_onprem_aws_and_gcp():
    providers = {_load(p)["provider"]["type"] for p in CONFIGS}
    assert {"local", "aws", "gcp"} <= providers


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_with_the_autoscaler(path):
    config = _load(path)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # Every node installs the project (from the synced source) with Blender (bpy).
    setup = " ".join(prepared["setup_commands"])
    assert "blendtorch-ray[bpy]" in setup
    assert "~/blendtorch-ray" in config["file_mounts"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_render_nodes_advertise_the_blender_resource(path):
    config = _load(path)
    prepared = prepare_config(copy.deepcopy(config))
    if config["provider"]["type"] == "local":
        for key in ("head_start_ray_commands", "worker_start_ray_commands"):
            resources = _resources_from_start_commands(prepared[key])
            assert isinstance(resources.get("blender"), int) and resources["blender"] >= 0
    else:
        slots = {
            name: t["resources"].get("blender", 0)
            for name, t in prepared["available_node_types"].items()
        }
        head = prepared["head_node_type"]
        assert any(n > 0 for name, n in slots.items() if name != head), slots


def test_local_provider_rejects_available_node_types():
    """Why the on-prem config advertises `blender` in `ray start` instead of node types."""
    config = _load(CONFIG_DIR / "onprem.yaml")
    config["available_node_types"] = {"render": {"node_config": {}, "resources": {"blender": 4}}}
    with pytest.raises(click.ClickException, match="available_node_types is not supported"):
        prepare_config(config)


def test_validation_catches_a_misspelt_field():
    config = _load(CONFIG_DIR / "aws.yaml")
    config["setup_comands"] = ["echo typo"]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))
