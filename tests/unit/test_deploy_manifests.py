"""deploy/compose and deploy/k8s: parse every manifest and check what would break a deployment.

No Docker engine or Kubernetes cluster is needed: the files are parsed and cross-checked
against the code (settings, metrics, health endpoint, the package layout the images copy).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from diskwatch.core.settings import Settings

yaml = pytest.importorskip("yaml", reason="PyYAML parses the deploy manifests (add pyyaml to the dev extra)")

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
K8S_DIR = REPO / "deploy" / "k8s"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILES = [COMPOSE_DIR / "Dockerfile", COMPOSE_DIR / "Dockerfile.gpu"]

METRICS_PORT = Settings.model_fields["metrics_port"].default
SETTING_VARS = {f"DISKWATCH_{name.upper()}": name for name in Settings.model_fields}
SECRET_FIELDS = {"redis_url", "kafka_sasl_password"}
REQUIRED_SERVICES = {"kafka", "redis", "worker", "prometheus", "grafana"}


# --------------------------------------------------------------------------------------------
# helpers


def yaml_files() -> list[Path]:
    files = [p for d in (COMPOSE_DIR, K8S_DIR) for p in d.rglob("*") if p.suffix in (".yml", ".yaml")]
    return sorted(files)


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


_INTERP = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} with an empty environment: the default ('' without one)."""
    if not isinstance(value, str):
        return value
    return _INTERP.sub(lambda m: m.group("default") or "", value).replace("$$", "$")


def settings_from(env: dict[str, Any]) -> Settings:
    """Settings built from these DISKWATCH_* values only (no process env, no .env file)."""
    kwargs = {SETTING_VARS[k]: interpolate(v) for k, v in env.items() if k in SETTING_VARS}
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.upper().startswith("DISKWATCH_")}
    try:
        return Settings(_env_file=None, **kwargs)  # type: ignore[call-arg]
    finally:
        os.environ.update(saved)


def assert_real_settings(keys: list[str] | set[str], where: str) -> None:
    unknown = sorted(k for k in keys if k.startswith("DISKWATCH_") and k not in SETTING_VARS)
    assert not unknown, f"{where}: not settings of diskwatch.settings.Settings: {unknown}"


def exposed_metric_names() -> set[str]:
    """Every sample name stream/metrics.py exposes (with the _total/_bucket/... suffixes)."""
    from prometheus_client.metrics import MetricWrapperBase

    from diskwatch.stream import metrics

    names: set[str] = set()
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        for family in obj.describe():
            if family.type == "counter":
                names |= {f"{family.name}_total", f"{family.name}_created"}
            elif family.type == "histogram":
                names |= {f"{family.name}{s}" for s in ("_bucket", "_sum", "_count", "_created")}
            else:
                names.add(family.name)
    return names


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


# --------------------------------------------------------------------------------------------
# every file parses


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(d, dict) for d in docs)


def test_there_are_manifests() -> None:
    names = {p.name for p in yaml_files()}
    assert {"docker-compose.yml", "prometheus.yml", "kustomization.yaml", "deployment.yaml"} <= names


# --------------------------------------------------------------------------------------------
# docker compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= REQUIRED_SERVICES
    kafka_env = services["kafka"]["environment"]
    assert interpolate(services["kafka"]["image"]).startswith("apache/kafka:")
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert not any("ZOOKEEPER" in k for k in kafka_env)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert interpolate(str(port)).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]
    env = worker["environment"]
    assert_real_settings(set(env), "docker-compose.yml worker environment")
    settings = settings_from(env)  # the values validate, too
    assert settings.metrics_port == METRICS_PORT

    # Talks to the compose services by name, on the ports they listen on.
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert "PLAINTEXT://kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert settings.redis_url.get_secret_value().startswith("redis://redis:6379/")

    # `diskwatch worker --model /bundle`, the bundle bind-mounted read-only.
    command = worker["command"]
    assert command[:1] == ["worker"] and command[command.index("--model") + 1] == "/bundle"
    mounts = [v for v in worker["volumes"] if isinstance(v, dict) and v["target"] == "/bundle"]
    assert len(mounts) == 1 and mounts[0]["read_only"] is True

    # N workers, never more than partitions.
    replicas = int(interpolate(str(worker["deploy"]["replicas"])))
    assert 1 <= replicas <= settings.topic_partitions
    assert str(METRICS_PORT) in [str(p) for p in worker["expose"]]

    # The image it builds exists and is one of ours.
    build = worker["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() in DOCKERFILES


def test_compose_topics_match_settings(compose: dict[str, Any]) -> None:
    settings = settings_from(compose["services"]["worker"]["environment"])
    script = "\n".join(compose["services"]["kafka-init"]["command"])
    topics = re.search(r"for topic in ([^;]+);", script)
    assert topics is not None
    assert set(topics.group(1).split()) == {settings.topic_telemetry, settings.topic_alerts,
                                            settings.topic_dead_letters}


def test_prometheus_scrapes_the_metrics_port(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    mount = next(v for v in prometheus["volumes"] if "prometheus.yml" in v)
    source, target = mount.split(":")[:2]
    assert (COMPOSE_DIR / source).resolve() == COMPOSE_DIR / "prometheus.yml"
    assert f"--config.file={target}" in prometheus["command"]

    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["diskwatch-worker"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    ports = [sd["port"] for sd in job.get("dns_sd_configs", [])]
    ports += [int(t.rsplit(":", 1)[1]) for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert ports and set(ports) == {METRICS_PORT}
    names = {n for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert names <= set(compose["services"]) and "worker" in names


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            assert (COMPOSE_DIR / source).is_dir(), f"grafana mounts missing {source}"
            mounts[target] = COMPOSE_DIR / source
    provisioning = mounts["/etc/grafana/provisioning"]

    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]

    (provider,) = yaml.safe_load((provisioning / "dashboards" / "diskwatch.yml").read_text())["providers"]
    dashboards_dir = mounts[provider["options"]["path"]]
    files = sorted(dashboards_dir.glob("*.json"))
    assert files
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).name in {f.name for f in files}
    for file in files:
        dashboard = json.loads(file.read_text())
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "diskwatch.json").read_text())


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_metrics_exist(dashboard: dict[str, Any]) -> None:
    exposed = exposed_metric_names()
    assert "diskwatch_records_in_total" in exposed and "diskwatch_inference_seconds_bucket" in exposed
    used = {name for expr in dashboard_exprs(dashboard) for name in re.findall(r"\bdiskwatch_[a-z0-9_]+", expr)}
    assert used, "the dashboard queries no diskwatch metric"
    unknown = sorted(used - exposed)
    assert not unknown, f"dashboard queries metrics stream/metrics.py does not expose: {unknown}"


def test_dashboard_panels(dashboard: dict[str, Any]) -> None:
    exprs = "\n".join(dashboard_exprs(dashboard))
    for wanted in (
        "rate(diskwatch_records_in_total[1m])",
        "rate(diskwatch_windows_scored_total[",
        "rate(diskwatch_alerts_total[",
        "sum by (reason) (rate(diskwatch_records_invalid_total[",
        "diskwatch_consumer_lag",
        "histogram_quantile(0.5, sum by (le) (rate(diskwatch_inference_seconds_bucket[",
        "histogram_quantile(0.99, sum by (le) (rate(diskwatch_inference_seconds_bucket[",
        "histogram_quantile(0.99, sum by (le) (rate(diskwatch_redis_seconds_bucket[",
        "diskwatch_batch_size_bucket",
    ):
        assert wanted in exprs, f"no panel queries {wanted}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for expr in dashboard_exprs(dashboard):
        assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]"), expr


# --------------------------------------------------------------------------------------------
# Dockerfiles


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile(path: Path) -> None:
    steps = dockerfile_instructions(path)
    ignore = path.with_name(path.name + ".dockerignore")
    allowed = {line[1:].strip().rstrip("/") for line in ignore.read_text().splitlines() if line.startswith("!")}

    copies = [args for word, args in steps if word == "COPY" and "--from=" not in args]
    assert copies
    for args in copies:
        *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"{path.name}: COPY {source} does not exist"
            assert source.rstrip("/") in allowed, f"{path.name}: {source} is excluded by {ignore.name}"
    # What pip installs must be what pyproject packages.
    packages = {args.split()[0].rstrip("/") for args in copies if not args.startswith("pyproject")}
    assert {"diskwatch", "stream", "models"} <= packages

    exposed = [int(p.split("/")[0]) for word, args in steps if word == "EXPOSE" for p in args.split()]
    assert exposed == [METRICS_PORT]
    (health,) = [args for word, args in steps if word == "HEALTHCHECK"]
    assert "/healthz" in health and (str(METRICS_PORT) in health)
    env = " ".join(args for word, args in steps if word == "ENV")
    assert f"DISKWATCH_METRICS_PORT={METRICS_PORT}" in env
    assert "WEB_BIND=0.0.0.0" in env  # else /metrics is only reachable from inside the container

    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    assert any(word == "USER" for word, _ in steps[last_from:]), "final stage runs as root"

    (entrypoint,) = [json.loads(args) for word, args in steps if word == "ENTRYPOINT"]
    (cmd,) = [json.loads(args) for word, args in steps if word == "CMD"]
    assert entrypoint + cmd == ["diskwatch", "worker", "--model", "/bundle"]

    run = " ".join(args for word, args in steps if word == "RUN")
    if path.name == "Dockerfile":
        assert "pip install ." in run and "[train]" not in run  # the worker image stays lean
        assert "python:3.11-slim" in path.read_text()
    else:
        assert "jax[cuda12]" in run and "KERAS_BACKEND=jax" in env


def test_web_bind_variable_reaches_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    """The images and the Deployment set WEB_BIND/APP_DATADIR; faust must honour them over create_app."""
    from diskwatch.stream.app import create_app

    monkeypatch.setenv("WEB_BIND", "0.0.0.0")
    monkeypatch.setenv("APP_DATADIR", "/tmp/faust-data")
    app, _ = create_app(settings_from({}), REPO / "no-bundle")
    assert app.conf.web_bind == "0.0.0.0"
    assert str(app.conf.datadir) == "/tmp/faust-data"
    assert app.conf.web_port == METRICS_PORT


# --------------------------------------------------------------------------------------------
# Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, for every manifest under deploy/k8s (templates included)."""
    objects = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in load_all(path):
            if doc.get("kind") == "Kustomization":
                continue
            objects[(doc["kind"], doc["metadata"]["name"])] = doc | {"_file": path.name}
    return objects


def one(k8s: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for (k, _), obj in k8s.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    for resource in resources:
        assert (K8S_DIR / resource).is_file(), resource
    expected = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    templates = {name for name in expected if ".template." in name}
    assert templates, "the Secret template is missing"
    assert set(resources) == expected - templates  # templates hold placeholders: never applied


def test_deployment(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = one(k8s, "Deployment")
    config = one(k8s, "ConfigMap")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = spec["containers"]

    # Replicas never exceed the partitions that would feed them.
    settings = settings_from(config["data"])
    assert 1 <= deployment["spec"]["replicas"] <= settings.topic_partitions

    # Probes: /healthz on the metrics port.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == METRICS_PORT == settings.metrics_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        port = get["port"]
        assert (ports[port] if isinstance(port, str) else port) == METRICS_PORT, probe

    # Configuration from the ConfigMap and the Secret; WEB_BIND so probes reach the web server.
    refs = {(k, v["name"]) for ref in container["envFrom"] for k, v in ref.items()}
    assert ("configMapRef", config["metadata"]["name"]) in refs
    assert ("secretRef", one(k8s, "Secret")["metadata"]["name"]) in refs
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["WEB_BIND"] == "0.0.0.0"
    assert_real_settings(set(env), "Deployment env")

    # `diskwatch worker --model <path>` with <path> on a read-only bundle volume.
    command = container["command"]
    assert command[:2] == ["diskwatch", "worker"]
    model = command[command.index("--model") + 1]
    mount = next(m for m in container["volumeMounts"] if model == m["mountPath"]
                 or model.startswith(m["mountPath"].rstrip("/") + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    assert ("PersistentVolumeClaim", claim["claimName"]) in k8s

    # Resources.
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind


def test_deployment_security(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    spec = one(k8s, "Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    pod_sc, sc = spec["securityContext"], container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert sc.get("runAsUser", pod_sc["runAsUser"]) != 0
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    assert spec["automountServiceAccountToken"] is False

    # A read-only root needs writable scratch space where faust, Keras and matplotlib write.
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert "/tmp" in writable
    volumes = {v["name"]: v for v in spec["volumes"]}
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    for name in ("APP_DATADIR", "HOME", "MPLCONFIGDIR"):
        assert any(env[name] == w or env[name].startswith(w + "/") for w in writable), name
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    cafile = one(k8s, "ConfigMap")["data"].get("DISKWATCH_KAFKA_SSL_CAFILE")
    if cafile:
        assert any(cafile.startswith(m + "/") for m in mounts), "the Kafka CA file is not mounted"


def test_configmap_and_secret(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    data = one(k8s, "ConfigMap")["data"]
    assert_real_settings(set(data), "ConfigMap")
    assert all(k.startswith("DISKWATCH_") for k in data)
    assert not {SETTING_VARS[k] for k in data} & SECRET_FIELDS, "secrets belong in the Secret"
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"

    secret = one(k8s, "Secret")
    assert secret["_file"].endswith(".template.yaml")
    values = secret["stringData"]
    assert_real_settings(set(values), "Secret template")
    assert {SETTING_VARS[k] for k in values} == SECRET_FIELDS
    for key, value in values.items():
        assert re.search(r"<[a-z-]+>", value), f"{key} must be a placeholder, got {value!r}"
    # Together they make valid settings (the placeholders stand in for real passwords).
    settings = settings_from(data | {k: v.replace("<", "").replace(">", "") for k, v in values.items()})
    assert settings.redis_url.get_secret_value().startswith("rediss://")
    assert "redis-password" not in json.dumps(settings.redacted())


def test_service_and_pdb_select_the_workers(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = one(k8s, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}

    service = one(k8s, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == METRICS_PORT and port["targetPort"] in port_names | {METRICS_PORT}

    pdb = one(k8s, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    if "maxUnavailable" in pdb["spec"]:
        assert pdb["spec"]["maxUnavailable"] >= 1
    else:
        assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
