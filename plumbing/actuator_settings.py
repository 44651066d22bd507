"""The actuator section: where the site's actuators listen on MQTT. One setting for both ends that
use it, so it is validated the same way: the orchestrator refuses a publish tool outside these
filters when it is pushed, and a node refuses to publish outside them (the broker's ACL, written by
`broker-config --actuator-topic`, lets nodes write the same filters)."""

from __future__ import annotations

from pydantic import Field, field_validator

from edgefleet.plumbing.settings_base import StrictSettings
from edgefleet.proto.rules import check_topic_filter


class ActuatorSettings(StrictSettings):
    actuator_topics: str = Field(
        default="actions/#",
        description="MQTT filters where the site's actuators listen, comma separated: an agent's publish tool "
        "outside them is refused at push and by the node (EDGEFLEET_ACTUATOR_TOPICS)",
    )

    @field_validator("actuator_topics")
    @classmethod
    def _check_actuator_topics(cls, v: str) -> str:
        filters = [f.strip() for f in v.split(",") if f.strip()]
        if not filters:
            raise ValueError("name at least one MQTT filter, e.g. actions/#")
        for f in filters:
            check_topic_filter(f)
        return v

    def actuator_filters(self) -> list[str]:
        """EDGEFLEET_ACTUATOR_TOPICS as a list of MQTT filters."""
        return [f.strip() for f in self.actuator_topics.split(",") if f.strip()]
