"""Settings of the operator CLI: the site section (plumbing/site_settings.py), the balena section and
the CLI's own fields; every field has a default, a doc line and an environment variable.

Where a value comes from, strongest first: a command-line flag, the environment (EDGEFLEET_*),
the per-user config file (`config_path()`: `$EDGEFLEET_CLI_CONFIG`, else
`$XDG_CONFIG_HOME/edgefleet/cli.toml`, else `~/.config/edgefleet/cli.toml`), the default.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from edgefleet.fleet.balena.settings import BalenaSettings
from edgefleet.plumbing.site_settings import SiteSettings

CONFIG_ENV = "EDGEFLEET_CLI_CONFIG"


class ConfigFileError(ValueError):
    """The CLI's config file cannot be used; the message names the file and the problem."""


def config_path() -> Path:
    # Read raw on purpose: these say where the settings file is, so they cannot come from it.
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgefleet" / "cli.toml"


class _ConfigFile(PydanticBaseSettingsSource):
    """`key = value` lines of the config file, named like the fields (mqtt_url, site, node, …)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.path = config_path()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file

    def __call__(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigFileError(f"cannot read the CLI config file {self.path}: {e}") from e
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigFileError(f"{self.path} is not valid TOML: {e}") from e
        known = set(self.settings_cls.model_fields)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigFileError(
                f"{self.path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return data


class FleetSettings(SiteSettings, BalenaSettings):
    node: str = Field(default="127.0.0.1:50051", description="Node address host:port (EDGEFLEET_NODE)")
    api_key: SecretStr | None = Field(
        default=None,
        description="API key sent to the front door (`--node` at its gRPC address); never logged (EDGEFLEET_API_KEY)",
    )
    node_name: str = Field(
        default="",
        description="The node id its certificate must carry; empty: the host of EDGEFLEET_NODE must be in "
        "the certificate (EDGEFLEET_NODE_NAME)",
    )
    timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=120.0, description="Deadline of one CLI call in seconds (EDGEFLEET_TIMEOUT_S)"
    )
    operator_key_file: Path | None = Field(
        default=None,
        description="The operator's private key that signs every command (the enrolled bundle's client.key); "
        "empty: commands go unsigned (EDGEFLEET_OPERATOR_KEY_FILE)",
    )
    operator_name: str = Field(
        default="",
        description="The operator's enrolled name; empty: the CN of client.crt beside the key "
        "(EDGEFLEET_OPERATOR_NAME)",
    )
    balena_mqtt_url: str | None = Field(
        default=None,
        description="`fleet balena sync`: the site broker as balena devices reach it (--device-mqtt-url); a "
        "device's edgefleet-mqtt-url tag overrides it (EDGEFLEET_BALENA_MQTT_URL)",
    )

    def operator_key_path(self) -> Path | None:
        """The key that signs commands: EDGEFLEET_OPERATOR_KEY_FILE, else (secure mode) the key of
        the operator's enrollment bundle, EDGEFLEET_MQTT_KEY_FILE."""
        if self.operator_key_file is not None:
            return self.operator_key_file
        return None if self.insecure else self.mqtt_key_file

    @field_validator("operator_key_file", "balena_mqtt_url", mode="before")
    @classmethod
    def _cli_paths_empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (init) > environment > config file."""
        return init_settings, env_settings, _ConfigFile(settings_cls)
