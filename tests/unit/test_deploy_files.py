"""The deploy/ and grafana/ files parse, agree with each other and with the code.

Docker, Kubernetes and Grafana do not run here, so these checks read the files: names,
ports, paths, environment variables and metric names must be the ones the code really uses.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from streamlstm import config
from streamlstm.cli import BUNDLED_MODEL
from streamlstm.core.calibration import CalibrationSettings
from streamlstm.metrics import Metrics
from tests.dashboard_queries import (
    KNOWN_DATASOURCES,
    annotation_queries,
    iter_panels,
    panel_queries,
    substitute,
    template_queries,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GRAFANA = ROOT / "grafana"
K8S = DEPLOY / "kubernetes"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = GRAFANA / "prometheus" / "streamlstm-rules.yml"
ALERTING = GRAFANA / "provisioning" / "alerting" / "streamlstm-anomaly.yaml"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "streamlstm.yaml"
DASHBOARD_PROVIDER = GRAFANA / "provisioning" / "dashboards" / "streamlstm.yaml"

DEFAULTS = config.Settings()
METRICS_PORT = DEFAULTS.metrics.port
INFLUX_MEASUREMENT = DEFAULTS.influx.measurement
# The one tag is the series (a point is measurement + series + time); the rest are fields.
SYSTEMD_STATE_ROOT = "/var/lib"  # where systemd puts a unit's StateDirectory= folders
INFLUX_TAGS = {"series"}
INFLUX_FIELDS = {"value", "score", "error", "novelty", "threshold", "is_anomaly", "alarm",
                 "model_version", "surprise_model", "surprise_memory", "surprise_seasonal",
                 "surprise_coarse"}
INFLUX_MULTI_FEATURE_FIELDS = {"top_feature", "value_1"}  # only from multi-feature models
# influxdb-client's own variables (InfluxDBClient.from_env_properties) that config maps.
INFLUX_CLIENT_ENV = {k for k in config.ENVIRONMENT_KEYS if k.startswith("INFLUXDB_V2_")}
# Interpreter and image plumbing, not settings.
RUNTIME_ENV = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
KNOWN_ENV = set(config.ENVIRONMENT_KEYS) | INFLUX_CLIENT_ENV | RUNTIME_ENV

COMPOSE_SERVICES = {"kafka", "influxdb", "influxdb-tokens", "prometheus", "grafana", "streamlstm",
                    "producer", "model-init", "trainer"}
RUNBOOK_BASE = "https://github.com/streamlstm/streamlstm/blob/main/deploy/runbook.md"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _yaml_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _compose() -> dict[str, Any]:
    return _yaml(DEPLOY / "docker-compose.yml")


def _k8s(name: str) -> dict[str, Any]:
    return _yaml(K8S / name)


def _container() -> dict[str, Any]:
    deployment = _k8s("deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port of a compose service's ``ports``."""
    out: dict[int, int] = {}
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        out[int(container.split("/")[0])] = int(host.rpartition(":")[2])
    return out


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source of a compose service's short-syntax volumes."""
    out: dict[str, str] = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        out[target] = source
    return out


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def known_metric_names() -> set[str]:
    """Every series name the daemon can expose (with per-series labels on)."""
    registry = CollectorRegistry()
    Metrics(registry, per_series_labels=True)
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_count", "_sum", "_created")}
        elif family.type == "gauge" and family.name.endswith("_info"):
            names.add(family.name)
    return names


def _board_queries(board: dict[str, Any]) -> list[Any]:
    """Every query Grafana runs for ``board``: panels, variables and annotations."""
    return panel_queries(board) + template_queries(board) + annotation_queries(board)


def rule_expressions() -> list[tuple[str, str]]:
    out = []
    for group in _yaml(RULES)["groups"]:
        for rule in group["rules"]:
            out.append((rule.get("alert") or rule["record"], rule["expr"]))
    return out


def dashboard_promql() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        for q in _board_queries(board):
            if q.kind == "promql":
                out.append((f"{path.name}: {q.panel_title}", q.query))
    return out


def dashboard_influxql() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        for q in _board_queries(board):
            if q.kind == "influxql":
                out.append((f"{path.name}: {q.panel_title}", q.query))
    return out


# ---------------------------------------------------------------------------- everything parses


@pytest.mark.parametrize(
    "path",
    sorted(p for d in (DEPLOY, GRAFANA) for p in d.rglob("*")
           if p.suffix in (".yml", ".yaml", ".json")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_yaml_and_json_file_parses(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        json.loads(text)
    else:
        assert _yaml_all(path), f"{path} is empty"


# ---------------------------------------------------------------------------- docker compose


def test_compose_names_the_services_and_their_ports() -> None:
    services = _compose()["services"]
    assert set(services) >= COMPOSE_SERVICES
    assert _published(services["streamlstm"]) == {METRICS_PORT: METRICS_PORT}
    assert _published(services["influxdb"]) == {8086: 8086}
    assert _published(services["prometheus"]) == {9090: 9090}
    assert _published(services["grafana"]) == {3000: 3000}
    assert 9094 in _published(services["kafka"])
    # Published on localhost only unless BIND_ADDRESS says otherwise.
    for name, service in services.items():
        for entry in service.get("ports", []):
            assert str(entry).startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, entry)
    kafka_env = services["kafka"]["environment"]
    assert "PLAINTEXT://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper


def test_compose_runs_the_daemon_with_the_example_config() -> None:
    services = _compose()["services"]
    daemon = services["streamlstm"]
    assert daemon["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / daemon["build"]["context"] / daemon["build"]["dockerfile"]).is_file()
    (command,) = daemon["command"]
    config_path = re.search(r"exec streamlstm run --config (\S+)$", command).group(1)
    mounts = _mounts(daemon)
    assert mounts[config_path] == "./streamlstm.example.yaml"
    model_path = daemon["environment"]["STREAMLSTM_MODEL_PATH"]
    assert mounts[model_path] == "models"
    depends = daemon["depends_on"]
    assert depends["influxdb-tokens"]["condition"] == "service_completed_successfully"
    # The producer replays the bundled data into the daemon's topic on the compose broker.
    producer = services["producer"]["command"]
    assert producer[0] == "produce"
    assert producer[producer.index("--topic") + 1] == DEFAULTS.kafka.topic
    assert producer[producer.index("--bootstrap") + 1] == "kafka:9092"
    for arg in producer:
        if arg.startswith("/opt/streamlstm/data/"):
            assert (ROOT / "streamlstm" / "data" / Path(arg).name).is_file(), arg


def test_compose_first_start_installs_the_bundled_model_not_a_training_run() -> None:
    services = _compose()["services"]
    daemon, init = services["streamlstm"], services["model-init"]
    model_path = daemon["environment"]["STREAMLSTM_MODEL_PATH"]
    assert init["command"] == ["models", "init", "--models", model_path]
    assert _mounts(init)[model_path] == "models"
    assert daemon["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    # Nothing trains on the replayed NAB files (they hold the labelled anomalies) by default:
    # the trainer is behind a profile, and takes the user's own history.
    assert services["trainer"]["profiles"] == ["train"]
    for name, service in services.items():
        text = json.dumps(service)
        if name != "trainer":
            assert " train " not in f" {text} " and '"train"' not in text, name
        assert not ("train" in text and "/opt/streamlstm/data" in text), name


def test_compose_keeps_kafka_models_and_checkpoints_on_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    kafka = services["kafka"]
    log_dir = kafka["environment"]["KAFKA_LOG_DIRS"]
    assert _mounts(kafka)[log_dir] == "kafka-data"
    assert kafka["environment"]["CLUSTER_ID"]  # the same cluster finds its data after a restart
    daemon = services["streamlstm"]
    settings = config.load(DEPLOY / "streamlstm.example.yaml",
                           {k: str(v) for k, v in daemon["environment"].items()})
    assert settings.checkpoint.store == "directory"
    checkpoints = (Path(settings.checkpoint.directory) if settings.checkpoint.directory
                   else Path(settings.model.path).parent / "checkpoints")
    assert _mounts(daemon)[str(checkpoints)] == "checkpoints"
    assert {"kafka-data", "models", "checkpoints"} <= set(compose["volumes"])
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert str(checkpoints) in re.search(r"^VOLUME (.*)$", dockerfile, re.MULTILINE).group(1)


def test_compose_pins_every_image_tag() -> None:
    for name, service in _compose()["services"].items():
        image = service.get("image")
        if image and "build" not in service:
            repository, _, tag = image.rpartition(":")
            assert repository and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), (name, image)


def test_compose_daemon_settings_point_at_the_compose_services() -> None:
    daemon = _compose()["services"]["streamlstm"]
    env = {k: str(v) for k, v in daemon["environment"].items()}
    settings = config.load(DEPLOY / "streamlstm.example.yaml", env)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.influx.url == "http://influxdb:8086"
    assert settings.metrics.port == METRICS_PORT
    assert "INFLUXDB_V2_TOKEN" not in env  # read from its token volume at start


def test_compose_influxdb_has_the_bucket_and_a_dbrp_mapping() -> None:
    services = _compose()["services"]
    env = services["influxdb"]["environment"]
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert env["DOCKER_INFLUXDB_INIT_BUCKET"] == DEFAULTS.influx.bucket
    assert env["DOCKER_INFLUXDB_INIT_ORG"] == DEFAULTS.influx.org
    init_dir = _mounts(services["influxdb"])["/docker-entrypoint-initdb.d"]
    scripts = sorted((DEPLOY / init_dir).glob("*.sh"))
    assert scripts, "no init script"
    text = "\n".join(s.read_text(encoding="utf-8") for s in scripts)
    assert "influx v1 dbrp create" in text
    assert all(os.access(s, os.X_OK) for s in scripts), "run-parts skips non-executable scripts"


def test_compose_daemon_writes_and_grafana_reads_with_their_own_tokens() -> None:
    services = _compose()["services"]
    admin = services["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    tokens = services["influxdb-tokens"]
    assert tokens["environment"]["INFLUX_TOKEN"] == admin
    assert tokens["environment"]["BUCKET"] == DEFAULTS.influx.bucket
    script_path = next(t for t, s in _mounts(tokens).items() if s.endswith(".sh"))
    assert tokens["entrypoint"][-1] == script_path
    script = (DEPLOY / _mounts(tokens)[script_path]).read_text(encoding="utf-8")
    assert re.search(r"^create daemon --write-bucket \S+$", script, re.MULTILINE)
    assert re.search(r"^create grafana --read-bucket \S+", script, re.MULTILINE)
    assert "--all-access" not in script and "--operator" not in script
    for consumer, variable, volume in (("streamlstm", "INFLUXDB_V2_TOKEN", "influxdb-token-daemon"),
                                       ("grafana", "INFLUXDB_TOKEN", "influxdb-token-grafana")):
        service = services[consumer]
        assert variable not in service["environment"], consumer
        assert admin not in json.dumps(service), f"{consumer} holds the admin token"
        (command,) = service["command"]
        token_file = re.search(rf'{variable}="\$\$\(cat (\S+)\)"', command).group(1)
        directory = str(Path(token_file).parent)
        assert _mounts(service)[directory] == volume, consumer
        assert f"{volume}:{directory}:ro" in service["volumes"], consumer
        assert _mounts(tokens)[directory] == volume  # where the script writes it
        assert f"/run/streamlstm-tokens/{Path(directory).name}/token" == token_file
        # No other consumer mounts this token's volume.
        others = [n for n, s in services.items()
                  if n not in (consumer, "influxdb-tokens") and volume in _mounts(s).values()]
        assert not others, (volume, others)


def test_compose_grafana_sets_every_variable_the_provisioning_uses() -> None:
    services = _compose()["services"]
    grafana = services["grafana"]
    env = grafana["environment"]
    used = set()
    for path in (GRAFANA / "provisioning").rglob("*.yaml"):
        text = re.sub(r"^\s*#.*$", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
        used |= set(re.findall(r"\$\{(\w+)\}", text))
    assert used, "the datasources should come from the environment"
    (command,) = grafana["command"]
    from_command = set(re.findall(r'(\w+)="\$\$\(cat ', command))
    assert used <= set(env) | from_command, (
        f"not set for grafana: {sorted(used - set(env) - from_command)}")
    assert env["INFLUXDB_DB"] == DEFAULTS.influx.bucket
    assert env["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert env["INFLUXDB_URL"] == "http://influxdb:8086"
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "../grafana/provisioning"
    provider_path = _yaml(DASHBOARD_PROVIDER)["providers"][0]["options"]["path"]
    assert provider_path == "/var/lib/grafana/dashboards/streamlstm"
    assert mounts[provider_path] == "../grafana/dashboards"
    for source in mounts.values():
        if source.startswith("."):
            assert (DEPLOY / source).exists(), source


def test_prometheus_scrapes_the_daemon_and_loads_the_rules() -> None:
    prom = _yaml(DEPLOY / "prometheus.yml")
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "streamlstm"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"streamlstm:{METRICS_PORT}"]
    # Alert rules select job="streamlstm".
    assert all('job="streamlstm"' in expr for name, expr in rule_expressions()
               if name.startswith("Streamlstm") and name != "StreamlstmAbsent")
    mounts = _mounts(_compose()["services"]["prometheus"])
    rules_in_container = [t for t, s in mounts.items() if s.endswith("streamlstm-rules.yml")]
    assert rules_in_container
    patterns = prom["rule_files"]
    assert any(Path(rules_in_container[0]).match(p) for p in patterns)
    assert (DEPLOY / mounts[rules_in_container[0]]).resolve() == RULES


def test_prometheus_rules_test_file_is_not_loaded_as_rules() -> None:
    mounts = _mounts(_compose()["services"]["prometheus"])
    assert not any(s.endswith(".test.yml") for s in mounts.values())


# ---------------------------------------------------------------------------- environment


def _env_names_everywhere() -> dict[str, set[str]]:
    compose = _compose()["services"]
    found = {
        "compose streamlstm": set(compose["streamlstm"]["environment"]),
        "compose trainer": set(compose["trainer"].get("environment", {})),
        "k8s deployment": {e["name"] for e in _container().get("env", [])},
    }
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    runtime_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    env_block = re.findall(r"^ENV ((?:.*\\\n)*.*)$", runtime_stage, re.MULTILINE)
    found["Dockerfile"] = {m for block in env_block for m in re.findall(r"(\w+)=", block)}
    unit = (DEPLOY / "systemd" / "streamlstm.service").read_text(encoding="utf-8")
    found["systemd unit"] = set(re.findall(r"^Environment=(\w+)=", unit, re.MULTILINE))
    env_file = (DEPLOY / "systemd" / "streamlstm.env.example").read_text(encoding="utf-8")
    found["systemd env file"] = set(re.findall(r"^#?(\w+)=", env_file, re.MULTILINE))
    return found


@pytest.mark.parametrize("where", sorted(_env_names_everywhere()))
def test_every_environment_variable_set_for_the_daemon_is_one_it_reads(where: str) -> None:
    names = _env_names_everywhere()[where]
    unknown = names - KNOWN_ENV
    assert not unknown, f"{where} sets variables streamlstm does not read: {sorted(unknown)}"


def test_k8s_token_comes_from_a_secret() -> None:
    env = {e["name"]: e for e in _container()["env"]}
    ref = env["INFLUXDB_V2_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "streamlstm-influxdb" and ref["key"] == "token"
    assert config.ENVIRONMENT_KEYS["INFLUXDB_V2_TOKEN"] == "influx.token"
    secret = _k8s("secret.example.yaml")
    assert secret["metadata"]["name"] == ref["name"] and ref["key"] in secret["stringData"]


# ---------------------------------------------------------------------------- kubernetes


def test_k8s_deployment_probes_ports_and_config() -> None:
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    spec = _k8s("deployment.yaml")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["terminationGracePeriodSeconds"] >= 30
    args = container["args"]
    assert args[:2] == ["run", "--config"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert args[2] == mounts["config"] + "/streamlstm.yaml"
    assert volumes["config"]["configMap"]["name"] == "streamlstm-config"
    kustomization = _k8s("kustomization.yaml")
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "streamlstm-config"
    assert generator["files"] == ["streamlstm.yaml"]
    settings = config.load(K8S / "streamlstm.yaml", {})
    assert settings.metrics.port == METRICS_PORT
    assert settings.model.path == mounts["models"]
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == _k8s("pvc.yaml")[
        "metadata"]["name"]


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi)", quantity).groups()
    return float(number) * units[unit]


def test_k8s_memory_follows_the_documented_formula_for_max_series() -> None:
    # request = 320 MiB + 2 x 19 kB x max_series; limit = 1.5 x request (deployment.yaml).
    settings = config.load(K8S / "streamlstm.yaml", {})
    formula = 320 + 2 * 19_000 * settings.windows.max_series / 2**20
    resources = _container()["resources"]
    request = _mebibytes(resources["requests"]["memory"])
    limit = _mebibytes(resources["limits"]["memory"])
    assert formula <= request <= formula + 128, (formula, request)
    assert limit == 1.5 * request
    text = (K8S / "deployment.yaml").read_text(encoding="utf-8")
    assert "request = 320 MiB + 2 x 19 kB x max_series" in text
    assert f"{settings.windows.max_series:,}" in text


def test_k8s_first_start_installs_the_bundled_model_into_an_empty_volume() -> None:
    spec = _k8s("deployment.yaml")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    container = _container()
    assert init["image"] == container["image"]
    models = {m["name"]: m for m in container["volumeMounts"]}["models"]
    assert models["readOnly"] is True  # the daemon only reads
    init_models = {m["name"]: m for m in init["volumeMounts"]}["models"]
    assert not init_models.get("readOnly")
    assert init["args"] == ["models", "init", "--models", init_models["mountPath"]]
    assert init_models["mountPath"] == models["mountPath"] == config.load(
        K8S / "streamlstm.yaml", {}).model.path
    assert init["securityContext"]["allowPrivilegeEscalation"] is False


def test_k8s_replicas_hand_state_over_through_kafka_and_a_pdb_limits_evictions() -> None:
    settings = config.load(K8S / "streamlstm.yaml", {})
    assert settings.checkpoint.store == "kafka"  # no shared disk for per-series state
    deployment = _k8s("deployment.yaml")
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    pdb = _k8s("pdb.yaml")
    assert pdb["kind"] == "PodDisruptionBudget" and pdb["apiVersion"] == "policy/v1"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # It must let a drain proceed, one replica at a time, even with replicas: 1.
    assert pdb["spec"].get("maxUnavailable") == 1 and "minAvailable" not in pdb["spec"]
    assert "pdb.yaml" in _k8s("kustomization.yaml")["resources"]


def test_k8s_models_volume_states_its_access_mode() -> None:
    pvc = _k8s("pvc.yaml")
    (mode,) = pvc["spec"]["accessModes"]
    text = (K8S / "pvc.yaml").read_text(encoding="utf-8")
    assert f"Access mode: {mode}" in text
    assert mode in (DEPLOY / "README.md").read_text(encoding="utf-8")


def test_k8s_service_and_servicemonitor_scrape_the_metrics_port() -> None:
    service = _k8s("service.yaml")
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["port"] == METRICS_PORT
    assert port["targetPort"] == "metrics"
    labels = _k8s("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    monitor = _k8s("servicemonitor.yaml")
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # The job label is the Service name, which the alert rules select on.
    assert service["metadata"]["name"] == "streamlstm"


def test_kustomization_names_existing_files() -> None:
    kustomization = _k8s("kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"]
    generated = {p.relative_to(K8S).as_posix() for p in (K8S / "generated").glob("*.yaml")}
    assert generated <= set(kustomization["resources"])


def _generate_module() -> Any:
    spec = importlib.util.spec_from_file_location("streamlstm_k8s_generate", K8S / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_k8s_files_are_what_generate_py_writes_now() -> None:
    rendered = _generate_module().render(ROOT)
    assert rendered
    stale = [str(path) for path, text in rendered.items()
             if not (ROOT / path).is_file() or (ROOT / path).read_text(encoding="utf-8") != text]
    assert not stale, f"stale, run deploy/kubernetes/generate.py: {stale}"
    for folder in (K8S / "generated", GRAFANA / "export"):
        on_disk = {p.relative_to(ROOT) for p in folder.glob("*")}
        written = {p for p in rendered if (ROOT / p).parent == folder}
        assert written and on_disk == written, f"{folder} holds files generate.py no longer writes"


def test_export_dashboards_ask_for_their_datasources_on_import() -> None:
    module = _generate_module()
    for path in DASHBOARDS:
        source_text = path.read_text(encoding="utf-8")
        exported = json.loads((GRAFANA / "export" / path.name).read_text(encoding="utf-8"))
        inputs = {i["name"]: i for i in exported["__inputs"]}
        text = json.dumps(exported)
        for uid, wanted in module.EXPORT_INPUTS.items():
            assert f'"uid": "{uid}"' not in text, f"{path.name}: provisioned uid {uid} left"
            if f'"uid": "{uid}"' in source_text:
                assert inputs[wanted["name"]]["pluginId"] == KNOWN_DATASOURCES[uid]
        used = set(re.findall(r"\$\{(DS_\w+)\}", text))
        assert used == set(inputs), path.name
        # Put the provisioned uids back: the export is exactly the provisioned dashboard.
        back = text
        for uid, wanted in module.EXPORT_INPUTS.items():
            back = back.replace("${" + wanted["name"] + "}", uid)
        restored = json.loads(back)
        for key in ("__comment", "__inputs", "__requires"):
            restored.pop(key)
        assert restored == json.loads(source_text)


def test_runbook_base_url_rewrites_every_alert_link(tmp_path: Path) -> None:
    module = _generate_module()
    for source in module.RUNBOOK_SOURCES:
        (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / source).write_text((ROOT / source).read_text(encoding="utf-8"))
    base = "https://wiki.example.internal/ops/streamlstm"
    changed = module.set_runbook_base_url(tmp_path, base)
    assert set(changed) == set(module.RUNBOOK_SOURCES)
    for source in module.RUNBOOK_SOURCES:
        before = re.findall(r'runbook_url: "([^"]+)"', (ROOT / source).read_text())
        after = re.findall(r'runbook_url: "([^"]+)"', (tmp_path / source).read_text())
        assert before and len(after) == len(before)
        assert [u.rpartition("#")[2] for u in after] == [u.rpartition("#")[2] for u in before]
        assert all(u.startswith(base + "#") for u in after)
    with pytest.raises(SystemExit):
        module.set_runbook_base_url(tmp_path, "deploy/runbook.md")


def test_generated_k8s_objects_carry_the_originals() -> None:
    generated = K8S / "generated"
    rule = _yaml(generated / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == _yaml(RULES)["groups"]
    dashboards = _yaml(generated / "grafana-dashboards.yaml")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboards["data"]) == {p.name for p in DASHBOARDS}
    for path in DASHBOARDS:
        assert json.loads(dashboards["data"][path.name]) == json.loads(path.read_text())
    alerting = _yaml(generated / "grafana-alerting.yaml")
    assert yaml.safe_load(alerting["data"][ALERTING.name]) == _yaml(ALERTING)


# ---------------------------------------------------------------------------- image and unit


def test_dockerfile_is_slim_non_root_cpu_torch_with_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "python:3.11-slim" in text
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_pin,) = [p for p in pins if p.startswith("torch")]
    assert f"--index-url https://download.pytorch.org/whl/cpu {torch_pin}" in text
    # Dependencies (torch first) before the code: a code edit does not reinstall them.
    build_stage = text.split("\nFROM ")[1].replace("\\\n", " ")
    steps = re.findall(r"^(COPY|RUN) (.*)$", build_stage, re.MULTILINE)
    order = [f"{verb} {arg}" for verb, arg in steps]
    torch_step = next(i for i, s in enumerate(order) if "torch==" in s)
    deps_step = next(i for i, s in enumerate(order) if "pip install -r" in s or "-r /tmp" in s)
    code_step = next(i for i, s in enumerate(order) if s.startswith("COPY streamlstm "))
    install_step = next(i for i, s in enumerate(order) if "pip install --no-deps ." in s)
    assert torch_step < deps_step < code_step < install_step
    assert all(not s.startswith("COPY") or "pyproject.toml" in s
               for s in order[:deps_step] if s.startswith("COPY")), order
    installs = [s for s in order if "pip install" in s]
    assert not [s for s in installs if re.search(r"\.\[|streamlstm\[", s)], "no extras"
    # ... but the requirements of [onnx], the faster inference backend, are in the image.
    assert "['optional-dependencies']['onnx']" in text
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0"))
    health = re.search(r"^HEALTHCHECK .*?(?<!\\)$", text, re.MULTILINE | re.DOTALL)
    assert health and "/healthz" in health.group(0)
    assert f"'STREAMLSTM_METRICS_PORT', '{METRICS_PORT}'" in health.group(0)
    assert f"EXPOSE {METRICS_PORT}" in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for part in source.split():
            matches = list(ROOT.glob(part.rstrip("/")))
            assert matches, f"COPY source {part} does not exist"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    assert "!streamlstm\n" in ignore and "!pyproject.toml" in ignore


def test_systemd_unit_runs_reloads_and_restarts() -> None:
    unit = (DEPLOY / "systemd" / "streamlstm.service").read_text(encoding="utf-8")
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.MULTILINE))
    assert settings["ExecStart"].endswith("streamlstm run --config /etc/streamlstm/streamlstm.yaml")
    # First start without training; per-series checkpoints in the state directory.
    models = dict(re.findall(r"^Environment=(\w+)=(.*)$", unit, re.MULTILINE))[
        "STREAMLSTM_MODEL_PATH"]
    assert settings["ExecStartPre"].endswith(f"streamlstm models init --models {models}")
    state = settings["StateDirectory"].split()
    example = config.load(DEPLOY / "streamlstm.example.yaml", {"STREAMLSTM_MODEL_PATH": models})
    assert example.checkpoint.store == "directory" and not example.checkpoint.directory
    checkpoints = Path(models).parent / "checkpoints"
    # StateDirectory= names folders under systemd's state root; no file is read from there.
    assert {f"{SYSTEMD_STATE_ROOT}/{d}" for d in state} >= {models, str(checkpoints)}
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["Restart"] == "on-failure"
    assert settings["EnvironmentFile"].startswith(("/etc/streamlstm/", "-/etc/streamlstm/"))
    assert settings["User"] == "streamlstm"
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert hardening in settings


# ---------------------------------------------------------------------------- example config


def test_example_config_loads_and_mentions_every_key() -> None:
    path = DEPLOY / "streamlstm.example.yaml"
    config.load(path, {})
    data = _flatten(_yaml(path))
    expected = set(_flatten(dataclasses.asdict(DEFAULTS)))
    assert set(data) == expected, (
        f"missing {sorted(expected - set(data))}, unknown {sorted(set(data) - expected)}")


def test_example_config_shows_defaults_or_says_which_differ() -> None:
    path = DEPLOY / "streamlstm.example.yaml"
    defaults = _flatten(dataclasses.asdict(DEFAULTS))
    loaded = _flatten(dataclasses.asdict(config.load(path, {})))
    section = ""
    lines: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(\s*)(\w+):", line)
        if not match:
            continue
        if not match.group(1):
            section = match.group(2)
            lines[section] = line
        else:
            lines[f"{section}.{match.group(2)}"] = line
    for key, default in defaults.items():
        line = lines[key]
        assert "#" in line, f"{key} has no comment"
        if loaded[key] != default:
            assert f"default: {default}" in line, f"{key} differs from its default {default!r}"


# ---------------------------------------------------------------------------- metrics and rules


def test_metric_names_in_dashboards_and_rules_exist() -> None:
    known = known_metric_names()
    recorded = {r["record"] for g in _yaml(RULES)["groups"] for r in g["rules"] if "record" in r}
    exprs = rule_expressions() + dashboard_promql()
    assert exprs
    for where, expr in exprs:
        for name in re.findall(r"\bstreamlstm_\w+", expr):
            assert name in known, f"{where}: {name} is not a streamlstm metric"
        for name in re.findall(r"\b\w+:\w+:\w+\b", expr):
            assert name in recorded, f"{where}: recording rule {name} is not defined"


def test_dashboards_use_every_metric_family() -> None:
    """Every streamlstm_ family; the standard process_* and python_* collectors are exempt
    (any Prometheus client's, documented by prometheus_client)."""
    used = " ".join(expr for _, expr in dashboard_promql())
    registry = CollectorRegistry()
    Metrics(registry)
    families = [family.name for family in registry.collect()]
    assert any(name.startswith("process_") for name in families)
    for name in families:
        if name.startswith(("process_", "python_")):
            continue
        assert name.startswith("streamlstm_"), f"{name}: not a streamlstm_ or standard family"
        assert name in used, f"no dashboard panel shows {name}"


def test_alerts_have_severity_annotations_and_runbook_sections() -> None:
    runbook = (DEPLOY / "runbook.md").read_text(encoding="utf-8")
    anchors = {h.strip().lower() for h in re.findall(r"^## (.+)$", runbook, re.MULTILINE)}
    alerts = [r for g in _yaml(RULES)["groups"] for r in g["rules"] if "alert" in r]
    grafana_rules = [r for g in _yaml(ALERTING)["groups"] for r in g["rules"]]
    assert {a["alert"] for a in alerts} >= {
        "StreamlstmAnomaly", "StreamlstmConsumerLagGrowing", "StreamlstmNoEventsScored",
        "StreamlstmInfluxWritesFailing", "StreamlstmModelReloadRefused", "StreamlstmNotReady",
        "StreamlstmDown"}
    for name, labels, notes in (
        [(a["alert"], a["labels"], a["annotations"]) for a in alerts]
        + [(r["title"], r["labels"], r["annotations"]) for r in grafana_rules]
    ):
        assert labels["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook_url"} <= set(notes), name
        base, _, anchor = notes["runbook_url"].rpartition("#")
        assert anchor == name.lower() and anchor in anchors, name
        # Absolute: a relative path resolves in neither Alertmanager nor Grafana.
        assert re.match(r"^https?://[^/]+/", base), name
        assert base == RUNBOOK_BASE, name


def test_an_alert_fires_when_many_series_alarm_at_once() -> None:
    (alert,) = [r for g in _yaml(RULES)["groups"] for r in g["rules"]
                if r.get("alert") == "StreamlstmManySeriesAlarming"]
    assert "streamlstm_alarms_total" in alert["expr"]  # incidents, not every flagged point
    assert "streamlstm_series_tracked" in alert["expr"]
    assert alert["labels"]["severity"] == "critical"


def test_every_alert_has_a_promtool_unit_test() -> None:
    tests = _yaml(GRAFANA / "prometheus" / "streamlstm-rules.test.yml")
    tested: dict[str, set[bool]] = {}
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            tested.setdefault(check["alertname"], set()).add(bool(check.get("exp_alerts")))
    for name, _ in rule_expressions():
        if name.startswith("Streamlstm"):
            assert tested.get(name) == {True, False}, f"{name}: needs a firing and a silent case"


# ---------------------------------------------------------------------------- grafana


def test_datasources_provisioned_with_the_uids_the_dashboards_use() -> None:
    sources = {d["uid"]: d for d in _yaml(DATASOURCES)["datasources"]}
    assert sources["streamlstm-prometheus"]["type"] == "prometheus"
    influx = sources["streamlstm-influxdb"]
    assert influx["type"] == "influxdb"
    assert influx["jsonData"]["version"] == "InfluxQL"
    assert influx["jsonData"]["dbName"] == "${INFLUXDB_DB}"
    assert "${INFLUXDB_TOKEN}" in influx["secureJsonData"]["httpHeaderValue1"]
    assert influx["url"] == "${INFLUXDB_URL}"
    assert sources["streamlstm-prometheus"]["url"] == "${PROMETHEUS_URL}"
    used = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        used |= {q.datasource_uid for q in _board_queries(board)}
    assert used == set(sources)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    board = json.loads(path.read_text(encoding="utf-8"))
    assert board["uid"].startswith("streamlstm-") and board["title"]
    assert 36 <= board["schemaVersion"] <= 41
    panels = list(iter_panels(board))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel.get("title"), panel
        assert "gridPos" in panel, panel["title"]
        if panel["type"] != "row":
            assert panel.get("description"), f"{panel['title']} has no description"
            assert panel.get("targets"), f"{panel['title']} has no query"
    titles = [p["title"] for p in panels if p["type"] != "row"]
    assert len(titles) == len(set(titles)), "panel titles must be unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    queries = _board_queries(board)
    for q in queries:
        for name in re.findall(r"\$\{?(\w+)", q.query):
            assert name in variables or name.startswith("__") or name in (
                "timeFilter", "interval"), f"{q.panel_title}: unknown variable ${name}"


def _by_title(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in iter_panels(board)}


def test_anomalies_dashboard_series_picker_and_influxql() -> None:
    board = json.loads((GRAFANA / "dashboards" / "anomalies.json").read_text())
    (series,) = [v for v in board["templating"]["list"] if v["name"] == "series"]
    assert series["query"] == 'SHOW TAG VALUES FROM "anomaly" WITH KEY = "series"'
    # One series at a time: a repeated row per series is unusable at 10,000 series.
    assert series["multi"] is False and series["includeAll"] is False
    assert series["datasource"]["uid"] == "streamlstm-influxdb"
    assert not [p["title"] for p in iter_panels(board) if p.get("repeat")]
    queries = panel_queries(board)
    assert {q.kind for q in queries} == {"influxql"}
    panels = _by_title(board)
    for q in queries:
        assert "$timeFilter" in q.query, q.panel_title
        picked = '"series" =~ /^$series$/' in q.query
        # The picked series' row shows that series only; the overview covers every series.
        assert picked == ("$series" in q.panel_title), q.panel_title
        if not picked:
            grouped = re.search(r"GROUP BY (.*)", q.query)
            assert not grouped or '"series"' not in grouped.group(1), (
                f"{q.panel_title}: one line per series does not scale")
    titles = {q.panel_title for q in queries}
    assert {"Latest anomalies", "Anomalies over time", "Most anomalous series"} <= titles
    assert any("Value and anomalies" in t for t in titles)
    assert any("Score against threshold" in t for t in titles)
    # Top-N: a table of the highest score per series, each series a link to the picker.
    top = panels["Most anomalous series"]
    assert top["type"] == "table"
    (query,) = [q.query for q in queries if q.panel_title == "Most anomalous series"]
    assert re.match(r'SELECT top\("score", "series", (\d+)\)', query)
    links = [prop["value"] for o in top["fieldConfig"]["overrides"]
             if o["matcher"]["options"] == "series" for prop in o["properties"]
             if prop["id"] == "links"]
    assert links and f"/d/{board['uid']}/" in links[0][0]["url"]
    assert "var-series=${__value.text" in links[0][0]["url"]


def test_score_panels_have_units_and_the_score_range() -> None:
    board = json.loads((GRAFANA / "dashboards" / "anomalies.json").read_text())
    score_panels = [p for p in iter_panels(board) if p["type"] != "row"
                    and any(re.search(r'\b(max|top|mean|last)\("score"', t.get("query", ""))
                            for t in p.get("targets", []))
                    and p["title"] not in ("Latest anomalies",)]
    assert len(score_panels) >= 3
    for panel in score_panels:
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), panel["title"]
        assert (defaults.get("min"), defaults.get("max")) == (0, 1), panel["title"]


def test_dashboards_annotate_alarms_and_model_loads() -> None:
    anomalies = json.loads((GRAFANA / "dashboards" / "anomalies.json").read_text())
    health = json.loads((GRAFANA / "dashboards" / "daemon-health.json").read_text())
    notes = {q.panel_title: q for q in annotation_queries(anomalies)}
    alarms = notes["annotation Alarms"]
    assert alarms.kind == "influxql" and '"alarm" = true' in alarms.query
    assert "$timeFilter" in alarms.query and "LIMIT" in alarms.query
    for board in (anomalies, health):
        (loaded,) = [q for q in annotation_queries(board)
                     if q.panel_title == "annotation Model loaded"]
        assert loaded.kind == "promql"
        assert "streamlstm_model_loaded_timestamp_seconds" in loaded.query
        (note,) = [a for a in board["annotations"]["list"] if a["name"] == "Model loaded"]
        # The gauge holds the load time: each new value is one annotation at that time (ms).
        assert note["useValueForTime"] is True and loaded.query.endswith("* 1000")


def test_influxql_queries_use_the_schema_the_daemon_writes() -> None:
    alert = _yaml(ALERTING)
    alert_queries = [(r["title"], d["model"]["query"])
                     for g in alert["groups"] for r in g["rules"] for d in r["data"]
                     if d["datasourceUid"] != "__expr__"]
    allowed = INFLUX_TAGS | INFLUX_FIELDS | INFLUX_MULTI_FEATURE_FIELDS | {INFLUX_MEASUREMENT}
    for where, query in dashboard_influxql() + alert_queries:
        if query.startswith("SHOW"):
            assert f'FROM "{INFLUX_MEASUREMENT}"' in query
            continue
        source = re.search(r'\bFROM "(\w+)"', query)
        assert source and source.group(1) == INFLUX_MEASUREMENT, where
        aliases = set(re.findall(r'\bAS "(\w+)"', query))
        identifiers = set(re.findall(r'"(\w+)"', query)) - aliases
        assert identifiers <= allowed, f"{where}: {sorted(identifiers - allowed)}"


def test_the_sink_writes_exactly_the_tags_and_fields_the_dashboards_know() -> None:
    from streamlstm.core.records import Score
    from streamlstm.sinks.influx import to_lines

    evidence = {"model": 1.5, "memory": 0.2, "seasonal": 3.0, "coarse": 0.0}
    (line,) = to_lines([Score("s", 1.0, (1.0,), 0.1, 0.2, 0.3, False, "v1", novelty=0.5,
                              evidence=evidence)], "m")
    tag_set, field_set, _ = line.split(" ")
    assert {kv.split("=")[0] for kv in tag_set.split(",")[1:]} == INFLUX_TAGS
    assert {kv.split("=")[0] for kv in field_set.split(",")} == INFLUX_FIELDS
    two = Score("s", 1.0, (1.0, 2.0), 0.1, 0.2, 0.3, False, "v1", evidence=evidence,
                top_feature="b")
    (line,) = to_lines([two], "m")
    assert {kv.split("=")[0] for kv in line.split(" ")[1].split(",")} == (
        INFLUX_FIELDS - {"novelty"} | INFLUX_MULTI_FEATURE_FIELDS)


def test_dashboards_group_and_alias_by_tags_only() -> None:
    """InfluxQL groups by tags; a GROUP BY or $tag_ alias naming a field silently groups
    nothing (one group, an empty label)."""
    alert = _yaml(GRAFANA / "provisioning" / "alerting" / "streamlstm-anomaly.yaml")
    alert_queries = [(r["title"], d["model"]["query"])
                     for g in alert["groups"] for r in g["rules"] for d in r["data"]
                     if d["datasourceUid"] != "__expr__"]
    for where, query in dashboard_influxql() + alert_queries:
        grouped = re.search(r"\bGROUP BY (.*?)(?:\bfill\(|\bORDER\b|\bLIMIT\b|$)", query)
        if grouped:
            named = set(re.findall(r'"(\w+)"', grouped.group(1)))
            assert named <= INFLUX_TAGS, f"{where}: groups by {sorted(named - INFLUX_TAGS)}"
    for dashboard in DASHBOARDS:
        board = json.loads(dashboard.read_text(encoding="utf-8"))
        for target in (t for panel in iter_panels(board) for t in panel.get("targets", [])):
            for tag in re.findall(r"\$tag_(\w+)", target.get("alias", "")):
                assert tag in INFLUX_TAGS, f"{dashboard.name}: alias by {tag!r}, not a tag"


def test_health_dashboard_covers_what_an_operator_needs() -> None:
    board = json.loads((GRAFANA / "dashboards" / "daemon-health.json").read_text())
    queries = panel_queries(board)
    assert {q.kind for q in queries} == {"promql"}
    text = "\n".join(q.query for q in queries)
    for needle in ("rate(streamlstm_events_consumed_total", "rate(streamlstm_events_scored_total",
                   "streamlstm_events_rejected_total", "streamlstm_consumer_lag_records",
                   "histogram_quantile(0.5,", "histogram_quantile(0.95,",
                   "histogram_quantile(0.99,", "streamlstm_batch_scoring_seconds_bucket",
                   "streamlstm_influx_write_failures_total", "streamlstm_influx_write_seconds",
                   "streamlstm_series_tracked", "streamlstm_model_info",
                   "time() - (streamlstm_model_trained_timestamp_seconds", "streamlstm_ready",
                   "streamlstm_model_reloads_total"):
        assert needle in text, needle
    for q in queries:  # short windows only: the panels must have data minutes after a start
        for window in re.findall(r"\[([^\]]+)\]", q.query):
            assert window == "$__rate_interval", f"{q.panel_title}: [{window}]"


def test_every_dashboard_query_substitutes_completely() -> None:
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        for q in _board_queries(board):
            text = substitute(q.query, 1_396_310_400 * 10**9, 1_396_396_800 * 10**9, "1m",
                              {"series": ["a.b", "c"], "job": ".*", "instance": ".*"},
                              kind=q.kind, scrape_interval="1s")
            assert "$" not in text.replace("$/", ""), f"{q.panel_title}: {text}"


def test_grafana_alert_rule_is_well_formed() -> None:
    doc = _yaml(ALERTING)
    assert doc["apiVersion"] == 1
    sources = {d["uid"] for d in _yaml(DATASOURCES)["datasources"]}
    (group,) = doc["groups"]
    assert group["folder"] and group["interval"]
    (rule,) = group["rules"]
    refs = {d["refId"]: d for d in rule["data"]}
    assert rule["condition"] in refs
    (query,) = [d for d in rule["data"] if d["datasourceUid"] != "__expr__"]
    assert query["datasourceUid"] in sources
    assert query["model"]["rawQuery"] is True
    assert 'GROUP BY "series"' in query["model"]["query"]
    assert "$timeFilter" in query["model"]["query"]
    assert query["relativeTimeRange"]["from"] > 0
    types = {d["model"]["type"]: d for d in rule["data"] if d["datasourceUid"] == "__expr__"}
    assert set(types) == {"reduce", "threshold"}
    assert types["reduce"]["model"]["expression"] == query["refId"]
    assert types["threshold"]["model"]["expression"] == types["reduce"]["refId"]
    assert rule["condition"] == types["threshold"]["refId"]
    assert rule["noDataState"] == "OK"
    assert "$labels.series" in rule["annotations"]["summary"]
    dashboard_uids = {json.loads(p.read_text())["uid"] for p in DASHBOARDS}
    assert rule["annotations"]["__dashboardUid__"] in dashboard_uids


def test_alerts_and_dashboards_read_thresholds_from_the_data() -> None:
    # The threshold is the daemon's to apply (the model's calibration, or the config's alarms
    # section per series): rules and dashboards read flags and thresholds from what it wrote,
    # and hard-code no threshold number.
    shipped = CalibrationSettings().threshold
    meta = json.loads((BUNDLED_MODEL / "meta.json").read_text())
    assert meta["calibration"]["threshold"] == shipped
    number = re.compile(rf"(?<![\d.]){re.escape(str(shipped))}(?![\d])")
    (alert,) = [r for g in _yaml(RULES)["groups"] for r in g["rules"]
                if r.get("alert") == "StreamlstmAnomaly"]
    assert "streamlstm_series_alarms_total" in alert["expr"]
    for where, expr in rule_expressions():
        assert not number.search(expr), where
    assert not number.search(json.dumps(alert["annotations"]))
    anomalies = json.loads((GRAFANA / "dashboards" / "anomalies.json").read_text())
    for panel in iter_panels(anomalies):
        steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get(
            "steps", [])
        assert shipped not in [s.get("value") for s in steps], panel["title"]
        assert not number.search(panel.get("description", "")), panel["title"]
    (score,) = [p for p in iter_panels(anomalies) if "Score against threshold" in p["title"]]
    assert any('"threshold"' in t.get("query", "") for t in score["targets"])


def test_grafana_alert_fires_on_one_flagged_point() -> None:
    # The daemon alarms once per incident (until alarm_hold quiet windows), so
    # a condition needing several flagged points in a 10-minute window could never fire.
    (group,) = _yaml(ALERTING)["groups"]
    (rule,) = group["rules"]
    (threshold,) = [d for d in rule["data"] if d["model"].get("type") == "threshold"]
    (condition,) = threshold["model"]["conditions"]
    assert condition["evaluator"] == {"type": "gt", "params": [0]}
