"""The MQTT section of the site settings: broker URL, credentials (secret) and TLS files.

Every part's settings include it (through `SiteSettings`), so the same EDGEFLEET_MQTT_* variables
mean the same thing everywhere, and every MqttLink is built from it the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator

from edgefleet.plumbing.mqtt_link import BrokerAddress
from edgefleet.plumbing.settings_base import StrictSettings

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"


class MqttSettings(StrictSettings):
    """The site broker and how to log in to it."""

    # What an unset (or empty) EDGEFLEET_MQTT_URL means for a part: the orchestrator, the CLI and the
    # console talk to the local broker; a node runs without a control plane (NodeSettings sets "").
    default_mqtt_url: ClassVar[str] = DEFAULT_MQTT_URL

    mqtt_url: str = Field(
        default="",
        description="Site broker, mqtt://host:1883 or mqtts://host:8883; empty: mqtt://127.0.0.1:1883, on a node: "
        "no control plane (EDGEFLEET_MQTT_URL)",
    )
    mqtt_username: str | None = Field(default=None, description="Broker user name (EDGEFLEET_MQTT_USERNAME)")
    mqtt_password: SecretStr | None = Field(
        default=None, description="Broker password; never logged (EDGEFLEET_MQTT_PASSWORD)"
    )
    mqtt_ca_file: Path | None = Field(
        default=None, description="CA file for mqtts:// brokers; empty: system CAs (EDGEFLEET_MQTT_CA_FILE)"
    )
    mqtt_cert_file: Path | None = Field(
        default=None,
        description="Client certificate for brokers that ask for one; also shown on gRPC and HTTPS unless "
        "EDGEFLEET_TLS_CERT_FILE names another (EDGEFLEET_MQTT_CERT_FILE)",
    )
    mqtt_key_file: Path | None = Field(
        default=None, description="Private key of the client certificate (EDGEFLEET_MQTT_KEY_FILE)"
    )

    @field_validator("mqtt_url")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        v = v.strip() or cls.default_mqtt_url
        if v:
            BrokerAddress.parse(v)  # a clear error at start, not at the first connect
        return v

    @field_validator("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file", mode="before")
    @classmethod
    def _mqtt_files_empty_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    def mqtt_link_options(self) -> dict[str, Any]:
        """Keyword arguments of MqttLink for this section (credentials and TLS)."""
        return {
            "username": self.mqtt_username,
            "password": self.mqtt_password.get_secret_value() if self.mqtt_password else None,
            "ca_file": str(self.mqtt_ca_file) if self.mqtt_ca_file else None,
            "cert_file": str(self.mqtt_cert_file) if self.mqtt_cert_file else None,
            "key_file": str(self.mqtt_key_file) if self.mqtt_key_file else None,
        }
