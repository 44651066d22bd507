"""Settings of the operator CLI: every field has a default, a doc line and an environment variable."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from edgefleet.plumbing.mqtt_settings import DEFAULT_MQTT_URL, MqttSettings


class FleetSettings(MqttSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="ignore")

    node: str = Field(default="127.0.0.1:50051", description="Node address host:port (EDGEFLEET_NODE)")
    timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=120.0, description="Deadline of one CLI call in seconds (EDGEFLEET_TIMEOUT_S)"
    )
    mqtt_url: str = Field(default=DEFAULT_MQTT_URL, description="Site broker (EDGEFLEET_MQTT_URL)")
    site: str = Field(default="default", description="Site to operate (EDGEFLEET_SITE)")
    topic_root: str = Field(default="edgefleet/{site}/", description="Root of every MQTT topic (EDGEFLEET_TOPIC_ROOT)")
