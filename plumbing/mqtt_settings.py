"""The one MQTT settings section: broker URL, credentials (secret) and TLS files.

Node, orchestrator and CLI settings all inherit it, so the same EDGEFLEET_MQTT_* variables mean
the same thing everywhere, and every MqttLink is built from it the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from edgefleet.plumbing.mqtt_link import BrokerAddress

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"


class MqttSettings(BaseSettings):
    """Inherited by each part's settings (their env_prefix EDGEFLEET_ applies)."""

    mqtt_url: str | None = Field(
        default=DEFAULT_MQTT_URL,
        description="Site broker, mqtt://host:1883 or mqtts://host:8883 (EDGEFLEET_MQTT_URL)",
    )
    mqtt_username: str | None = Field(default=None, description="Broker user name (EDGEFLEET_MQTT_USERNAME)")
    mqtt_password: SecretStr | None = Field(
        default=None, description="Broker password; never logged (EDGEFLEET_MQTT_PASSWORD)"
    )
    mqtt_ca_file: Path | None = Field(
        default=None, description="CA file for mqtts:// brokers; empty: system CAs (EDGEFLEET_MQTT_CA_FILE)"
    )
    mqtt_cert_file: Path | None = Field(
        default=None, description="Client certificate for brokers that ask for one (EDGEFLEET_MQTT_CERT_FILE)"
    )
    mqtt_key_file: Path | None = Field(
        default=None, description="Private key of the client certificate (EDGEFLEET_MQTT_KEY_FILE)"
    )

    @field_validator("mqtt_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v:
            BrokerAddress.parse(v)  # a clear error at start, not at the first connect
        return v or None

    def mqtt_link_options(self) -> dict[str, Any]:
        """Keyword arguments of MqttLink for this section (credentials and TLS)."""
        return {
            "username": self.mqtt_username,
            "password": self.mqtt_password.get_secret_value() if self.mqtt_password else None,
            "ca_file": str(self.mqtt_ca_file) if self.mqtt_ca_file else None,
            "cert_file": str(self.mqtt_cert_file) if self.mqtt_cert_file else None,
            "key_file": str(self.mqtt_key_file) if self.mqtt_key_file else None,
        }
