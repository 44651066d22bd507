"""The strict base of every settings section (Frigate-style): each field is declared once, in one
section, with its type, default, doc line and environment variable; a part's settings class is its
sections plus its own fields.

- `env_prefix="EDGEFLEET_"`: field `site` is `EDGEFLEET_SITE`, the same name in every part.
- `extra="forbid"`: a keyword argument or config-file key that names no field is an error, not
  silently dropped (a typo in an override must not fall back to a default unnoticed).
- `validate_default=True`: defaults go through the same validators as set values.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class StrictSettings(BaseSettings):
    """Base of every settings section and of every part's settings."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="forbid", validate_default=True)
