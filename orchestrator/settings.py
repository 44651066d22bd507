"""Orchestrator settings: every field has a default, a doc line and an environment variable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from edgefleet.plumbing.mqtt_settings import DEFAULT_MQTT_URL, MqttSettings
from edgefleet.proto.topics import check_name


def _default_db() -> Path:
    return Path.home() / ".local" / "share" / "edgefleet" / "orchestrator.db"


class OrchestratorSettings(MqttSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="ignore", validate_default=True)

    mqtt_url: str = Field(default=DEFAULT_MQTT_URL, description="Site broker (EDGEFLEET_MQTT_URL)")
    site: str = Field(default="default", description="The site this orchestrator runs (EDGEFLEET_SITE)")
    topic_root: str = Field(default="edgefleet/{site}/", description="Root of every MQTT topic (EDGEFLEET_TOPIC_ROOT)")
    registry_db: Path = Field(
        default_factory=_default_db, description="The fleet registry, SQLite (EDGEFLEET_REGISTRY_DB)"
    )
    site_key: Path | None = Field(
        default=None,
        description="The site's Ed25519 private key that signs artifact manifests; empty: "
        "~/.config/edgefleet/<site>.key, as `edgefleet fleet init-site` writes it (EDGEFLEET_SITE_KEY)",
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level (EDGEFLEET_LOG_LEVEL)"
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one object a line; text: for a terminal (EDGEFLEET_LOG_FORMAT)"
    )

    @field_validator("site")
    @classmethod
    def _site(cls, v: str) -> str:
        return check_name("site", v)

    def site_key_path(self) -> Path:
        return self.site_key or Path.home() / ".config" / "edgefleet" / f"{self.site}.key"
