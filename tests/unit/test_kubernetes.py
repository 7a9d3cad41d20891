"""The Kubernetes manifests (infra/kubernetes, kustomize): they render, and they agree with the settings,
the CLI and the Deployment names the scaler's Kubernetes backend scales. Nothing here applies them."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from infaas.cli import build_parser
from infaas.hardware import load_catalog
from infaas.settings import load_settings

KUSTOMIZE_DIR = Path(__file__).resolve().parents[2] / "infra" / "kubernetes"


def kustomize_binary() -> str | None:
    return shutil.which("kustomize") or next(
        (str(p) for p in [Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin" / "kustomize"] if p.is_file()),
        None)


def python_render() -> list[dict]:
    """What kustomize renders, for the parts these tests read: the resources plus the generated
    ConfigMap and Secret (names without kustomize's hash suffix)."""
    kustomization = yaml.safe_load((KUSTOMIZE_DIR / "kustomization.yaml").read_text())
    docs = [doc for name in kustomization["resources"]
            for doc in yaml.safe_load_all((KUSTOMIZE_DIR / name).read_text()) if doc]
    for generator in kustomization["configMapGenerator"]:
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                     "data": {f: (KUSTOMIZE_DIR / f).read_text() for f in generator["files"]}})
    for generator in kustomization["secretGenerator"]:
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": generator["name"]}})
    return docs


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    binary = kustomize_binary()
    if binary is None:  # kustomize installs from the Go module proxy where a recent Go is present
        return python_render()
    out = subprocess.run([binary, "build", str(KUSTOMIZE_DIR)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def base_name(name: str) -> str:
    """Generated ConfigMaps and Secrets carry a content hash suffix after kustomize."""
    return name.rsplit("-", 1)[0] if kustomize_binary() and not name.startswith("infaas-kafka") else name


def containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def test_every_resource_parses_and_is_listed():
    kustomization = yaml.safe_load((KUSTOMIZE_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in KUSTOMIZE_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    for doc in python_render():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


def test_expected_services_are_deployed(rendered):
    deployments = of_kind(rendered, "Deployment")
    assert {"infaas-dispatcher", "infaas-monitor", "infaas-scaler", "infaas-gateway", "infaas-worker-cpu",
            "infaas-worker-gpu-t4"} <= set(deployments)
    assert "infaas-gateway" in of_kind(rendered, "Service")
    assert deployments["infaas-scaler"]["spec"]["strategy"]["type"] == "Recreate"  # never two scalers at once


def test_config_map_holds_valid_settings_that_match_the_pods(rendered, tmp_path):
    config = next(d for n, d in of_kind(rendered, "ConfigMap").items() if base_name(n) == "infaas-config")
    path = tmp_path / "infaas.toml"
    path.write_text(config["data"]["infaas.toml"])
    settings = load_settings(path, environ={})
    assert settings.metrics_host == "0.0.0.0" and settings.metrics_port == 9100
    assert settings.replication_factor >= 3 and settings.repository_url.startswith("s3://")
    for name, deployment in of_kind(rendered, "Deployment").items():
        for container in containers(deployment):
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["metrics"] == settings.metrics_port, name
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["INFAAS_CONFIG"] == "/etc/infaas/infaas.toml"
            assert {base_name(e["secretRef"]["name"]) for e in container["envFrom"]} == {"infaas-credentials"}


def test_every_container_runs_an_infaas_command():
    parser = build_parser()
    for doc in python_render():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in containers(doc):
            args = [a.replace("$(POD_NAME)", "pod-0") for a in container["args"]]
            parsed = parser.parse_args(args)
            assert getattr(parsed, "handler", None), shlex.join(args)


def test_scaler_scales_the_worker_deployments_that_exist(rendered):
    deployments = of_kind(rendered, "Deployment")
    scaler_args = build_parser().parse_args(containers(deployments["infaas-scaler"])[0]["args"])
    assert scaler_args.backend == "kubernetes"
    options = dict(item.split("=", 1) for item in scaler_args.backend_option)
    scaled = {k[len("deployment."):]: v for k, v in options.items() if k.startswith("deployment.")}
    assert options["namespace"] == yaml.safe_load((KUSTOMIZE_DIR / "kustomization.yaml").read_text())["namespace"]
    catalogue = load_catalog()
    for hardware, name in scaled.items():
        assert hardware == "cpu" or hardware in catalogue, hardware
        worker = containers(deployments[name])[0]
        args = build_parser().parse_args([a.replace("$(POD_NAME)", "pod-0") for a in worker["args"]])
        assert args.command == "worker" and args.hardware == hardware
        # The backend removes a chosen worker by its pod name: the worker id must be the pod name.
        assert "$(POD_NAME)" in worker["args"]
        assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in worker["env"]
        limits = worker["resources"]["limits"]
        spec = deployments[name]["spec"]["template"]["spec"]
        if hardware != "cpu":
            assert limits["nvidia.com/gpu"] == 1 and spec["nodeSelector"]
    role = of_kind(rendered, "Role")["infaas-scaler"]
    assert any("deployments/scale" in r["resources"] and "patch" in r["verbs"] for r in role["rules"])
    assert deployments["infaas-scaler"]["spec"]["template"]["spec"]["serviceAccountName"] == "infaas-scaler"
