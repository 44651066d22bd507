"""Talks to the site orchestrator over MQTT 5 request/response (response topic + correlation data).

Before the first command a session checks, in about a second, what it can: that the broker
answers at all (a TCP connect, not a 10 s reconnect loop) and that the site's orchestrator has
announced itself `online` (its retained `orchestrator/status`). When either fails, the error
names the broker URL and the site it looked for, the sites it saw on that broker, and where
each setting comes from (flag, environment, config file). With an operator key configured
(`operator_key_file`, `operator_name`) every command is signed (proto/signing.py `sign_command`).
"""

from __future__ import annotations

import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.x509.oid import NameOID

from edgefleet.fleet.settings import FleetSettings, config_path
from edgefleet.plumbing.mqtt_link import BrokerAddress, MqttLink
from edgefleet.plumbing.mqtt_rpc import NoAnswer, RpcClient
from edgefleet.proto.commands import Command
from edgefleet.proto.input_limits import brief
from edgefleet.proto.payloads import CommandResult, OrchestratorStatus, PayloadError, parse_payload
from edgefleet.proto.signing import OperatorPrivateKey, load_operator_key, sign_command
from edgefleet.proto.topics import Topics

STATUS_WAIT_S = 2.0  # for the retained orchestrator status, which a broker sends right after SUBACK
STARTING_WAIT_S = 10.0  # more, when no orchestrator of any site has announced itself yet (one starting)


class OrchestratorUnreachable(Exception):
    pass


class OperatorKeyError(OrchestratorUnreachable):
    """The configured operator key cannot be used to sign commands."""


def operator_signer(settings: FleetSettings) -> tuple[str, OperatorPrivateKey] | None:
    """(operator name, private key) from the settings, or None when no key is configured."""
    path = settings.operator_key_path()
    if path is None:
        return None
    path = Path(path).expanduser()
    where = f"EDGEFLEET_OPERATOR_KEY_FILE or operator_key_file in {config_path()}"
    try:
        key = load_operator_key(path)
    except (OSError, ValueError, TypeError) as e:
        raise OperatorKeyError(f"cannot use the operator key {path} ({where}): {e}") from e
    name = settings.operator_name
    if not name:
        try:
            cert = x509.load_pem_x509_certificate((path.parent / "client.crt").read_bytes())
            name = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        except (OSError, ValueError, IndexError) as e:
            raise OperatorKeyError(
                f"no operator name: set EDGEFLEET_OPERATOR_NAME or operator_name in {config_path()} "
                f"(no readable client.crt beside {path}: {e})"
            ) from e
    return name, key


class CommandRefused(Exception):
    """The orchestrator answered a command with an error (the message starts with its code)."""


def _where() -> str:
    return f"--mqtt-url/--site, EDGEFLEET_MQTT_URL/EDGEFLEET_SITE, or mqtt_url/site in {config_path()}"


def probe_broker(url: str, timeout: float = 2.0) -> None:
    """A TCP connect to the broker, so a wrong URL fails in a moment with the reason."""
    addr = BrokerAddress.parse(url)
    try:
        with socket.create_connection((addr.host, addr.port), timeout=timeout):
            return
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise OrchestratorUnreachable(f"cannot reach the broker at {url} ({reason}); set it with {_where()}") from e


class OrchestratorSession:
    """One broker connection for several commands (an upload is many)."""

    def __init__(self, settings: FleetSettings, connect_timeout: float = 10.0) -> None:
        self.settings = settings
        self.topics = Topics.for_site(settings.site, settings.topic_root)
        settings.require_secure_mqtt()
        self.signer = operator_signer(settings)
        probe_broker(settings.mqtt_url, min(connect_timeout, 3.0))
        client_id = f"cli-{uuid.uuid4().hex[:10]}"
        self.response_topic = self.topics.cli_responses(client_id)
        self.link = MqttLink(settings.mqtt_url, client_id=client_id, **settings.mqtt_link_options())
        self.rpc = RpcClient(self.link, self.response_topic)
        self._sites: dict[str, str] = {}  # site → orchestrator state, from the retained status messages
        self._seen = threading.Condition()
        self._checked = False
        mark = "site0placeholder"
        probe = Topics.for_site(mark, settings.topic_root).orchestrator_status()
        self._status_filter = probe.replace(mark, "+")
        pre, found, post = probe.partition(mark)
        self._status_re = re.compile(re.escape(pre) + (r"([^/]+)" if found else "()") + re.escape(post))
        self.link.start()
        if not (self.link.wait_connected(connect_timeout) and self.rpc.subscribe(connect_timeout)):
            self.link.stop()
            raise OrchestratorUnreachable(f"cannot reach the broker at {settings.mqtt_url}; set it with {_where()}")
        self.link.subscribe_wait(self._status_filter, self._on_status, timeout=connect_timeout)

    def _on_status(self, msg: mqtt.MQTTMessage) -> None:
        m = self._status_re.fullmatch(msg.topic)
        if not m or not msg.payload:
            return
        try:
            state = parse_payload(OrchestratorStatus, bytes(msg.payload)).state
        except PayloadError:
            return
        with self._seen:
            self._sites[m.group(1) or self.settings.site] = state
            self._seen.notify_all()

    def sites_seen(self) -> str:
        with self._seen:
            sites = dict(self._sites)
        if not sites:
            return "no edgefleet orchestrator has announced itself on this broker"
        return "sites seen on this broker: " + ", ".join(f"{s} ({state})" for s, state in sorted(sites.items()))

    def _check_orchestrator(self) -> None:
        """The site's orchestrator said `online` (retained), or a clear error naming the sites seen."""
        site = self.settings.site
        with self._seen:
            online = self._seen.wait_for(lambda: self._sites.get(site) == "online", STATUS_WAIT_S)
            if not online and not self._sites:  # nothing on the broker yet: an orchestrator may be starting
                online = self._seen.wait_for(lambda: self._sites.get(site) == "online", STARTING_WAIT_S)
            state = self._sites.get(site)
        if online:
            self._checked = True
            return
        found = f"is {state}" if state else "has never announced itself"
        raise OrchestratorUnreachable(
            f"the orchestrator of site {brief(site)} on {self.settings.mqtt_url} {found}; "
            f"{self.sites_seen()}. Is edgefleet-orchestrator running for this site? Choose the site with {_where()}"
        )

    def call(self, command: Command, timeout: float) -> CommandResult:
        if not self._checked:
            self._check_orchestrator()
        try:
            if self.signer is not None:
                command = sign_command(command, self.settings.site, *self.signer)
            answer = self.rpc.call(self.topics.orchestrator_commands(), command.dumps(), timeout)
        except NoAnswer as e:
            raise OrchestratorUnreachable(
                f"no answer from the orchestrator of site {brief(self.settings.site)} within {timeout:.0f} s "
                f"(it announced itself online; it may be busy or stuck); {self.sites_seen()}"
            ) from e
        try:
            return parse_payload(CommandResult, answer)
        except PayloadError as e:
            return CommandResult(ok=False, message=f"unreadable answer from the orchestrator: {e}", code="internal")

    def close(self) -> None:
        self.link.stop()

    def __enter__(self) -> OrchestratorSession:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def request(settings: FleetSettings, command: Command, timeout: float) -> CommandResult:
    """Send one command and wait for its answer."""
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:
        return s.call(command, timeout)


def pages(call: Callable[[Command], CommandResult], command: Command) -> Iterator[CommandResult]:
    """Every page of a paged listing (`status`, `rules`, `adapters`: proto/paging.py): `command` from
    its offset, then again from each answer's `next_offset` until that is None. A refusal is yielded
    and ends it; an answer whose next page does not move on raises CommandRefused."""
    offset = int(getattr(command.request, "offset", 0))
    while True:
        result = call(command)
        yield result
        following = result.data.get("next_offset") if result.ok else None
        if following is None:
            return
        if not isinstance(following, int) or following <= offset:
            raise CommandRefused(
                f"the orchestrator's {command.op} answer from offset {offset} goes on at {following!r}, not past it"
            )
        offset = following
        command = Command(command.request.model_copy(update={"offset": offset}))


@dataclass(frozen=True)
class TargetListing:
    """A per-target listing (`rules`, `tools`, `agents`): targets → name → spec, merged over the pages
    fetched; `page` is the last answer's data and `next_offset` where the next page starts (one page)."""

    targets: dict[str, Any]
    page: dict[str, Any]
    next_offset: Any


def target_listing(
    call: Callable[[Command], CommandResult],
    command: Command,
    one_page: bool,
    refused: Callable[[CommandResult], Exception],
) -> TargetListing:
    """Every page of a per-target listing, or only the first (`one_page`, as `--limit` asks); a refusal
    raises what `refused` makes of it."""
    targets: dict[str, Any] = {}
    page: dict[str, Any] = {}
    for r in pages(call, command):
        if not r.ok:
            raise refused(r)
        page = r.data
        if one_page:
            return TargetListing(dict(r.data.get("targets", {})), page, r.data.get("next_offset"))
        targets.update(r.data.get("targets", {}))
    return TargetListing(targets, page, None)


def refusal(result: CommandResult) -> str:
    """A failed command's answer as the CLI prints it: the error code, then the message."""
    return f"refused ({result.code or 'no code'}): {result.message}"
