"""The balena section of the CLI's and the console's settings: where balena's API is, and the broker
URL balena devices are given. The token is not a setting of edgefleet: balena-sdk reads
BALENA_API_KEY (or the one `balena login` stored) itself, by its own convention."""

from __future__ import annotations

from pydantic import Field, field_validator

from edgefleet.plumbing.settings_base import StrictSettings


class BalenaSettings(StrictSettings):
    """balena's API endpoint (an openBalena, say); empty: balena-sdk's own settings."""

    balena_api_url: str | None = Field(
        default=None,
        description="balena API, e.g. an openBalena; empty: balena-sdk's settings (EDGEFLEET_BALENA_API_URL)",
    )

    @field_validator("balena_api_url", mode="before")
    @classmethod
    def _api_url_empty_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v
