"""API keys through the orchestrator's commands: keys-create, keys-list, keys-revoke.

A real orchestrator process (signed commands required, front door on HTTPS with API keys), the
real `edgefleet fleet keys` CLI as the harness operator, and a plain MQTT client for what an
outsider sends. The key database is the orchestrator's: the CLI never opens it. A created key
lets a client in at the front door, a revoked one is refused, and only an enrolled operator's
signed command manages keys.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.fleet import keys_commands
from edgefleet.orchestrator.api_keys import KeyStore, Verifier, split_token
from edgefleet.orchestrator.command_errors import error_code_of
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.key_commands import KeyCommands
from edgefleet.proto.commands import Command
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.signing import load_operator_key, sign_command
from tests import site_identity
from tests.conftest import free_port, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, fleet
from tests.orchestrator.command_client import CommandClient


@dataclass
class KeyedSite:
    broker: Mosquitto
    orchestrator: Orchestrator
    http: str
    db: Path
    outsider: CommandClient  # sends exactly what a test signs (or not)

    def models_status(self, token: str) -> int:
        """GET /v1/models on the front door with `token` as the bearer key: the HTTP status."""
        req = urllib.request.Request(self.http + "/v1/models", headers={"Authorization": f"Bearer {token}"})
        try:
            with site_identity.site().urlopen(req, client_cert=False) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0  # not listening yet

    def keys(self, *args: str) -> str:
        r = fleet(self.broker, "fleet", "keys", *args)
        assert r.returncode == 0, r.stderr
        return r.stdout


@pytest.fixture(scope="module")
def site(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedSite]:
    tmp = tmp_path_factory.mktemp("key-commands")
    http_port = free_port()
    env = {"EDGEFLEET_OPENAI_ADDRESS": f"127.0.0.1:{http_port}", "EDGEFLEET_FRONT_DOOR_AUTH": "keys"}
    orch = Orchestrator(tmp, broker, env=env)
    outsider = CommandClient(broker, sign=False)
    s = KeyedSite(broker, orch, f"https://127.0.0.1:{http_port}", tmp / "api-keys.db", outsider)
    try:
        assert wait_for(lambda: s.models_status("ef-0-none") == 401, timeout=20), orch.log_path.read_text()[-3000:]
        yield s
    finally:
        outsider.close()
        orch.stop()


def test_a_created_key_opens_the_front_door_and_a_revoked_one_is_refused(site: KeyedSite) -> None:
    created = site.keys(
        "create", "app", "--models", "m1,m2", "--rpm", "50", "--expires", "7d", "--collections", "manuals,specs"
    )
    assert "it is shown only this once" in created
    token = created.strip().splitlines()[-1]
    assert token.startswith("ef-")
    assert site.db.exists()  # the orchestrator's file, beside its registry
    assert site.models_status(token) == 200
    listed = json.loads(site.keys("list", "--json"))
    app = next(k for k in listed if k["name"] == "app")
    assert app["models"] == ["m1", "m2"] and app["rpm"] == 50 and app["state"] == "active"
    assert app["collections"] == ["manuals", "specs"] and app["identity"] == ""
    assert token not in json.dumps(listed) and "secret_hash" not in app
    assert "app" in site.keys("list") and token not in site.keys("list")
    assert "revoked key 'app'" in site.keys("revoke", "app")
    assert wait_for(lambda: site.models_status(token) == 401, timeout=5)
    assert {k["name"]: k["state"] for k in json.loads(site.keys("list", "--json"))}["app"] == "revoked"
    secret = token.split("-", 2)[2]
    assert secret not in site.orchestrator.log_path.read_text(errors="replace")


def test_cli_refusals_name_the_problem(site: KeyedSite, tmp_path: Path) -> None:
    missing = fleet(site.broker, "fleet", "keys", "revoke", "nobody")
    assert missing.returncode == 2 and "refused (not_found): no key named 'nobody'" in missing.stderr
    site.keys("create", "twice")
    again = fleet(site.broker, "fleet", "keys", "create", "twice")
    assert again.returncode == 2 and "command_refused" in again.stderr and "exists" in again.stderr
    old_flag = fleet(site.broker, "fleet", "keys", "list", "--db", str(tmp_path / "k.db"))
    assert old_flag.returncode == 2 and "the orchestrator's alone" in old_flag.stderr
    assert not (tmp_path / "k.db").exists()


def test_key_commands_are_refused_unsigned_or_from_a_non_operator(site: KeyedSite) -> None:
    for cmd in (Command(op="keys-list"), Command(op="keys-create", name="sneaky"), Command(op="keys-revoke", name="x")):
        r = site.outsider.call(cmd.dumps())
        assert not r.ok and error_code_of(r) == ErrorCode.UNSIGNED, r
        assert "token" not in r.data
    stranger = ec.generate_private_key(ec.SECP256R1())  # a key no operator of the site holds
    forged = sign_command(Command(op="keys-create", name="sneaky"), "lab", site_identity.HARNESS, stranger)
    r = site.outsider.call(forged.dumps())
    assert not r.ok and error_code_of(r) == ErrorCode.BAD_SIGNATURE, r
    node_env = site_identity.site().node_env("key-test-node")  # a node's own certificate: not an operator
    node_key = load_operator_key(Path(node_env["EDGEFLEET_MQTT_KEY_FILE"]))
    r = site.outsider.call(sign_command(Command(op="keys-list"), "lab", "key-test-node", node_key).dumps())
    assert not r.ok and error_code_of(r) == ErrorCode.UNKNOWN_OPERATOR, r
    names = [k["name"] for k in json.loads(site.keys("list", "--json"))]
    assert "sneaky" not in names


def test_cli_verbs_against_the_key_commands_in_process(tmp_path: Path) -> None:
    """The CLI's own code on the orchestrator's handlers (no broker): flags in, the same output as before."""
    parser = argparse.ArgumentParser()
    keys_commands.add_parsers(parser.add_subparsers(dest="fleet_command"))
    table, keys = CommandTable(), KeyCommands(tmp_path / "api-keys.db")
    keys.register(table)

    def cli(*argv: str) -> str:
        out = io.StringIO()
        assert keys_commands.execute(parser.parse_args(["keys", *argv]), table.dispatch_command, out) == 0
        return out.getvalue()

    try:
        created = cli("create", "app", "--models", "m1,m2", "--rpm", "3", "--expires", "7d")
        token = created.strip().splitlines()[-1]
        assert split_token(token)
        verifier = Verifier(KeyStore(tmp_path / "api-keys.db"), refresh_s=0)
        assert verifier.authenticate(f"Bearer {token}").allowed
        listed = json.loads(cli("list", "--json"))
        assert listed[0]["name"] == "app" and listed[0]["models"] == ["m1", "m2"] and listed[0]["state"] == "active"
        assert listed[0]["expires_at"] > time.time() + 6 * 86400
        assert token not in json.dumps(listed) and "secret_hash" not in listed[0]
        assert "revoked" in cli("revoke", "app")
        assert "revoked" in cli("list")
        assert not verifier.authenticate(f"Bearer {token}").allowed
        with pytest.raises(keys_commands.KeysCommandError, match="not_found"):
            cli("revoke", "nobody")
        with pytest.raises(keys_commands.KeysCommandError, match="neither ISO 8601"):
            cli("create", "later", "--expires", "soon")
        with pytest.raises(keys_commands.KeysCommandError, match="rpm"):
            cli("create", "negative", "--rpm", "-1")
        bound = cli("create", "alice-limits", "--identity", "alice", "--collections", "*", "--rpm", "9")
        assert "shown only this once" in bound
        listed = {k["name"]: k for k in json.loads(cli("list", "--json"))}
        assert listed["alice-limits"]["identity"] == "alice" and listed["alice-limits"]["collections"] == ["*"]
        assert listed["app"]["collections"] == []  # a new key reads no collection unless told
        listing = cli("list")
        assert "COLLECTIONS" in listing and "IDENTITY" in listing and "alice" in listing
        with pytest.raises(keys_commands.KeysCommandError, match="bound to identity 'alice'"):
            cli("create", "alice-again", "--identity", "alice")
        with pytest.raises(keys_commands.KeysCommandError, match="--collections"):
            cli("create", "bad-collection", "--collections", "a/b")
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown), pytest.raises(SystemExit):
            parser.parse_args(["keys", "create", "--help"])
        assert "(default: none, least privilege)" in " ".join(shown.getvalue().split())
        verifier.store.close()
    finally:
        keys.close()
