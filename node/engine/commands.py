"""Commands other threads send to the engine thread (it applies them between decode steps)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from edgefleet.node.engine.adapters import LoadedAdapter
from edgefleet.node.engine.sampler import Sampler
from edgefleet.node.engine.types import AdapterUse, GenerationRequest


@dataclass(frozen=True)
class EmbedTask:
    tokens: list[list[int]]
    normalize: bool
    future: Future[list[list[float]]]


@dataclass(frozen=True)
class Submit:
    req: GenerationRequest
    sampler: Sampler


@dataclass(frozen=True)
class Cancel:
    request_id: str


@dataclass(frozen=True)
class SlotLimit:
    n: int


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class LoadAdapter:
    name: str
    version: str
    path: Path
    sha256: str
    size: int
    future: Future[LoadedAdapter]


@dataclass(frozen=True)
class UnloadAdapter:
    name: str
    future: Future[bool]


@dataclass(frozen=True)
class Release:
    use: AdapterUse


Command = Submit | Cancel | SlotLimit | EmbedTask | Stop | LoadAdapter | UnloadAdapter | Release
