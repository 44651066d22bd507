"""Thermal governor: reads a thermal zone and decides throttling (fewer slots) and shedding.

Above throttle_c the node runs `throttle_slots` slots; above shed_c it refuses new requests
with UNAVAILABLE. Both clear by themselves once the temperature is `hysteresis_c` below the
threshold again, so a reading hovering at a limit does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefleet.node.profiles import ThermalSection

HYSTERESIS_C = 2.0


@dataclass(frozen=True)
class ThermalState:
    available: bool
    temperature_c: float
    throttled: bool
    shedding: bool


def read_zone_celsius(path: Path) -> float | None:
    """A sysfs thermal zone holds millidegrees Celsius; None when unreadable."""
    try:
        raw = path.read_text().strip()
        value = float(raw)
    except (OSError, ValueError):
        return None
    return value / 1000.0 if abs(value) > 1000 else value


class ThermalGovernor:
    def __init__(self, cfg: ThermalSection, zone: Path) -> None:
        self.cfg = cfg
        self.zone = zone
        self.state = ThermalState(False, 0.0, False, False)

    def update(self, temperature_c: float | None) -> ThermalState:
        """Pure decision from one reading and the previous state."""
        prev = self.state
        if temperature_c is None:
            self.state = ThermalState(False, 0.0, False, False)
            return self.state
        t = temperature_c
        throttled = t >= self.cfg.throttle_c or (prev.throttled and t > self.cfg.throttle_c - HYSTERESIS_C)
        shedding = t >= self.cfg.shed_c or (prev.shedding and t > self.cfg.shed_c - HYSTERESIS_C)
        self.state = ThermalState(True, t, throttled or shedding, shedding)
        return self.state

    def poll(self) -> ThermalState:
        return self.update(read_zone_celsius(self.zone))
