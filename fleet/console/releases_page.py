"""The releases page: every rollout, and one rollout's waves, gates with their figures and the nodes
on each version (fleet/rollout_view.py, the rows `fleet rollout status` prints).

Everything comes from the orchestrator's `rollout-status`; Pause, Resume, Promote and Abort send
`rollout-pause|resume|promote|abort` through the command table as every console write does (the
session's CSRF token and the operator role are checked by the server's middleware first: a viewer
sees no buttons and a viewer's POST is refused). The page redraws its live part when the
orchestrator's answer changes (static/releases.js asks again every few seconds); without script it
is a plain page, and a button posts a form and comes back with the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from typing import Any

from aiohttp import web

from edgefleet.fleet.console import pages
from edgefleet.fleet.console import server as s
from edgefleet.fleet.console.commands import CommandBridge
from edgefleet.fleet.rollout_view import summary_row, view
from edgefleet.proto.commands import Command
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import CommandResult, PayloadError
from edgefleet.proto.release_commands import RolloutVerbRequest
from edgefleet.proto.rollouts import RolloutStatus
from edgefleet.proto.topics import valid_name

log = logging.getLogger("edgefleet.console.releases")

VERBS = ("pause", "resume", "promote", "abort")
EVENTS_SHOWN = 30


def clock(ts: float | None) -> str:
    """A time as the page shows it: UTC, to the second (the same on every redraw, unlike "5 s ago")."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def verbs_for(st: RolloutStatus) -> list[str]:
    """The operator's verbs that apply to a rollout in its state (the orchestrator still decides)."""
    if st.state == "running":
        return ["pause", "promote", "abort"]
    if st.state in ("paused", "held"):
        return ["resume", "abort"]
    return []  # succeeded, failed, aborted: a rollback still due runs by itself


def ask(commands: CommandBridge, op: str, **fields: Any) -> CommandResult:
    try:
        cmd = Command(op=op, **fields)
    except PayloadError as e:
        return CommandResult(ok=False, code=ErrorCode.INVALID_PAYLOAD.value, message=str(e), field=e.field)
    return commands.call(cmd, timeout=5.0)


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not valid_name(name):
        raise web.HTTPNotFound(text=f"no release {name[:80]!r}")
    return name


async def list_page(request: web.Request) -> web.Response:
    result = await asyncio.to_thread(ask, request.app[s.COMMANDS_KEY], "rollout-status")
    rows = [summary_row(d, when=clock) for d in result.data.get("rollouts", [])] if result.ok else []
    return pages.render(
        request,
        "releases.html",
        rows=rows,
        total=result.data.get("total", len(rows)) if result.ok else 0,
        error="" if result.ok else f"refused ({result.code or 'refused'}): {result.message}",
        done=request.query.get("done", ""),
    )


async def release_page(request: web.Request, status: int = 200, error: str = "") -> web.Response:
    name = _name(request)
    result = await asyncio.to_thread(ask, request.app[s.COMMANDS_KEY], "rollout-status", name=name)
    if not result.ok and result.code == ErrorCode.NOT_FOUND.value:
        return pages.render(request, "missing.html", 404, what=f"release {name}")
    st = RolloutStatus.model_validate(result.data["rollout"]) if result.ok and "rollout" in result.data else None
    if st is None and not error:
        error = f"refused ({result.code or 'refused'}): {result.message}"
    return pages.render(
        request,
        "release.html",
        status,
        name=name,
        v=view(st, events=EVENTS_SHOWN, when=clock) if st is not None else None,
        verbs=verbs_for(st) if st is not None else [],
        error=error,
        done="" if error else request.query.get("done", ""),
    )


async def operate(request: web.Request) -> web.StreamResponse:
    """POST /releases/{name}/{verb}: the verb through the command table; back to the release with the outcome."""
    name, verb = _name(request), request.match_info["verb"]
    if verb not in VERBS:
        raise web.HTTPNotFound(text=f"no such action {verb[:40]!r}: one of {', '.join(VERBS)}")
    session = s.session_of(request)
    fields: dict[str, Any] = {"name": name}
    if session is not None and "on_behalf_of" in RolloutVerbRequest.model_fields:  # the account, where the op names it
        fields["on_behalf_of"] = session.name
    result = await asyncio.to_thread(ask, request.app[s.COMMANDS_KEY], f"rollout-{verb}", **fields)
    log.info(
        "release action sent" if result.ok else "release action refused",
        extra={"rollout": name, "verb": verb, "operator": session.name if session else "-", "code": result.code},
    )
    if not result.ok:
        status = 403 if result.code == ErrorCode.PERMISSION_DENIED.value else 422
        return await release_page(request, status, f"{verb} refused ({result.code or 'refused'}): {result.message}")
    where = f"/releases/{urllib.parse.quote(name)}?done={urllib.parse.quote(result.message or verb + ' sent')}"
    raise web.HTTPSeeOther(where)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/releases", list_page)
    r.add_get("/releases/{name}", release_page)
    r.add_post("/releases/{name}/{verb}", operate)
