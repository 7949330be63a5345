"""The Kubernetes manifests (deploy/k8s), rendered per overlay and checked offline:
against the API schemas of a pinned Kubernetes version, and against each other
and the app (selectors, ports, probes, settings, secrets, budgets, autoscaling)."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest

from statelab.config import Settings, build_settings
from statelab.web.app import create_app
from tests.deploy.render import (
    KUBERNETES_VERSION,
    OVERLAYS,
    ROOT,
    Obj,
    cli_envvars,
    command_of,
    containers,
    environment,
    label,
    named,
    of_kind,
    pod_spec,
    render,
    setting_envvars,
    shop_settings,
    statelab_containers,
    workloads,
)

#: Variables that programs other than statelab's settings read, and which ones.
OTHER_PROGRAMS_ENV = {
    "PGPASSWORD": "asyncpg, when the database URL names no password",
    "AWS_ACCESS_KEY_ID": "the S3 client of the object store (obstore)",
    "AWS_SECRET_ACCESS_KEY": "the S3 client of the object store (obstore)",
    "AWS_REGION": "the S3 client of the object store (obstore)",
    "AWS_ENDPOINT_URL": "the S3 client of the object store (obstore)",
}
SECRET_LOOKING = re.compile(r"SECRET|PASSWORD|TOKEN|_KEY\b|_KEY_|KEYS$", re.IGNORECASE)

overlays = pytest.mark.parametrize("overlay", OVERLAYS)


def test_every_overlay_is_here() -> None:
    assert {"stateless", "stateful", "managed"} <= set(OVERLAYS)


@overlays
def test_objects_are_valid_for_the_pinned_kubernetes(overlay: str) -> None:
    problems = []
    for obj in render(overlay):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            problems.append(f"{label(obj)} at {where}: {exc.message}")
    assert problems == []


def test_the_schema_check_rejects_an_unknown_field() -> None:
    deployment = named(render("stateless"), "Deployment", "statelab-shop")
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)


# -- selectors, ports, probes -----------------------------------------------------------


def _selects(selector: dict[str, str], workload: Obj) -> bool:
    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    return all(labels.get(k) == v for k, v in selector.items())


def _selected(objects: tuple[Obj, ...], selector: dict[str, str]) -> list[Obj]:
    return [w for w in workloads(objects) if _selects(selector, w)]


@overlays
def test_workload_selectors_match_their_pod_labels(overlay: str) -> None:
    for workload in of_kind(render(overlay), "Deployment", "StatefulSet"):
        assert _selects(workload["spec"]["selector"]["matchLabels"], workload), label(workload)


@overlays
def test_services_and_budgets_select_exactly_one_workload(overlay: str) -> None:
    objects = render(overlay)
    for service in of_kind(objects, "Service"):
        chosen = _selected(objects, service["spec"]["selector"])
        assert len(chosen) == 1, f"{label(service)} selects {[label(w) for w in chosen]}"
    for budget in of_kind(objects, "PodDisruptionBudget"):
        chosen = _selected(objects, budget["spec"]["selector"]["matchLabels"])
        assert len(chosen) == 1, f"{label(budget)} selects {[label(w) for w in chosen]}"


def _port_names(workload: Obj) -> dict[str, int]:
    return {
        port["name"]: port["containerPort"]
        for container in containers(workload)
        for port in container.get("ports", [])
    }


@overlays
def test_service_ports_are_ports_of_their_pods(overlay: str) -> None:
    objects = render(overlay)
    for service in of_kind(objects, "Service"):
        (workload,) = _selected(objects, service["spec"]["selector"])
        names = _port_names(workload)
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in names or target in names.values(), f"{label(service)}: {target}"


@overlays
def test_the_ingress_reaches_a_port_of_a_service(overlay: str) -> None:
    objects = render(overlay)
    for ingress in of_kind(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = named(objects, "Service", backend["name"])
                ports = {p["name"] for p in service["spec"]["ports"]}
                assert backend["port"]["name"] in ports, label(ingress)


@pytest.fixture(scope="module")
def app_paths(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    folder = tmp_path_factory.mktemp("app")
    settings = build_settings(
        profile="stateful", database_url=f"sqlite:///{folder / 'x.db'}", data_dir=folder
    )
    return set(create_app(settings).openapi()["paths"])


@overlays
def test_probes_ask_the_app_on_its_port(overlay: str, app_paths: set[str]) -> None:
    objects = render(overlay)
    checked = 0
    for workload, container in statelab_containers(objects):
        env = environment(objects, container)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(kind, {}).get("httpGet")
            if probe is None:
                continue
            assert probe["path"] in app_paths, f"{label(workload)} {kind}: {probe['path']}"
            assert ports[probe["port"]] == int(env["STATELAB_PORT"]), f"{label(workload)} {kind}"
            checked += 1
    assert checked >= 3


@overlays
def test_replicas_are_probed_for_readiness_and_liveness(overlay: str) -> None:
    shop = named(render(overlay), "Deployment", "statelab-shop")
    (container,) = pod_spec(shop)["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


# -- settings and secrets ---------------------------------------------------------------


@overlays
def test_every_variable_is_read_by_someone(overlay: str) -> None:
    objects = render(overlay)
    for workload, container in statelab_containers(objects):
        known = setting_envvars() | cli_envvars(command_of(container)) | set(OTHER_PROGRAMS_ENV)
        names = {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            names |= set(named(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        assert names - known == set(), f"{label(workload)}: nothing reads these"


@overlays
def test_the_secret_key_is_referenced_never_written(overlay: str) -> None:
    objects = render(overlay)
    assert of_kind(objects, "Secret") == [], "Secrets are created by the user, not shipped"
    for workload, container in statelab_containers(objects):
        if command_of(container) == "migrate":
            continue  # signs nothing
        (entry,) = [e for e in container["env"] if e["name"] == "STATELAB_SECRET_KEY"]
        assert entry["valueFrom"]["secretKeyRef"]["name"] == "statelab-secret", label(workload)


@overlays
def test_no_secret_is_written_into_the_manifests(overlay: str) -> None:
    objects = render(overlay)
    for workload in workloads(objects):
        for container in containers(workload):
            for entry in container.get("env", []):
                if SECRET_LOOKING.search(entry["name"]):
                    assert "valueFrom" in entry, f"{label(workload)}: {entry['name']}"
    for config in of_kind(objects, "ConfigMap"):
        for key, value in config.get("data", {}).items():
            assert not SECRET_LOOKING.search(key), f"{label(config)}: {key}"
            assert not re.search(r"://[^/@\s]*:[^/@\s]+@", value), f"{label(config)}: {key}"


# -- lifecycle --------------------------------------------------------------------------


@overlays
def test_a_rollout_never_drops_a_ready_replica(overlay: str) -> None:
    shop = named(render(overlay), "Deployment", "statelab-shop")
    assert shop["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@overlays
def test_the_grace_period_covers_the_whole_stop(overlay: str) -> None:
    objects = render(overlay)
    shop = named(objects, "Deployment", "statelab-shop")
    (container,) = pod_spec(shop)["containers"]
    env = environment(objects, container)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(env["STATELAB_DRAIN_SECONDS"])
    in_flight = float(env["STATELAB_GRACEFUL_TIMEOUT_SECONDS"])
    assert pre_stop >= 1, "endpoints need a moment to drop the pod before SIGTERM"
    assert pod_spec(shop)["terminationGracePeriodSeconds"] > pre_stop + drain + in_flight


@overlays
def test_every_container_is_locked_down(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        spec = pod_spec(workload)
        assert spec.get("automountServiceAccountToken") is False, label(workload)
        for container in containers(workload):
            where = f"{label(workload)}/{container['name']}"
            context = container["securityContext"]
            non_root = context.get("runAsNonRoot", spec["securityContext"].get("runAsNonRoot"))
            assert non_root is True, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where


# -- what belongs where -----------------------------------------------------------------


@overlays
def test_every_overlay_keeps_one_disruption_budget_for_the_shop(overlay: str) -> None:
    budget = named(render(overlay), "PodDisruptionBudget", "statelab-shop")
    assert budget["spec"]["maxUnavailable"] == 1


@overlays
def test_autoscaling_only_where_any_replica_serves_anyone(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(overlay)
    scalers = of_kind(objects, "HorizontalPodAutoscaler")
    shop = named(objects, "Deployment", "statelab-shop")
    if shop_settings(overlay, monkeypatch).profile == "stateful":
        assert scalers == [], "a stateful replica scaled in takes its users' state"
        assert shop["spec"]["replicas"] >= 2
        return
    (scaler,) = scalers
    assert scaler["spec"]["scaleTargetRef"]["name"] == "statelab-shop"
    assert [m["resource"]["name"] for m in scaler["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in shop["spec"], "the autoscaler owns the replica count"


@overlays
def test_sticky_routing_only_for_the_stateful_profile(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(overlay)
    service = named(objects, "Service", "statelab-shop")
    ingress = named(objects, "Ingress", "statelab-shop")
    annotations = ingress["metadata"].get("annotations", {})
    sticky = shop_settings(overlay, monkeypatch).profile == "stateful"
    assert (service["spec"].get("sessionAffinity") == "ClientIP") is sticky
    assert (annotations.get("nginx.ingress.kubernetes.io/affinity") == "cookie") is sticky


@overlays
def test_a_worker_exactly_where_jobs_are_queued(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(overlay)
    workers = [w for w, c in statelab_containers(objects) if command_of(c) == "worker"]
    queued = shop_settings(overlay, monkeypatch).placements["jobs"] == "queue"
    assert len(workers) == (1 if queued else 0)


@overlays
def test_every_replica_sees_the_same_uploads(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = shop_settings(overlay, monkeypatch)
    if settings.placements["files"] == "disk":
        return  # the stateful placement: each replica's own folder, by design
    url = settings.object_store_url or ""
    objects = render(overlay)
    if url.startswith("file://"):
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for w in workloads(objects)
            for v in pod_spec(w).get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        (claim,) = claims
        assert named(objects, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == [
            "ReadWriteMany"
        ]
    else:
        assert url.startswith("s3://") or url == "", url


@overlays
def test_the_ingress_admits_the_largest_upload(overlay: str) -> None:
    ingress = named(render(overlay), "Ingress", "statelab-shop")
    size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", size.lower()).groups()  # type: ignore[union-attr]
    allowed = int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]
    largest = int(Settings.model_fields["max_upload_bytes"].default)
    assert allowed > largest


def test_stores_only_in_the_overlays_that_run_them() -> None:
    def sets(overlay: str) -> set[str]:
        return {s["metadata"]["name"] for s in of_kind(render(overlay), "StatefulSet")}

    assert sets("stateless") == {"statelab-postgres", "statelab-redis"}
    assert sets("stateful") == {"statelab-postgres"}
    assert sets("managed") == set()


def test_the_readme_tells_how_to_create_every_secret_key() -> None:
    readme = (ROOT / "README.md").read_text()
    for overlay in OVERLAYS:
        for workload in workloads(render(overlay)):
            for container in containers(workload):
                for entry in container.get("env", []):
                    ref = entry.get("valueFrom", {}).get("secretKeyRef")
                    if ref is None or ref.get("optional"):
                        continue
                    assert f"secret generic {ref['name']} " in readme, ref["name"]
                    assert f"--from-literal={ref['key']}=" in readme, ref["key"]
