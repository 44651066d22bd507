"""Bounds on what a node says about itself: its slots by its firmware profile, its model by the site's hash.

A node's status and telemetry are its own word, and on a broker without the ACL anyone's word: the
front door never routes on a claim it cannot bound.

Slots: a node uses at most the `[context] slots` of the firmware profile it names. The shipped
profiles (edgefleet.firmware_profiles/*.toml) are read as data: the orchestrator imports no node
code. A profile the orchestrator does not ship (a site's own file, a made-up name) gets the
smallest shipped profile's slots, the cautious end (1 when no profile can be read).

Models: node/model_catalog.py is the node's and states a hash for some catalogue entries only (a
GGUF path has none), so the fleet is the reference: the hash the site knows for a model name is
the sha256 most of the nodes naming it report (every node the fleet view knows, in any state); a
tie goes to the hash seen first. A node naming the model with another hash, or none while the
site knows one, is not routed for requests that name the model.
"""

from __future__ import annotations

import functools
import logging
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

log = logging.getLogger("edgefleet.orchestrator.node_claims")
PROFILES_PACKAGE = "edgefleet.firmware_profiles"


@dataclass(frozen=True)
class SlotCaps:
    """The most slots a node may use, by the profile name it announces."""

    by_profile: Mapping[str, int]
    unknown: int  # for a profile not in `by_profile`

    def cap(self, profile: str) -> int:
        return self.by_profile.get(profile, self.unknown)

    @classmethod
    def of(cls, by_profile: Mapping[str, int]) -> SlotCaps:
        return cls(MappingProxyType(dict(by_profile)), min(by_profile.values(), default=1))


@functools.cache
def shipped_slot_caps() -> SlotCaps:
    """`[context] slots` of every shipped profile, by its `[device] name` (what nodes announce)."""
    caps: dict[str, int] = {}
    for entry in resources.files(PROFILES_PACKAGE).iterdir():
        if not entry.name.endswith(".toml"):
            continue
        try:
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            log.warning("firmware profile not read: no slot cap from it", extra={"file": entry.name, "reason": str(e)})
            continue
        device, context = data.get("device") or {}, data.get("context") or {}
        name, slots = device.get("name") or entry.name.removesuffix(".toml"), context.get("slots")
        if isinstance(slots, int) and slots >= 1:
            caps[str(name)] = slots
    return SlotCaps.of(caps)


class ModelHashes:
    """Which sha256 the site knows for each model name (see the module's note); remembers first sightings."""

    def __init__(self) -> None:
        self._first: dict[tuple[str, str], int] = {}  # (model, sha256) → order of first sighting

    def seen(self, model: str, sha256: str) -> None:
        if model and sha256:
            self._first.setdefault((model, sha256), len(self._first))

    def site_hashes(self, claims: Iterable[tuple[str, str]]) -> dict[str, str]:
        """model → the site's hash, from every node's (model, sha256)."""
        votes: dict[str, Counter[str]] = {}
        for model, sha in claims:
            if model and sha:
                votes.setdefault(model, Counter())[sha] += 1
        return {model: self._pick(model, c) for model, c in votes.items()}

    def _pick(self, model: str, votes: Counter[str]) -> str:
        """The most reported hash; of equals, the one seen first."""
        return max(votes, key=lambda sha: (votes[sha], -self._first.get((model, sha), len(self._first))))
