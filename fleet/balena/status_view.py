"""balena's view beside edgefleet's: each device's online state in balena joined with its node's
state in the fleet view (`status` through the orchestrator). Data in, rows out (no I/O).

Flagged: a device online in balena whose node is not online in edgefleet (the service crashed, has
no identity yet, cannot reach the broker), a device offline in balena whose node still says online
(its last will not seen yet), and a node of the site that no device of the balena fleet runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgefleet.fleet.balena.plan import TAG_NODE_ID, Device


@dataclass(frozen=True)
class StatusRow:
    device: str  # balena device name ("-": not in the balena fleet)
    node_id: str
    balena: str  # online, offline, "-"
    edgefleet: str  # online, offline, failed, "not seen"
    release: str
    flag: str  # empty when both views agree

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def node_id_of(device: Device) -> str:
    """The node id a device runs as: its EDGEFLEET_NODE_ID variable, else its tag, else its name."""
    return device.env.get("EDGEFLEET_NODE_ID") or device.tags.get(TAG_NODE_ID) or device.name


def join(devices: list[Device], nodes: list[dict[str, Any]]) -> list[StatusRow]:
    states = {str(n.get("node_id")): str(n.get("state", "unknown")) for n in nodes}
    rows: list[StatusRow] = []
    seen: set[str] = set()
    for d in devices:
        node = node_id_of(d)
        seen.add(node)
        balena = "online" if d.online else "offline"
        state = states.get(node, "not seen")
        flag = ""
        if d.online and state != "online":
            flag = f"online in balena, node {state}"
        elif not d.online and state == "online":
            flag = "offline in balena, node still online"
        rows.append(StatusRow(d.name, node, balena, state, d.release or "-", flag))
    for node, state in sorted(states.items()):
        if node not in seen:
            rows.append(StatusRow("-", node, "-", state, "-", "not a device of this balena fleet"))
    return rows


def render(rows: list[StatusRow]) -> list[str]:
    head = f"{'DEVICE':<20} {'NODE':<20} {'BALENA':<8} {'EDGEFLEET':<10} {'RELEASE':<8} FLAG"
    lines = [head]
    for r in rows:
        mark = f"! {r.flag}" if r.flag else ""
        lines.append(f"{r.device:<20} {r.node_id:<20} {r.balena:<8} {r.edgefleet:<10} {r.release:<8} {mark}".rstrip())
    flagged = sum(1 for r in rows if r.flag)
    lines.append(f"{len(rows)} rows, {flagged} flagged")
    return lines
