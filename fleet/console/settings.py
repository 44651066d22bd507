"""Settings of the web console: the site section (plumbing/site_settings.py), the balena section and
the console's own fields; every field has a default, a doc line and an environment variable."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator

from edgefleet.fleet.balena.settings import BalenaSettings
from edgefleet.fleet.settings import FleetSettings
from edgefleet.plumbing.listen_address import is_loopback, loopback_address, warn_exposed
from edgefleet.plumbing.site_settings import SiteSettings
from edgefleet.plumbing.transport_security import TlsFiles


def _host_port(v: str, what: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {v!r} must look like HOST:PORT")
    return v


class ConsoleSettings(SiteSettings, BalenaSettings):
    console_address: str = Field(
        default="0.0.0.0:8088",
        description="Where the console listens, HOST:PORT; unset with EDGEFLEET_INSECURE: 127.0.0.1:8088 "
        "(EDGEFLEET_CONSOLE_ADDRESS)",
    )
    console_data_file: Path = Field(
        default=Path.home() / ".local" / "share" / "edgefleet" / "console.db",
        description="SQLite file of operator accounts and sessions (EDGEFLEET_CONSOLE_DATA_FILE)",
    )
    front_door_address: str = Field(
        default="127.0.0.1:50050",
        description="gRPC edgefleet.v1.Inference the playground talks to, HOST:PORT (EDGEFLEET_FRONT_DOOR_ADDRESS)",
    )
    console_api_key: SecretStr | None = Field(
        default=None,
        description="API key the playground sends to the front door's gRPC listener; never logged "
        "(EDGEFLEET_CONSOLE_API_KEY)",
    )
    console_balena_fleet: str = Field(
        default="",
        description="A balena fleet (slug, uuid or id) whose devices the fleet page shows beside the nodes, "
        "flagging disagreements; token from BALENA_API_KEY; empty: none (EDGEFLEET_CONSOLE_BALENA_FLEET)",
    )
    console_balena_poll_s: Annotated[float, Field(ge=5, le=3600)] = Field(
        default=30.0,
        description="How often the console asks balena for the fleet's devices (EDGEFLEET_CONSOLE_BALENA_POLL_S)",
    )
    console_session_hours: Annotated[float, Field(gt=0)] = Field(
        default=12.0, description="Hours a login lasts (EDGEFLEET_CONSOLE_SESSION_HOURS)"
    )
    console_login_attempts: Annotated[int, Field(ge=1)] = Field(
        default=5,
        description="Failed logins allowed per client address and account each minute, four times that per "
        "client address; never per account alone (EDGEFLEET_CONSOLE_LOGIN_ATTEMPTS)",
    )
    console_status_poll_s: Annotated[float, Field(gt=0, le=1)] = Field(
        default=1.0,
        description="How often the console asks the orchestrator for `status` (EDGEFLEET_CONSOLE_STATUS_POLL_S)",
    )
    console_tls_cert_file: Path | None = Field(
        default=None,
        description="Serve HTTPS with this certificate; empty: the console's site certificate "
        "(EDGEFLEET_TLS_CERT_FILE / EDGEFLEET_MQTT_CERT_FILE), plain HTTP only with EDGEFLEET_INSECURE "
        "(EDGEFLEET_CONSOLE_TLS_CERT_FILE)",
    )
    console_tls_key_file: Path | None = Field(
        default=None, description="Private key of the certificate (EDGEFLEET_CONSOLE_TLS_KEY_FILE)"
    )

    @field_validator("console_address")
    @classmethod
    def _address(cls, v: str) -> str:
        return _host_port(v, "console address")

    @model_validator(mode="after")
    def _insecure_console_listens_on_loopback(self) -> ConsoleSettings:
        """Insecure (plain HTTP): the console on 127.0.0.1 unless an address is set."""
        if self.insecure and "console_address" not in self.model_fields_set:
            self.console_address = loopback_address(self.console_address)
        return self

    def warn_if_insecure(self, log: logging.Logger, part: str) -> None:
        super().warn_if_insecure(log, part)
        if self.insecure and not is_loopback(self.host_port()[0]):
            warn_exposed(log, part, {"EDGEFLEET_CONSOLE_ADDRESS": self.console_address})

    @field_validator("front_door_address")
    @classmethod
    def _front_door(cls, v: str) -> str:
        return _host_port(v, "front door address")

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.console_address.rpartition(":")
        return host.strip("[]"), int(port)

    def fleet_settings(self) -> FleetSettings:
        """The CLI's settings with this console's site section (broker, site, TLS, the insecure switch)
        and balena section: the console sends commands the CLI's way."""
        shared = set(SiteSettings.model_fields) | set(BalenaSettings.model_fields)
        return FleetSettings(**{name: getattr(self, name) for name in shared})

    def https_files(self) -> tuple[Path, Path] | None:
        """(certificate, key) to serve HTTPS with, or None for plain HTTP (insecure mode only)."""
        if self.console_tls_cert_file is not None:
            return self.console_tls_cert_file, self.console_tls_key_file or self.console_tls_cert_file
        tls: TlsFiles | None = None if self.insecure else self.tls_files()
        return (tls.cert, tls.key) if tls is not None else None

    def check_security(self) -> None:
        """Secure mode: mqtts:// with the console's operator certificate, which also serves HTTPS
        and signs the commands the console sends."""
        self.require_secure_mqtt()
        self.require_tls("the console (HTTPS, and gRPC to the front door)")
