"""Settings of the operator CLI: every field has a default, a doc line and an environment variable."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FleetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="ignore")

    node: str = Field(default="127.0.0.1:50051", description="Node address host:port (EDGEFLEET_NODE)")
    timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=120.0, description="Deadline of one CLI call in seconds (EDGEFLEET_TIMEOUT_S)"
    )
