"""The monitoring component: its dashboard queries only metrics the mesh has, and it renders
onto the mesh's Deployments (scrape annotations, the metrics port, the dashboard ConfigMap)."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import magicpixels.core.metrics  # noqa: F401  (registers every metric of the mesh)
from tests.deploy.test_k8s import kubectl

K8S = Path(__file__).parent.parent / "k8s"
COMPONENT = K8S / "components" / "monitoring"
_SUFFIXES = re.compile(r"_(total|bucket|count|sum|created)$")


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((COMPONENT / "dashboard.json").read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert queries
    return {
        _SUFFIXES.sub("", name)
        for query in queries
        for name in re.findall(r"\bmagicpixels_[a-z_]+", query)
    }


def test_the_dashboard_queries_only_metrics_of_the_registry() -> None:
    ours = {family.name for family in REGISTRY.collect() if family.name.startswith("magicpixels")}
    queried = dashboard_metrics()
    assert queried <= ours, queried - ours
    # RED of HTTP and gRPC, and the queue, are all on it.
    assert {
        "magicpixels_http_requests",
        "magicpixels_http_request_duration_seconds",
        "magicpixels_grpc_server_handled",
        "magicpixels_grpc_server_handling_seconds",
        "magicpixels_grpc_client_handled",
        "magicpixels_queue_depth",
        "magicpixels_queue_oldest_age_seconds",
        "magicpixels_job_create_to_lease_seconds",
    } <= queried


def test_every_metric_is_documented() -> None:
    operations = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    for family in REGISTRY.collect():
        if family.name.startswith("magicpixels"):
            assert f"`{family.name}" in operations, family.name


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_the_component_renders_onto_the_deployments(tmp_path: Path, overlay: str) -> None:
    """The component added to a real overlay, as an operator with the Prometheus Operator would."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "overlays" / overlay, tmp_path)],
                "components": [os.path.relpath(COMPONENT, tmp_path)],
            }
        )
    )
    rendered = subprocess.run(
        [kubectl(), "kustomize", str(tmp_path)], check=True, capture_output=True, text=True
    ).stdout
    found = {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(rendered)}
    for service in ("auth", "billing", "assets", "jobs", "inference"):
        pod = found["Deployment", service]["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9464", service
        ports = pod["spec"]["containers"][0]["ports"]
        assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in ports, service
    gateway = found["Deployment", "gateway"]["spec"]["template"]
    assert gateway["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    dashboard = found["ConfigMap", "magicpixels-grafana-dashboard"]
    assert dashboard["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(dashboard["data"]["dashboard.json"])["uid"] == "magicpixels-mesh"
    assert ("PodMonitor", "magicpixels") in found
    assert ("NetworkPolicy", "magicpixels-allow-metrics-scrapes") in found
