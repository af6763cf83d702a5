"""cluster.yaml against the Ray cluster launcher's own schema; the KubeRay RayService against the CRD's required
structure and Ray Serve's schema; no credentials in either."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from serve.config import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"
RAYSERVICE = ROOT / "deploy" / "kuberay-rayservice.yaml"
SERVE_CONFIG = ROOT / "configs" / "serve" / "cluster.yaml"
LOCAL_SERVE_CONFIG = ROOT / "configs" / "serve" / "local.yaml"

_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "image"],
                        "properties": {"name": {"type": "string"}, "image": {"type": "string"}},
                    },
                },
                "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
                "tolerations": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}
# rayStartParams values are strings in the CRD (map[string]string).
_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
# The part of the ray.io/v1 RayService CRD that this manifest relies on.
RAYSERVICE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {
                "serveConfigV2": {"type": "string"},
                "rayClusterConfig": {
                    "type": "object",
                    "required": ["headGroupSpec", "workerGroupSpecs"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "headGroupSpec": {
                            "type": "object",
                            "required": ["rayStartParams", "template"],
                            "properties": {"rayStartParams": _START_PARAMS, "template": _POD_TEMPLATE},
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["groupName", "rayStartParams", "template"],
                                "properties": {
                                    "groupName": {"type": "string"},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 1},
                                    "rayStartParams": _START_PARAMS,
                                    "template": _POD_TEMPLATE,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

CREDENTIAL_KEY = re.compile(r"password|passwd|secret|token|api[_-]?keys?|access[_-]?key|private[_-]?key|credential",
                            re.IGNORECASE)
ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
CREDENTIAL_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|-----BEGIN|ghp_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9]{20,}|"
                              r"xox[bp]-|[A-Za-z0-9+/]{40,}")


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def credential_findings(node: Any, where: str = "") -> list[str]:
    """Credential-looking keys holding literal values (a reference or an env-var name is fine) and
    credential-looking values anywhere."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if CREDENTIAL_KEY.search(str(key)) and not (
                isinstance(value, (dict, bool)) or (isinstance(value, str) and ENV_NAME.fullmatch(value))
            ):
                found.append(f"{where}.{key}")
            found += credential_findings(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += credential_findings(value, f"{where}[{index}]")
    elif isinstance(node, str):
        if CREDENTIAL_VALUE.search(node):
            found.append(where)
        if "\n" in node and ":" in node:  # an embedded YAML document (serveConfigV2)
            found += credential_findings(yaml.safe_load(node), f"{where}<yaml>")
    return found


def test_cluster_yaml_validates_against_the_launcher_schema() -> None:
    config = load(CLUSTER)
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types and config["provider"]["type"] == "aws"
    head, gpu = types[config["head_node_type"]], types["gpu_h100"]
    assert not head["node_config"]["InstanceType"].startswith(("p", "g")) and head["resources"].get("GPU", 0) == 0
    assert gpu["node_config"]["InstanceType"] == "p5.48xlarge" and gpu["resources"]["GPU"] == 8
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= config["max_workers"]
    ports = {(rule["FromPort"], rule["ToPort"]) for rule in config["provider"]["security_group"]["IpPermissions"]}
    assert {(8265, 8265), (8000, 8000)} <= ports
    cidrs = [r["CidrIp"] for rule in config["provider"]["security_group"]["IpPermissions"] for r in rule["IpRanges"]]
    assert "0.0.0.0/0" not in cidrs
    assert any("pip install torch==2.13.0 && pip install -e ." in command for command in config["setup_commands"])
    assert "." in config["file_mounts"].values()
    assert any("--dashboard-port=8265" in command for command in config["head_start_ray_commands"])


def test_cluster_yaml_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load(CLUSTER)))  # fills the AWS defaults, as `ray up` does, then validates


def test_rayservice_matches_the_crd_and_embeds_the_serve_config() -> None:
    manifest = load(RAYSERVICE)
    jsonschema.validate(manifest, RAYSERVICE_SCHEMA)
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    assert serve_config == load(SERVE_CONFIG)
    assert [app["import_path"] for app in serve_config["applications"]] == ["serve.app:build_app"]

    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {port["containerPort"] for port in head["ports"]} >= {6379, 8265, 8000}
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    pod = workers["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert "H100" in pod["nodeSelector"]["nvidia.com/gpu.product"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    images = {c["image"] for spec in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
              for c in spec["template"]["spec"]["containers"]}
    assert len(images) == 1


@pytest.mark.parametrize("path", [SERVE_CONFIG, LOCAL_SERVE_CONFIG], ids=lambda p: p.name)
def test_serve_configs_validate(path) -> None:
    """Ray Serve's schema for the file, ours for the app's args: what `serve run`/`serve deploy` would check."""
    config = load(path)
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    args = ServeConfig.model_validate(app["args"])
    for entry in args.backbones.values():
        assert (ROOT / entry.config).is_file()


@pytest.mark.parametrize("path", [CLUSTER, RAYSERVICE, SERVE_CONFIG], ids=lambda p: p.name)
def test_no_credentials(path) -> None:
    assert credential_findings(load(path)) == []


def test_the_credential_check_catches_some() -> None:
    assert credential_findings({"auth": {"ssh_private_key": "~/.ssh/id_rsa"}}) == [".auth.ssh_private_key"]
    assert credential_findings({"env": [{"name": "X", "value": "AKIAABCDEFGHIJKLMNOP"}]}) == [".env[0].value"]
    assert credential_findings({"aws_secret_access_key": "abc"}) == [".aws_secret_access_key"]
    assert credential_findings({"s": "a:\n  token: hunter2\n"}) == [".s<yaml>.a.token"]
