"""Orchestrator settings: the site section (plumbing/site_settings.py) and the orchestrator's own
fields; every field has a default, a doc line and an environment variable."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from edgefleet.plumbing.actuator_settings import ActuatorSettings
from edgefleet.plumbing.listen_address import is_loopback, loopback_address, warn_exposed
from edgefleet.plumbing.site_settings import SiteSettings
from edgefleet.plumbing.transport_security import SecuritySettingsError


def _host_port(v: str) -> bool:
    host, sep, port = v.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 <= int(port) <= 65535)


def split_address(v: str) -> tuple[str, int]:
    """host:port (a host in brackets for IPv6) → (host, port)."""
    host, _, port = v.rpartition(":")
    return host.strip("[]"), int(port)


_LISTENERS = ("front_door_address", "openai_address")  # listeners with a default address


def _default_db() -> Path:
    return Path.home() / ".local" / "share" / "edgefleet" / "orchestrator.db"


class OrchestratorSettings(SiteSettings, ActuatorSettings):
    registry_db: Path = Field(
        default_factory=_default_db, description="The fleet registry, SQLite (EDGEFLEET_REGISTRY_DB)"
    )
    site_key: Path | None = Field(
        default=None,
        description="The site's Ed25519 private key that signs artifact manifests; empty: "
        "~/.config/edgefleet/<site>.key, as `edgefleet fleet init-site` writes it (EDGEFLEET_SITE_KEY)",
    )
    require_signed_commands: bool | None = Field(
        default=None,
        description="Run only operator commands signed by a trusted, unrevoked operator, fresh (±120 s) and "
        "not replayed; empty: on unless EDGEFLEET_INSECURE; false: any command is obeyed (logged loudly at "
        "start) and only allowed in insecure mode (EDGEFLEET_REQUIRE_SIGNED_COMMANDS)",
    )
    operator_keys: Path = Field(
        default_factory=lambda: Path.home() / ".config" / "edgefleet" / "pki",
        description="The site PKI's public/ directory (or the PKI directory above it) whose operator identities "
        "(identities.json, certs/<name>.crt, ca.crt; no private key) may sign commands (EDGEFLEET_OPERATOR_KEYS)",
    )
    artifact_dir: Path = Field(
        default_factory=lambda: Path.home() / ".local" / "share" / "edgefleet" / "artifacts",
        description="Where uploaded artifacts and their signed manifests are kept (EDGEFLEET_ARTIFACT_DIR)",
    )
    artifact_chunk_bytes: Annotated[int, Field(ge=1024, le=4 * 1024 * 1024)] = Field(
        default=256 * 1024, description="Bytes per artifact chunk sent to nodes (EDGEFLEET_ARTIFACT_CHUNK_BYTES)"
    )
    artifact_chunk_interval_ms: Annotated[float, Field(ge=0, le=60000)] = Field(
        default=0.0,
        description="Pause between two chunks, to leave room on a weak site link; 0: none "
        "(EDGEFLEET_ARTIFACT_CHUNK_INTERVAL_MS)",
    )
    max_model_bytes: Annotated[int, Field(ge=1024, le=2 * 1024**3)] = Field(
        default=2 * 1024**3,
        description="The largest base model (GGUF) `push-model` takes, in bytes; a larger one is refused "
        "(EDGEFLEET_MAX_MODEL_BYTES)",
    )
    front_door_address: str = Field(
        default="0.0.0.0:50050",
        description="gRPC front door (edgefleet.v1.Inference for the whole site), host:port; empty: off; unset "
        "with EDGEFLEET_INSECURE: 127.0.0.1:50050 (EDGEFLEET_FRONT_DOOR_ADDRESS)",
    )
    openai_address: str = Field(
        default="0.0.0.0:8080",
        description="OpenAI-compatible HTTP API (and /metrics), host:port; empty: off; unset with "
        "EDGEFLEET_INSECURE: 127.0.0.1:8080 (EDGEFLEET_OPENAI_ADDRESS)",
    )
    metrics_address: str = Field(
        default="",
        description="A listener of its own for Prometheus /metrics: plaintext, no authentication, so bind it to "
        "127.0.0.1 or an internal network; empty: off (the OpenAI listener's /metrics needs an operator or "
        "orchestrator certificate) (EDGEFLEET_METRICS_ADDRESS)",
    )
    route_affinity: bool = Field(
        default=True,
        description="Requests sharing a prompt prefix (template, system prompt, collection) go to the same "
        "node while it has a free slot (EDGEFLEET_ROUTE_AFFINITY)",
    )
    route_buffer_size: Annotated[int, Field(ge=0, le=100000)] = Field(
        default=64,
        description="Requests that may wait for a free slot when every eligible node is full; beyond: "
        "RESOURCE_EXHAUSTED / HTTP 429 at once (EDGEFLEET_ROUTE_BUFFER_SIZE)",
    )
    route_buffer_wait_s: Annotated[float, Field(ge=0, le=600)] = Field(
        default=10.0,
        description="Longest wait in that buffer before RESOURCE_EXHAUSTED / HTTP 429 (EDGEFLEET_ROUTE_BUFFER_WAIT_S)",
    )
    route_first_token_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        default=30.0,
        description="A node that sends no first token within this is failed over "
        "(EDGEFLEET_ROUTE_FIRST_TOKEN_TIMEOUT_S)",
    )
    route_max_attempts: Annotated[int, Field(ge=1, le=10)] = Field(
        default=3,
        description="Nodes tried per request, the first included, while no token has been sent "
        "(EDGEFLEET_ROUTE_MAX_ATTEMPTS)",
    )
    route_cooldown_failures: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=3,
        description="Failures within the cooldown window that take a node out of rotation "
        "(EDGEFLEET_ROUTE_COOLDOWN_FAILURES)",
    )
    route_cooldown_window_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0, description="Window those failures are counted in (EDGEFLEET_ROUTE_COOLDOWN_WINDOW_S)"
    )
    route_cooldown_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=15.0,
        description="How long a failing node is left out before it comes back by itself (EDGEFLEET_ROUTE_COOLDOWN_S)",
    )
    route_slots_when_unknown: Annotated[int, Field(ge=1, le=256)] = Field(
        default=1,
        description="Slots assumed on a node before its first telemetry (EDGEFLEET_ROUTE_SLOTS_WHEN_UNKNOWN)",
    )
    route_max_slots_per_node: Annotated[int, Field(ge=0, le=256)] = Field(
        default=0,
        description="Most front-door requests in flight on one node; 0: the usable slots it reports "
        "(EDGEFLEET_ROUTE_MAX_SLOTS_PER_NODE)",
    )
    route_probe_interval_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=5.0,
        description="Seconds between asking each online node what it serves (adapters, collections) "
        "(EDGEFLEET_ROUTE_PROBE_INTERVAL_S)",
    )
    front_door_auth: Literal["auto", "off", "keys"] = Field(
        default="auto",
        description="keys: every front-door request needs `authorization: Bearer <key>` (an API key from "
        "`edgefleet fleet keys create`) or a site client certificate; off: no authentication, logged as a "
        "warning, insecure mode only; auto: keys, or off with EDGEFLEET_INSECURE (EDGEFLEET_FRONT_DOOR_AUTH)",
    )
    front_door_client_certs: bool = Field(
        default=False,
        description="gRPC front door: require a site client certificate (mutual TLS; then it stands in for an "
        "API key). Off: TLS, and clients use API keys; HTTPS always takes either "
        "(EDGEFLEET_FRONT_DOOR_CLIENT_CERTS)",
    )
    front_door_identity_rpm: Annotated[int, Field(ge=0)] = Field(
        default=600,
        description="Requests per minute of a client certificate (operator, orchestrator) at the front door when "
        "no API key is bound to its name (`keys create --identity`); 0: no limit (EDGEFLEET_FRONT_DOOR_IDENTITY_RPM)",
    )
    front_door_identity_tpm: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="Tokens per minute of such a certificate; 0: no limit (EDGEFLEET_FRONT_DOOR_IDENTITY_TPM)",
    )
    api_keys_db: Path | None = Field(
        default=None,
        description="The front door's API keys, SQLite; empty: api-keys.db beside the registry (EDGEFLEET_API_KEYS_DB)",
    )
    request_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=300.0,
        description="Deadline of an HTTP request, and of a gRPC one that sets none (EDGEFLEET_REQUEST_TIMEOUT_S)",
    )

    rollout_tick_s: Annotated[float, Field(gt=0, le=60)] = Field(
        default=1.0,
        description="Seconds between two looks of the rollout driver at the fleet (nodes moved, soak over, "
        "health); an operator's verb wakes it at once (EDGEFLEET_ROLLOUT_TICK_S)",
    )
    rollout_case_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        default=60.0,
        description="Longest wait for one evaluation case's answer from one node; a case past it is scored "
        "failed (EDGEFLEET_ROLLOUT_CASE_TIMEOUT_S)",
    )

    @field_validator("front_door_address", "openai_address", "metrics_address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v and not _host_port(v):
            raise ValueError(f"{v!r} is not host:port (an empty value turns the listener off)")
        return v

    @model_validator(mode="after")
    def _insecure_front_door_listens_on_loopback(self) -> OrchestratorSettings:
        """Insecure (plaintext, no API keys): the front door's listeners on 127.0.0.1 unless an address is set."""
        if self.insecure:
            for name in _LISTENERS:
                if name not in self.model_fields_set:
                    setattr(self, name, loopback_address(getattr(self, name)))
        return self

    def exposed_listeners(self) -> dict[str, str]:
        """Insecure listeners on an address that is not loopback (set explicitly): setting → host:port."""
        if not self.insecure:
            return {}
        addresses = {f"EDGEFLEET_{name.upper()}": getattr(self, name) for name in (*_LISTENERS, "metrics_address")}
        return {env: a for env, a in addresses.items() if a and not is_loopback(split_address(a)[0])}

    def warn_if_insecure(self, log: logging.Logger, part: str) -> None:
        super().warn_if_insecure(log, part)
        warn_exposed(log, part, self.exposed_listeners())

    def api_keys_path(self) -> Path:
        return self.api_keys_db or self.registry_db.parent / "api-keys.db"

    def site_key_path(self) -> Path:
        return self.site_key or Path.home() / ".config" / "edgefleet" / f"{self.site}.key"

    def signed_commands_required(self) -> bool:
        return (not self.insecure) if self.require_signed_commands is None else self.require_signed_commands

    def front_door_auth_mode(self) -> Literal["off", "keys"]:
        if self.front_door_auth == "auto":
            return "off" if self.insecure else "keys"
        return self.front_door_auth

    def check_security(self) -> None:
        """Secure mode (the default) needs mqtts:// with the orchestrator's certificate, TLS for the
        front door and to the nodes, the site key, signed commands and front-door authentication."""
        self.require_secure_mqtt()
        self.require_tls("the front door and its connections to nodes")
        if self.insecure:
            return
        if not self.site_key_path().exists():
            raise SecuritySettingsError(
                f"desired state is signed with the site key, and {self.site_key_path()} does not exist: run "
                "`edgefleet fleet init-site` or set EDGEFLEET_SITE_KEY (EDGEFLEET_INSECURE=1: local development only)"
            )
        if self.require_signed_commands is False:
            raise SecuritySettingsError(
                "EDGEFLEET_REQUIRE_SIGNED_COMMANDS=false lets anyone on the broker command the fleet; "
                "it is allowed only with EDGEFLEET_INSECURE=1"
            )
        if self.front_door_auth == "off":
            raise SecuritySettingsError(
                "EDGEFLEET_FRONT_DOOR_AUTH=off opens the inference API to anyone on the network; "
                "it is allowed only with EDGEFLEET_INSECURE=1"
            )
        self._require_crl()

    def _require_crl(self) -> None:
        """The front door refuses revoked certificates only with the site's CRL: required when it listens."""
        if not (self.front_door_address or self.openai_address) or self.front_door_auth_mode() != "keys":
            return
        crl = self.tls_crl_file
        if crl is None or not crl.is_file():
            where = "is not set" if crl is None else f"is {crl}, which does not exist"
            raise SecuritySettingsError(
                f"the front door must refuse revoked certificates, and EDGEFLEET_TLS_CRL_FILE {where}: set it to the "
                "site's crl.pem (the PKI directory's, or a copy kept current; bundles/orchestrator/edgefleet.env from "
                "`edgefleet fleet init-pki` sets it) (EDGEFLEET_INSECURE=1: local development only)"
            )
