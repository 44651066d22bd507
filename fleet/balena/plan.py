"""What `edgefleet fleet balena sync` wants each device to run with: data in, plan out (no I/O).

A device's edgefleet settings come from its balena device type (→ firmware profile) and its tags:

- `edgefleet-group`: comma separated edgefleet groups (required: a device without it is reported, not guessed)
- `edgefleet-profile`: a firmware profile, overriding the device-type table (for types the table lacks)
- `edgefleet-node-id`: the node id; default: the balena device name
- `edgefleet-mqtt-url`: the site broker as this device reaches it; default: `--device-mqtt-url`
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgefleet.proto.topics import valid_name

# balena device-type slug → firmware profile. Types not listed are reported (tag `edgefleet-profile` to add one).
DEVICE_TYPE_PROFILES: dict[str, str] = {
    "raspberrypi4-64": "rpi4-4gb",
    "raspberrypi5": "rpi5-8gb",
    "jetson-orin-nano-devkit-nvme": "jetson-orin-nano-8gb",
    "jetson-agx-orin-devkit-64gb": "jetson-agx-orin-64gb",
}
TAG_GROUP, TAG_PROFILE, TAG_NODE_ID, TAG_MQTT_URL = (
    "edgefleet-group",
    "edgefleet-profile",
    "edgefleet-node-id",
    "edgefleet-mqtt-url",
)
VARIABLES = ("EDGEFLEET_NODE_ID", "EDGEFLEET_PROFILE", "EDGEFLEET_GROUPS", "EDGEFLEET_MQTT_URL")


@dataclass(frozen=True)
class Device:
    id: int
    uuid: str
    name: str
    device_type: str
    online: bool
    os_version: str
    release: str
    tags: dict[str, str]
    env: dict[str, str]

    @classmethod
    def from_pine(cls, row: dict[str, Any]) -> Device:
        """One row of GET /v7/device with the $expand that `client.DEVICE_OPTIONS` asks for."""

        def first(key: str, field_name: str) -> str:
            value = row.get(key) or []
            if isinstance(value, list):
                value = value[0] if value else {}
            return str(value.get(field_name, "") or "") if isinstance(value, dict) else ""

        return cls(
            id=int(row["id"]),
            uuid=str(row.get("uuid", "")),
            name=str(row.get("device_name", "")),
            device_type=first("is_of__device_type", "slug"),
            online=bool(row.get("is_online")),
            os_version=str(row.get("os_version") or ""),
            release=first("is_running__release", "commit")[:7],
            tags={t["tag_key"]: str(t.get("value", "")) for t in row.get("device_tag") or []},
            env={v["name"]: str(v.get("value", "")) for v in row.get("device_environment_variable") or []},
        )


@dataclass(frozen=True)
class Change:
    name: str
    current: str | None
    wanted: str


@dataclass
class DevicePlan:
    device: Device
    wanted: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    node_id: str = ""
    groups: list[str] | None = None  # the tags' groups, when they go to the orchestrator instead of a variable

    @property
    def changes(self) -> list[Change]:
        return [Change(k, self.device.env.get(k), v) for k, v in self.wanted.items() if self.device.env.get(k) != v]


def plan_device(
    device: Device, profiles: set[str], default_mqtt_url: str | None, groups_as_variable: bool = True
) -> DevicePlan:
    """The settings `device` should have, or the problems that keep it from being synced.
    `groups_as_variable=False`: the groups are left out of the variables, for the orchestrator to
    assign at run time (`plan.groups`)."""
    p = DevicePlan(device)
    tags = device.tags
    profile = tags.get(TAG_PROFILE) or DEVICE_TYPE_PROFILES.get(device.device_type)
    if profile is None:
        p.problems.append(
            f"unknown device type {device.device_type or '(none)'}: no firmware profile for it; "
            f"tag the device {TAG_PROFILE}=PROFILE"
        )
    elif profile not in profiles:
        p.problems.append(f"firmware profile {profile!r} does not exist (known: {', '.join(sorted(profiles))})")
    if TAG_GROUP not in tags:
        p.problems.append(f"no {TAG_GROUP} tag: tag the device {TAG_GROUP}=GROUP[,GROUP...]")
    groups = [g.strip() for g in tags.get(TAG_GROUP, "").split(",") if g.strip()]
    bad = [g for g in groups if not valid_name(g)]
    if bad:
        p.problems.append(f"invalid group name(s) in {TAG_GROUP}: {', '.join(bad)}")
    elif TAG_GROUP in tags and not groups:
        p.problems.append(f"the {TAG_GROUP} tag is empty")
    node_id = tags.get(TAG_NODE_ID) or device.name
    if not valid_name(node_id):
        p.problems.append(f"node id {node_id!r} is invalid: tag the device {TAG_NODE_ID}=ID")
    mqtt_url = tags.get(TAG_MQTT_URL) or default_mqtt_url
    if not mqtt_url:
        p.problems.append(f"no broker: pass --device-mqtt-url or tag the device {TAG_MQTT_URL}=URL")
    if not p.problems:
        assert profile is not None and mqtt_url is not None
        p.wanted = {
            "EDGEFLEET_NODE_ID": node_id,
            "EDGEFLEET_PROFILE": profile,
            "EDGEFLEET_GROUPS": ",".join(dict.fromkeys(groups)),
            "EDGEFLEET_MQTT_URL": mqtt_url,
        }
        p.node_id = node_id
        if not groups_as_variable:
            del p.wanted["EDGEFLEET_GROUPS"]
            p.groups = list(dict.fromkeys(groups))
    return p


def describe(p: DevicePlan) -> list[str]:
    """Lines for one device: what it is, then each variable current → wanted (or why it is skipped)."""
    d = p.device
    state = "online" if d.online else "offline"
    tags = ", ".join(f"{k}={v}" for k, v in sorted(d.tags.items())) or "(no tags)"
    # Values of the device's own variables may be secrets: only edgefleet's are shown.
    others = sorted(k for k in d.env if k not in VARIABLES)
    lines = [
        f"{d.name} ({d.uuid[:7]}): {d.device_type or '?'}, {state}, {d.os_version or 'OS ?'}, "
        f"release {d.release or '-'}",
        f"  tags: {tags}",
    ]
    if others:
        lines.append(f"  other variables: {', '.join(others)}")
    for problem in p.problems:
        lines.append(f"  SKIPPED: {problem}")
    for name in (v for v in VARIABLES if v in p.wanted):
        cur, want = d.env.get(name), p.wanted[name]
        if cur == want:
            lines.append(f"    {name}={want}")
        else:
            lines.append(f"  - {name}={cur}" if cur is not None else f"  - {name} (unset)")
            lines.append(f"  + {name}={want}")
    return lines
