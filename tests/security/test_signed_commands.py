"""Signed operator commands end to end, on a broker WITHOUT any ACL (anyone may publish anything).

A real Mosquitto (anonymous, no ACL), a real orchestrator process with
EDGEFLEET_REQUIRE_SIGNED_COMMANDS=1 trusting the operators of a real site PKI, the real CLI, and a
plain paho client as the attacker. Unsigned, unknown, revoked, forged, stale and replayed commands
are answered ok=false with their code and change nothing; a command the CLI signs with an enrolled
operator's key runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.fleet.site.pki import SitePki
from edgefleet.proto.commands import Command
from edgefleet.proto.payloads import CommandResult, RuleSpec, TemplateSpec
from edgefleet.proto.signing import OperatorPrivateKey, load_operator_key, public_key_id, sign_command
from edgefleet.proto.topics import Topics
from tests.conftest import BIN, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher
from tests.orchestrator.command_client import CommandClient

TOPICS = Topics.for_site("lab")
TEMPLATE = TemplateSpec(name="fault", version="1", template="Sensor {{ sensor }}?", variables=["sensor"])
RULE = RuleSpec(name="r1", version="1", topic_filter="factory/#", template="fault", variables={"sensor": "topic[1]"})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("signed-commands")
    pki = SitePki(tmp / "pki")
    pki.init("lab", ["localhost"])
    for name in ("alice", "carol", "erin"):  # erin is revoked by a test; carol stays enrolled
        pki.issue(name, "operator")
    broker = Mosquitto(tmp)  # TLS, any site certificate may publish anything: no ACL
    watcher = Watcher(broker, TOPICS.orchestrator_status())
    env = {"EDGEFLEET_REQUIRE_SIGNED_COMMANDS": "1", "EDGEFLEET_OPERATOR_KEYS": str(pki.dir)}
    orch = Orchestrator(tmp, broker, env=env)
    client = CommandClient(broker, sign=False)  # sends exactly what each test signs (or not)
    try:
        assert wait_for(lambda: any(m.get("state") == "online" for m in watcher.json()), timeout=20), (
            orch.log_path.read_text()[-2000:]
        )
        site = {"pki": pki, "broker": broker, "orch": orch, "client": client}
        # what the tests try to remove: a rule (and its template) that only alice's signature may change
        push = Command(op="push-template", target="group:line", template=TEMPLATE)
        assert call(site, signed(site, push)).ok
        assert call(site, signed(site, Command(op="push-rule", target="group:line", rule=RULE))).ok
        yield site
    finally:
        watcher.close()
        client.close()
        orch.stop()
        broker.stop()


def key(site: dict[str, object], name: str) -> OperatorPrivateKey:
    pki = site["pki"]
    assert isinstance(pki, SitePki)
    return load_operator_key(pki.bundle_dir(name) / "client.key")


def call(site: dict[str, object], cmd: Command) -> CommandResult:
    client = site["client"]
    assert isinstance(client, CommandClient)
    return client.call(cmd.dumps())


def signed(site: dict[str, object], cmd: Command, who: str = "alice", now: float | None = None) -> Command:
    return sign_command(cmd, "lab", who, key(site, who), now=now)


def rules(site: dict[str, object]) -> str:
    r = call(site, signed(site, Command(op="rules")))
    assert r.ok, r
    return json.dumps(r.data)


def test_unsigned_commands_are_refused_and_change_nothing(site: dict[str, object]) -> None:
    assert '"r1"' in rules(site)  # pushed, signed, by the fixture

    status = call(site, Command(op="status"))
    assert not status.ok and status.code == "unsigned" and status.data == {}, status
    rm = call(site, Command(op="rm-rule", target="group:line", name="r1"))
    assert not rm.ok and rm.code == "unsigned", rm
    assert '"r1"' in rules(site), "the unsigned rm-rule removed nothing"


def cli(site: dict[str, object], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    broker = site["broker"]
    assert isinstance(broker, Mosquitto)
    full = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_OPERATOR_")}
    full.update(EDGEFLEET_MQTT_URL=broker.url, EDGEFLEET_SITE="lab", EDGEFLEET_CLI_CONFIG=os.devnull)
    full.update(env)
    return subprocess.run(
        [str(BIN / "edgefleet"), "--timeout", "10", *args], capture_output=True, text=True, timeout=60, env=full
    )


def test_the_cli_signs_with_the_enrolled_operator_key(site: dict[str, object]) -> None:
    pki = site["pki"]
    assert isinstance(pki, SitePki)
    bundle = pki.bundle_dir("alice")
    r = cli(site, "fleet", "status", "--json", EDGEFLEET_OPERATOR_KEY_FILE=str(bundle / "client.key"))
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), list)
    # no operator key named: the CLI signs with its bundle's key (the harness's, of another PKI)
    r = cli(site, "fleet", "status", "--json")
    assert r.returncode != 0 and "unknown_operator" in r.stderr, (r.stdout, r.stderr)
    # the name may be set explicitly; a wrong one is refused by the orchestrator
    wrong = {"EDGEFLEET_OPERATOR_KEY_FILE": str(bundle / "client.key"), "EDGEFLEET_OPERATOR_NAME": "carol"}
    r = cli(site, "fleet", "status", **wrong)
    assert r.returncode != 0 and "bad_signature" in r.stderr, r.stderr


def test_the_cli_reads_the_operator_key_from_its_config_file(site: dict[str, object], tmp_path: Path) -> None:
    pki = site["pki"]
    assert isinstance(pki, SitePki)
    config = tmp_path / "cli.toml"
    config.write_text(f'operator_key_file = "{pki.bundle_dir("alice") / "client.key"}"\noperator_name = "alice"\n')
    r = cli(site, "fleet", "status", "--json", EDGEFLEET_CLI_CONFIG=str(config))
    assert r.returncode == 0, r.stderr


def test_a_replayed_signed_command_is_refused(site: dict[str, object]) -> None:
    client = site["client"]
    assert isinstance(client, CommandClient)
    wire = signed(site, Command(op="status")).dumps()
    assert client.call(wire).ok
    again = client.call(wire)  # the same bytes, re-published by a plain client
    assert not again.ok and again.code == "replayed" and again.data == {}, again


def test_a_stale_signed_command_is_refused(site: dict[str, object]) -> None:
    for skew in (-300, 300):
        r = call(site, signed(site, Command(op="status"), now=time.time() + skew))
        assert not r.ok and r.code == "stale", r


def test_a_revoked_operator_is_refused(site: dict[str, object]) -> None:
    pki = site["pki"]
    assert isinstance(pki, SitePki)
    assert call(site, signed(site, Command(op="status"), who="erin")).ok
    pki.revoke("erin")
    r = call(site, signed(site, Command(op="rm-rule", target="group:line", name="r1"), who="erin"))
    assert not r.ok and r.code == "operator_revoked", r
    assert '"r1"' in rules(site)


def test_forged_and_unknown_operator_commands_are_refused(site: dict[str, object]) -> None:
    errors = Watcher(site["broker"], TOPICS.errors("orchestrator"))  # type: ignore[arg-type]
    try:
        mallory = ec.generate_private_key(ec.SECP256R1())
        genuine = signed(site, Command(op="status"))
        forged = sign_command(Command(op="rm-rule", target="group:line", name="r1"), "lab", "alice", mallory)
        claimed = {"key_id": genuine.request.key_id}  # claims alice's key
        forged = Command(forged.request.model_copy(update=claimed))
        r = call(site, forged)
        assert not r.ok and r.code == "bad_signature", r
        moved = {"op": "rm-rule", "target": "group:line", "name": "r1"}  # alice's envelope on another command
        envelope = genuine.request.model_dump(include={"v", "operator", "key_id", "signed_at", "nonce", "signature"})
        altered = Command.model_validate({**envelope, **moved})
        r = call(site, altered)
        assert not r.ok and r.code == "bad_signature", r
        r = call(site, sign_command(Command(op="status"), "lab", "mallory", mallory))
        assert not r.ok and r.code == "unknown_operator", r
        assert public_key_id(mallory.public_key()) not in r.message
        assert '"r1"' in rules(site)
        assert wait_for(lambda: {"bad_signature", "unknown_operator"} <= {e["code"] for e in errors.json()}, 5)
    finally:
        errors.close()
