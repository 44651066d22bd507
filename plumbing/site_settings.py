"""The site settings section every part shares: which site, its topic root, the broker (MQTT
section), the TLS files and the insecure switch (TLS section), and logging.

Node, orchestrator, CLI and console settings all extend `SiteSettings` and declare none of these
fields again, so each is validated the same way everywhere: a site name that is not a valid topic
level, a topic root that cannot be built, or a log format that is not `json` or `text` is refused
at start by every part, with the same message.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from edgefleet.plumbing.transport_security import TransportSecurity
from edgefleet.proto.topics import Topics, check_name

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["json", "text"]


class SiteSettings(TransportSecurity):
    """The site section: site, topic root, MQTT, TLS, the insecure switch and logging."""

    site: str = Field(default="default", description="The site's name, a topic level (EDGEFLEET_SITE)")
    topic_root: str = Field(
        default="edgefleet/{site}/", description="Root of every MQTT topic; {site} is replaced (EDGEFLEET_TOPIC_ROOT)"
    )
    log_level: LogLevel = Field(default="INFO", description="Log level (EDGEFLEET_LOG_LEVEL)")
    log_format: LogFormat = Field(
        default="json", description="json: one object a line; text: for a terminal (EDGEFLEET_LOG_FORMAT)"
    )

    @field_validator("site")
    @classmethod
    def _site(cls, v: str) -> str:
        return check_name("site", v)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, v: object) -> object:
        return v.strip().upper() if isinstance(v, str) else v  # `info` is INFO

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_any_case(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v  # `TEXT` is text

    @model_validator(mode="after")
    def _topics(self) -> SiteSettings:
        self.topics()  # a topic root that cannot be built is an error at start, not at the first publish
        return self

    def topics(self) -> Topics:
        """The site's topics under its root."""
        try:
            return Topics.for_site(self.site, self.topic_root)
        except (KeyError, IndexError) as e:  # str.format: a placeholder other than {site}
            raise ValueError(
                f"topic root {self.topic_root!r} may use only the placeholder {{site}} (found {{{e.args[0]}}})"
            ) from None
