"""Pages of a long command answer, and which nodes a `status` page holds: pure functions, no I/O.

An answer that lists the fleet (`status`, `rules`, `adapters`) carries one page: at most the
request's `limit` entries from its `offset`, and never more than `budget` bytes of JSON, so no
answer passes MAX_PAYLOAD_BYTES however many nodes a site has (a page is cut short instead, and
`next_offset` says where the next one starts; None: this was the last). Clients ask again from
`next_offset` until it is None (`fleet/control.py` `pages`).

A status page also carries the site's summary (every node, whatever the filter): counts by
state and by sync, out of sync, failed, and with errors. The filters and the summary read the
wire rows of `status` (a node as `CommandResult.data["nodes"]` holds it), so the orchestrator,
the CLI and the console select nodes the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from edgefleet.proto.payloads import MAX_PAYLOAD_BYTES

MAX_PAGE_LIMIT = 1000  # entries a request may ask for in one page
# JSON bytes of a page's entries: the rest of MAX_PAYLOAD_BYTES is for the summary and the envelope
PAGE_BUDGET_BYTES = MAX_PAYLOAD_BYTES * 3 // 4
NodeState = Literal["online", "offline", "failed"]
NODE_STATES: tuple[str, ...] = ("online", "offline", "failed")

T = TypeVar("T")


def json_size(item: Any) -> int:
    """Bytes of `item` as compact UTF-8 JSON (what an answer spends on it)."""
    return len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode())


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int  # entries that match, over every page
    offset: int
    next_offset: int | None  # where the next page starts; None: this is the last


def page_of(
    items: Sequence[T],
    offset: int = 0,
    limit: int | None = None,
    budget: int = PAGE_BUDGET_BYTES,
    size: Callable[[T], int] = json_size,
) -> Page[T]:
    """`items[offset:]`, at most `limit` of them (None: as many as fit; 0: none, only the total) and
    at most `budget` bytes of JSON (`size` of each, plus a separator). A first entry larger than the
    budget still makes a page of its own, so paging always moves on."""
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError(f"offset and limit must not be negative (offset {offset}, limit {limit})")
    total = len(items)
    if limit == 0:
        return Page([], total, offset, None)
    end = total if limit is None else min(total, offset + limit)
    taken: list[T] = []
    spent = 0
    for item in items[offset:end]:
        spent += size(item) + 1
        if taken and spent > budget:
            break
        taken.append(item)
    stop = offset + len(taken)
    return Page(taken, total, offset, stop if stop < total else None)


# -- nodes -------------------------------------------------------------------------------------------
def out_of_sync(node: Mapping[str, Any]) -> bool:
    """It reported a state that differs from what is desired for it (`sync` drifted)."""
    return node.get("sync") == "drifted"


def has_errors(node: Mapping[str, Any]) -> bool:
    """Its engine failed, or a transfer of an artifact to it failed."""
    transfers = node.get("transfers") or {}
    return node.get("state") == "failed" or any(t.get("state") == "failed" for t in transfers.values())


@dataclass(frozen=True)
class NodeFilter:
    """Which nodes a status page lists; every field set must hold (empty / False: any)."""

    group: str = ""  # in this group, or assigned to it
    state: str = ""  # online, offline, failed
    profile: str = ""
    model: str = ""
    out_of_sync: bool = False
    errors: bool = False
    search: str = ""  # part of the node id, any case

    def matches(self, node: Mapping[str, Any]) -> bool:
        if self.group and self.group not in [*node.get("groups", []), *node.get("assigned_groups", [])]:
            return False
        if self.state and node.get("state") != self.state:
            return False
        if self.profile and node.get("profile") != self.profile:
            return False
        if self.model and self.model not in (node.get("model"), node.get("reported_model")):
            return False  # its status's model name, or the `<name>@<version>` of a model pushed to it
        if self.out_of_sync and not out_of_sync(node):
            return False
        if self.errors and not has_errors(node):
            return False
        return not self.search or self.search.lower() in str(node.get("node_id", "")).lower()

    def active(self) -> bool:
        return self != NodeFilter()

    def describe(self) -> str:
        """The filters set, as an operator reads them: `group line, state online, out of sync`."""
        parts = [f"{k} {v}" for k, v in (("group", self.group), ("state", self.state), ("profile", self.profile))]
        parts += [f"{k} {v}" for k, v in (("model", self.model), ("node id containing", self.search))]
        flags = [w for w, on in (("out of sync", self.out_of_sync), ("with errors", self.errors)) if on]
        return ", ".join([p for p in parts if not p.endswith(" ")] + flags)


def summarize(nodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts over `nodes`: total, by state, by sync, out of sync, failed (engine), with errors."""
    by_state = Counter(str(n.get("state", "unknown")) for n in nodes)
    by_sync = Counter(str(n.get("sync", "unknown")) for n in nodes)
    return {
        "total": len(nodes),
        "by_state": {s: by_state[s] for s in [*NODE_STATES, *sorted(set(by_state) - set(NODE_STATES))]},
        "by_sync": dict(sorted(by_sync.items())),
        "out_of_sync": sum(1 for n in nodes if out_of_sync(n)),
        "failed": by_state["failed"],
        "errors": sum(1 for n in nodes if has_errors(n)),
    }


def summary_line(summary: Mapping[str, Any]) -> str:
    """`1200 nodes: 1100 online, 80 offline, 20 failed; 30 out of sync; 25 with errors`."""
    states = ", ".join(f"{c} {s}" for s, c in summary.get("by_state", {}).items())
    total = summary.get("total", 0)
    return (
        f"{total} node{'' if total == 1 else 's'}: {states or 'none'}; "
        f"{summary.get('out_of_sync', 0)} out of sync; {summary.get('errors', 0)} with errors"
    )


def node_page(
    nodes: Sequence[Mapping[str, Any]],
    flt: NodeFilter = NodeFilter(),
    offset: int = 0,
    limit: int | None = None,
    budget: int = PAGE_BUDGET_BYTES,
) -> dict[str, Any]:
    """A status answer's data: `nodes` (one page of those `flt` matches, in the order given),
    `total` (how many match), `offset`, `next_offset`, `summary` (of every node in `nodes`)."""
    page = page_of([n for n in nodes if flt.matches(n)], offset, limit, budget)
    return {
        "nodes": page.items,
        "total": page.total,
        "offset": page.offset,
        "next_offset": page.next_offset,
        "summary": summarize(nodes),
    }
