"""What every operator command request is built on: the signed envelope, paging, removals, and the
field types the requests share. The requests themselves: proto/commands.py (and release_commands.py)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from edgefleet.proto.paging import MAX_PAGE_LIMIT
from edgefleet.proto.payload_base import _Payload

NonEmpty = Annotated[str, Field(min_length=1)]
# the web console signs as itself for its logged-in account: the op records "<account> via <signer>"
OnBehalfOf = Annotated[str, Field(max_length=64, pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]*)?$")]
MAX_KEY_MODELS = 64
FilterText = Annotated[str, Field(max_length=128)]


class CommandRequest(_Payload):
    """What every command carries besides its op's fields: the signed envelope (empty: unsigned)."""

    always_signed: ClassVar[bool] = False  # refused unsigned even where the site takes unsigned commands
    names_operator: ClassVar[bool] = False  # its handler sees the (verified) operator: it records who decided

    operator: str = ""  # the operator's enrolled name
    key_id: str = ""  # the fingerprint of the operator's public key
    signed_at: int = 0  # unix seconds when signed; the orchestrator accepts ±120 s
    nonce: str = ""  # random, once per command: a replay within the window is refused
    signature: str = ""  # base64, over `command_bytes` (every other field, and the site)


class PagedRequest(CommandRequest):
    """A listing answered one page at a time (proto/paging.py): the answer's `next_offset` is where
    the next page starts (None: the last). No answer passes the payload limit: a page is cut short."""

    offset: Annotated[int, Field(ge=0)] = 0
    # at most this many entries; None: as many as fit one answer; 0: none, only the counts
    limit: Annotated[int, Field(ge=0, le=MAX_PAGE_LIMIT)] | None = None


class RemoveEntryRequest(CommandRequest):
    """`name` out of `target`'s desired state (one op per section, below)."""

    target: NonEmpty
    name: NonEmpty
