"""The Kubernetes manifests (k8s/): each overlay renders with `kubectl kustomize`, every object
validates strictly against the Kubernetes schemas, and the rules an operator relies on hold in
code: locked-down containers with probes and resources, pinned images, Services that select
something, ports that agree, and NetworkPolicies that allow exactly the call graph's edges."""

import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from magicpixels.core.settings import DATABASE_SERVICES, SERVICES

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())
# The oldest Kubernetes release still maintained when these were written, and the newest.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
PROCESSES = (*SERVICES, "gateway")
WORKLOADS = ("Deployment", "StatefulSet")
GRPC_PORT = 50051
GATEWAY_PORT = 8080

Object = dict[str, Any]


def kubectl() -> str:
    """The kubectl that `./dev test` installs (scripts/kubectl.sh), else one on the PATH."""
    installed = ROOT / ".tools" / "bin" / "kubectl"
    found = str(installed) if installed.exists() else shutil.which("kubectl")
    assert found, "no kubectl: run scripts/kubectl.sh (./dev test does)"
    return found


@cache
def render(target: str) -> tuple[Object, ...]:
    rendered = subprocess.run(
        [kubectl(), "kustomize", str(K8S / target)], capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    return tuple(item for item in yaml.safe_load_all(rendered.stdout) if item)


def of_kind(objects: tuple[Object, ...], *kinds: str) -> list[Object]:
    return [item for item in objects if item["kind"] in kinds]


def named(objects: tuple[Object, ...], kind: str, name: str) -> Object:
    matches = [item for item in of_kind(objects, kind) if item["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


def pod_spec(item: Object) -> Object:
    spec: Object = item["spec"]["template"]["spec"]
    return spec


def containers(objects: tuple[Object, ...]) -> Iterator[tuple[Object, Object, Object]]:
    """Every container of every workload and Job: the object, its pod spec, the container."""
    for item in of_kind(objects, *WORKLOADS, "Job"):
        spec = pod_spec(item)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield item, spec, container


def config_maps(objects: tuple[Object, ...], container: Object) -> dict[str, str]:
    """The settings a container gets from its ConfigMaps (envFrom), merged in order."""
    settings: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            settings |= named(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
    return settings


def service(objects: tuple[Object, ...], name: str) -> tuple[Object, Object]:
    """A MagicPixels process's Deployment and its container."""
    deployment = named(objects, "Deployment", name)
    return deployment, pod_spec(deployment)["containers"][0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


every_overlay = pytest.mark.parametrize("overlay", OVERLAYS)


def overlay_objects(overlay: str) -> tuple[Object, ...]:
    return render(f"overlays/{overlay}")


def test_the_overlays_are_dev_and_production() -> None:
    assert OVERLAYS == ["dev", "production"]


@pytest.mark.parametrize("target", ["base", *(f"overlays/{name}" for name in OVERLAYS)])
def test_renders_with_kubectl_kustomize_without_duplicates(target: str) -> None:
    objects = render(target)
    keys = [(item["kind"], item["metadata"]["name"]) for item in objects]
    assert len(keys) == len(set(keys))
    assert {name for kind, name in keys if kind == "Deployment"} >= set(PROCESSES)


@every_overlay
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(overlay: str, version: str) -> None:
    for item in overlay_objects(overlay):
        kubernetes_validate.validate(item, version, strict=True)


def test_strict_validation_refuses_a_field_kubernetes_does_not_know() -> None:
    deployment = yaml.safe_load(yaml.safe_dump(named(render("overlays/dev"), "Deployment", "jobs")))
    pod_spec(deployment)["containers"][0]["livenesProbe"] = {"grpc": {"port": GRPC_PORT}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@every_overlay
def test_every_container_runs_locked_down_with_resources(overlay: str) -> None:
    """The restricted Pod Security Standard, a read-only root filesystem, requests and a memory
    limit, for every container: the MagicPixels ones, the backing services', the Jobs'."""
    for item, spec, container in containers(overlay_objects(overlay)):
        where = f"{item['kind']} {item['metadata']['name']} / {container['name']}"
        pod = spec.get("securityContext", {})
        own = container.get("securityContext", {})
        assert own.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
        assert own.get("runAsUser", pod.get("runAsUser", 1)) != 0, where
        assert own.get("readOnlyRootFilesystem") is True, where
        assert own.get("allowPrivilegeEscalation") is False, where
        assert own.get("capabilities", {}).get("drop") == ["ALL"], where
        seccomp = own.get("seccompProfile", pod.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", where
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
        assert "memory" in resources.get("limits", {}), where
        assert spec.get("automountServiceAccountToken") is False, where
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec), where


@every_overlay
def test_every_long_running_container_has_liveness_and_readiness_probes(overlay: str) -> None:
    for item, _, container in containers(overlay_objects(overlay)):
        if item["kind"] in WORKLOADS:  # a Job's container runs to completion: nothing to probe
            assert {"livenessProbe", "readinessProbe"} <= set(container), container["name"]


@every_overlay
def test_grpc_services_use_native_grpc_probes_and_the_gateway_its_http_ones(overlay: str) -> None:
    objects = overlay_objects(overlay)
    for name in SERVICES:
        _, container = service(objects, name)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"] == {"port": GRPC_PORT}, (name, probe)
    _, gateway = service(objects, "gateway")
    # Its own health for both: /readyz asks every service, and one down would take every
    # gateway out of the Service at once.
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/healthz"


@every_overlay
def test_no_image_floats(overlay: str) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for _, _, container in containers(overlay_objects(overlay)):
        image = container["image"]
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name, image
        assert tag not in ("", "latest"), image
        assert "/" not in tag, image
        assert re.search(r"\d", tag), f"{image}: the tag names no release"
        if name.endswith("/magicpixels"):
            assert tag == version, f"{image}: the release is {version}"


@every_overlay
def test_every_service_selects_a_workload_and_every_workload_has_a_service(overlay: str) -> None:
    objects = overlay_objects(overlay)
    templates = {
        item["metadata"]["name"]: item["spec"]["template"]["metadata"]["labels"]
        for item in of_kind(objects, *WORKLOADS)
    }
    selected = set()
    for item in of_kind(objects, "Service"):
        matches = [
            name for name, labels in templates.items() if selects(item["spec"]["selector"], labels)
        ]
        assert len(matches) == 1, f"Service {item['metadata']['name']} selects {matches}"
        selected |= set(matches)
    assert selected == set(templates)
    for item in of_kind(objects, *WORKLOADS):  # its own selector matches its own pods
        assert selects(
            item["spec"]["selector"]["matchLabels"], item["spec"]["template"]["metadata"]["labels"]
        )


@every_overlay
def test_grpc_services_are_headless_so_clients_balance_round_robin(overlay: str) -> None:
    objects = overlay_objects(overlay)
    for name in SERVICES:
        spec = named(objects, "Service", name)["spec"]
        assert spec["clusterIP"] == "None"
        assert spec["ports"] == [
            {
                "name": "grpc",
                "port": GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "grpc",
            }
        ]


@every_overlay
def test_ports_agree_between_settings_containers_probes_and_services(overlay: str) -> None:
    objects = overlay_objects(overlay)
    for item in of_kind(objects, "Service"):
        workload = next(
            w
            for w in of_kind(objects, *WORKLOADS)
            if selects(item["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        )
        ports = [port for c in pod_spec(workload)["containers"] for port in c.get("ports", [])]
        for port in item["spec"]["ports"]:
            target = port["targetPort"]
            assert any(target in (p["name"], p["containerPort"]) for p in ports), (
                item["metadata"]["name"],
                target,
            )
    for _, _, container in containers(objects):
        ports = container.get("ports", [])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            for handler in ("grpc", "httpGet", "tcpSocket"):
                port = container.get(probe, {}).get(handler, {}).get("port")
                if port is not None:
                    assert any(port in (p["name"], p["containerPort"]) for p in ports), (
                        container["name"],
                        probe,
                    )
    for name in PROCESSES:
        _, container = service(objects, name)
        (port,) = container["ports"]
        setting = config_maps(objects, container)[f"MP_{name.upper()}_PORT"]
        assert (
            int(setting)
            == port["containerPort"]
            == (GATEWAY_PORT if name == "gateway" else GRPC_PORT)
        )
        assert config_maps(objects, container)[f"MP_{name.upper()}_HOST"] == "0.0.0.0"


def call_graph() -> set[tuple[str, str]]:
    """Who calls whom, read from the code: each `mesh.stub("x", ...)` or `mesh.channel("x")`
    of a service's package or the gateway's, and the gateway's readiness check of them all."""
    calls = re.compile(r"""\.(?:stub|channel)\(\s*"(\w+)\"""")
    edges = set()
    for caller in PROCESSES:
        folder = ROOT / ("gateway" if caller == "gateway" else f"services/{caller}")
        for path in folder.rglob("*.py"):
            edges |= {(caller, callee) for callee in calls.findall(path.read_text())}
    assert "for name in SERVICES" in (ROOT / "gateway" / "ops.py").read_text()  # /readyz
    return edges | {("gateway", name) for name in SERVICES}


def address_edges(objects: tuple[Object, ...]) -> set[tuple[str, str]]:
    """The calls the ConfigMaps make possible: each process and the services it has an address
    of, checked to name that service's Service on its gRPC port."""
    edges = set()
    for caller in PROCESSES:
        _, container = service(objects, caller)
        for key, address in config_maps(objects, container).items():
            found = re.fullmatch(r"MP_([A-Z]+)_ADDRESS", key)
            if not found:
                continue
            callee = found.group(1).lower()
            assert address == f"dns:///{callee}:{GRPC_PORT}", (caller, key, address)
            assert named(objects, "Service", callee)["spec"]["ports"][0]["port"] == GRPC_PORT
            edges.add((caller, callee))
    return edges


def policy_edges(objects: tuple[Object, ...], direction: str) -> set[tuple[str, str]]:
    """The pod-to-pod edges between MagicPixels processes that NetworkPolicies allow, in one
    direction, each on the gRPC port only."""
    edges = set()
    for policy in of_kind(objects, "NetworkPolicy"):
        spec = policy["spec"]
        own = spec["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        for rule in spec.get(direction, []):
            peers = rule.get("from" if direction == "ingress" else "to", [])
            for peer in peers:
                other = (
                    peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                )
                if own in PROCESSES and other in PROCESSES:
                    assert rule["ports"] == [{"protocol": "TCP", "port": GRPC_PORT}], policy[
                        "metadata"
                    ]["name"]
                    edges.add((other, own) if direction == "ingress" else (own, other))
    return edges


@every_overlay
def test_network_policies_allow_exactly_the_call_graph(overlay: str) -> None:
    objects = overlay_objects(overlay)
    graph = call_graph()
    assert address_edges(objects) == graph
    assert policy_edges(objects, "ingress") == graph
    assert policy_edges(objects, "egress") == graph
    deny_all = named(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny_all == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


@every_overlay
def test_pods_outlive_their_graceful_stop(overlay: str) -> None:
    """The kubelet kills a pod after terminationGracePeriodSeconds: longer than the preStop pause
    and the server's own grace (MP_GRACE_SECONDS), or in-flight calls are cut."""
    objects = overlay_objects(overlay)
    for name in PROCESSES:
        deployment, container = service(objects, name)
        grace = float(config_maps(objects, container)["MP_GRACE_SECONDS"])
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > pause + grace


@every_overlay
def test_every_process_writes_only_to_its_empty_dirs(overlay: str) -> None:
    objects = overlay_objects(overlay)
    for name in PROCESSES:
        deployment, container = service(objects, name)
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
        assert config_maps(objects, container)["MP_DATA_DIR"] == "/data"
        assert set(mounts) == {"/data", "/tmp"}
        assert all("emptyDir" in volumes[volume] for volume in mounts.values())


@every_overlay
def test_every_process_has_a_disruption_budget_and_its_own_account(overlay: str) -> None:
    objects = overlay_objects(overlay)
    for name in PROCESSES:
        deployment, _ = service(objects, name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budgets = [
            pdb
            for pdb in of_kind(objects, "PodDisruptionBudget")
            if selects(pdb["spec"]["selector"]["matchLabels"], labels)
        ]
        assert len(budgets) == 1, name
        assert pod_spec(deployment)["serviceAccountName"] == name
        named(objects, "ServiceAccount", name)


def test_production_autoscales_gateway_and_inference_and_runs_more_replicas() -> None:
    objects = overlay_objects("production")
    scaled = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa
        for hpa in of_kind(objects, "HorizontalPodAutoscaler")
    }
    assert sorted(scaled) == ["gateway", "inference"]
    for name, hpa in scaled.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["minReplicas"] >= 2
        assert "replicas" not in service(objects, name)[0]["spec"]  # the autoscaler's to set
    for name in DATABASE_SERVICES:
        assert service(objects, name)[0]["spec"]["replicas"] >= 2


def test_dev_runs_one_replica_of_everything_with_its_backing_services_inside() -> None:
    objects = overlay_objects("dev")
    assert not of_kind(objects, "HorizontalPodAutoscaler")
    for item in of_kind(objects, *WORKLOADS):
        assert item["spec"].get("replicas", 1) == 1, item["metadata"]["name"]
    assert {item["metadata"]["name"] for item in of_kind(objects, *WORKLOADS)} == {
        *PROCESSES,
        "postgres",
        "redis",
        "s3",
    }
    _, assets = service(objects, "assets")
    assert config_maps(objects, assets)["MP_ASSETS_S3_ENDPOINT_URL"] == "http://s3:9000"


@every_overlay
def test_every_secret_reference_is_rendered_in_dev_and_documented_for_production(
    overlay: str,
) -> None:
    objects = overlay_objects(overlay)
    references = {
        (
            variable["valueFrom"]["secretKeyRef"]["name"],
            variable["valueFrom"]["secretKeyRef"]["key"],
        )
        for _, _, container in containers(objects)
        for variable in container.get("env", [])
        if "secretKeyRef" in variable.get("valueFrom", {})
    }
    if overlay == "dev":
        for name, key in references:
            assert key in named(objects, "Secret", name)["data"], (name, key)
    else:
        assert not of_kind(objects, "Secret")  # the operator's, never the repository's
        guide = (ROOT / "docs" / "operations.md").read_text()
        for name, key in references:
            assert f"| `{name}` | `{key}` |" in guide, (name, key)


def test_production_migrates_in_a_job_before_services_that_refuse_to() -> None:
    objects = overlay_objects("production")
    job = named(objects, "Job", "migrate")
    (container,) = pod_spec(job)["containers"]
    assert container["args"] == ["migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    settings = config_maps(objects, container)
    urls = {variable["name"] for variable in container["env"]}
    for name in DATABASE_SERVICES:
        assert f"MP_{name.upper()}_DATABASE_URL" in urls
        _, service_container = service(objects, name)
        assert (
            config_maps(objects, service_container)[f"MP_{name.upper()}_MIGRATE_ON_START"]
            == "false"
        )
        assert settings.get(f"MP_{name.upper()}_DATABASE_SCHEMA") == config_maps(
            objects, service_container
        ).get(f"MP_{name.upper()}_DATABASE_SCHEMA")
    # What the Job needs is applied before it: `kubectl apply -l magicpixels/pre-rollout=true`.
    before = {
        (item["kind"], item["metadata"]["name"])
        for item in objects
        if item["metadata"].get("labels", {}).get("magicpixels/pre-rollout") == "true"
    }
    needed = {("Job", "migrate"), ("ServiceAccount", "migrate"), ("Namespace", "magicpixels")}
    needed |= {("ConfigMap", source["configMapRef"]["name"]) for source in container["envFrom"]}
    assert needed <= before
    assert not any(kind == "Deployment" for kind, _ in before)


@every_overlay
def test_the_ingress_routes_the_public_paths_to_the_gateway_and_no_other(overlay: str) -> None:
    objects = overlay_objects(overlay)
    (ingress,) = of_kind(objects, "Ingress")
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    for path in paths:
        assert path["backend"]["service"] == {"name": "gateway", "port": {"name": "http"}}
    routed = {path["path"] for path in paths}
    assert {"/v1", "/mcp", "/docs", "/openapi.json"} <= routed
    # What tells of queues, credits held and services' health stays inside the cluster.
    assert not any("/metrics".startswith(p) or "/readyz".startswith(p) for p in routed)
    assert named(objects, "Service", "gateway")["spec"]["ports"][0]["name"] == "http"
    gateway_policy = named(objects, "NetworkPolicy", "gateway")["spec"]["ingress"]
    assert gateway_policy[0]["ports"] == [{"protocol": "TCP", "port": GATEWAY_PORT}]


@every_overlay
def test_the_namespace_enforces_the_restricted_pod_security_standard(overlay: str) -> None:
    (namespace,) = of_kind(overlay_objects(overlay), "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(
        item["metadata"].get("namespace") == namespace["metadata"]["name"]
        for item in overlay_objects(overlay)
        if item["kind"] != "Namespace"
    )


@every_overlay
def test_the_gateway_counts_clients_behind_the_ingress_by_their_own_address(overlay: str) -> None:
    """Its rate limits per IP would otherwise count the ingress controller's pods: uvicorn
    trusts X-Forwarded-For from any peer, which only the ingress controller and scrapes are."""
    objects = overlay_objects(overlay)
    _, gateway = service(objects, "gateway")
    assert config_maps(objects, gateway)["FORWARDED_ALLOW_IPS"] == "*"
    admitted = named(objects, "NetworkPolicy", "gateway")["spec"]["ingress"]
    assert [rule["from"] for rule in admitted] == [
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    ]


@every_overlay
def test_the_gateway_may_fetch_mcp_uploads_from_public_addresses_only(overlay: str) -> None:
    objects = overlay_objects(overlay)
    egress = named(objects, "NetworkPolicy", "mcp-fetch-egress")["spec"]
    assert egress["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "gateway"
    (rule,) = egress["egress"]
    (block,) = rule["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(
        block["ipBlock"]["except"]
    )
