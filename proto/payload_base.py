"""The base of every MQTT payload: a version field, strict validation, compact JSON."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

PAYLOAD_VERSION = 1


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = 1

    def dumps(self) -> bytes:
        return self.model_dump_json().encode()


def _now() -> float:
    return round(time.time(), 3)
