"""The agents page: agent runs (live, paged, newest first), one run's steps, and the approval queue.

Everything comes from the orchestrator's commands (`agent-runs`, `agent-run`, `approvals`) with the
reports this console received since over them (agent_feed.py); the streams send the page's view
again whenever a report or a decision arrives. Approve and Deny send `approve` / `deny` through the
command table as every console write does; the browser posts the form with `Accept:
application/json` and shows the answer in the row (a refusal next to the reason it typed, which
stays), and without script the form posts and the page comes back with the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from edgefleet.fleet.console import pages
from edgefleet.fleet.console import server as s
from edgefleet.fleet.console.agent_feed import AgentFeed, merge_approvals, merge_runs, run_row
from edgefleet.fleet.console.commands import CommandBridge
from edgefleet.proto.agent_runs import RUN_ID_RE
from edgefleet.proto.commands import Command
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import CommandResult, PayloadError
from edgefleet.proto.topics import valid_name

log = logging.getLogger("edgefleet.console.agents")

AGENTS_KEY: web.AppKey[AgentFeed] = web.AppKey("agents", AgentFeed)
RUN_STATES = ("running", "waiting", "done", "failed", "stopped")
PAGE_SIZES = (10, 25, 50, 100)
REFRESH_S = 5.0  # a stream asks the orchestrator again at least this often (runs another console saw)
EVENT_GAP_S = 0.25  # at most this often: each view costs two commands, and a busy run reports often
MAX_REASON_CHARS = 512


class QueryError(ValueError):
    pass


@dataclass(frozen=True)
class AgentQuery:
    node: str = ""
    rule: str = ""
    state: str = ""
    offset: int = 0
    limit: int = 25

    @classmethod
    def parse(cls, q: MultiMapping[str]) -> AgentQuery:
        node, rule, state = q.get("node", "").strip(), q.get("rule", "").strip(), q.get("state", "").strip()
        if node and not valid_name(node):
            raise QueryError(f"node {node[:80]!r} is not a node name")
        if rule and not valid_name(rule):
            raise QueryError(f"rule {rule[:80]!r} is not a rule name")
        if state and state not in RUN_STATES:
            raise QueryError(f"state {state[:40]!r} must be one of {', '.join(RUN_STATES)}")
        try:
            offset = int(q.get("offset") or 0)
            limit = int(q.get("limit") or 25)
        except ValueError:
            raise QueryError("offset and limit must be whole numbers") from None
        if offset < 0:
            raise QueryError(f"offset {offset} must not be negative")
        if limit not in PAGE_SIZES:
            raise QueryError(f"limit {limit} must be one of {', '.join(map(str, PAGE_SIZES))}")
        return cls(node, rule, state, offset, limit)

    def fields(self) -> dict[str, Any]:
        """The `agent-runs` request's fields: the filters set, the offset and the limit."""
        return {k: v for k, v in asdict(self).items() if v or k in ("offset", "limit")}

    def qs(self) -> str:
        d = {k: v for k, v in asdict(self).items() if v and not (k == "limit" and v == 25)}
        return urllib.parse.urlencode(d)


def ask(commands: CommandBridge, op: str, **fields: Any) -> CommandResult:
    try:
        cmd = Command(op=op, **fields)
    except PayloadError as e:  # an op this build's command models lack, or a field they refuse
        return CommandResult(ok=False, code=ErrorCode.INVALID_PAYLOAD.value, message=str(e), field=e.field)
    return commands.call(cmd, timeout=5.0)


def agents_view(feed: AgentFeed, commands: CommandBridge, query: AgentQuery) -> dict[str, Any]:
    """The page's data (blocking: two commands): one page of runs and the approval queue."""
    errors = []
    runs = ask(commands, "agent-runs", **query.fields())
    if not runs.ok:
        errors.append(f"runs: {runs.message}")
    approvals = ask(commands, "approvals")
    if not approvals.ok:
        errors.append(f"approvals: {approvals.message}")
    seen = feed.rows()
    now = time.time()
    rows, total = merge_runs(runs.data if runs.ok else {}, seen, asdict(query))
    queue = merge_approvals(
        list(approvals.data.get("approvals", [])) if approvals.ok else [], feed.reports(), feed.decisions(), now
    )
    return {
        "runs": rows,
        "total": total,
        "offset": query.offset,
        "limit": query.limit,
        "query": asdict(query),
        "approvals": queue,
        "error": "; ".join(errors),
        "now": now,
    }


def run_view(feed: AgentFeed, commands: CommandBridge, run_id: str) -> dict[str, Any]:
    """One run with its steps (blocking): the orchestrator's, or this console's newer report."""
    result = ask(commands, "agent-run", run_id=run_id)
    run = result.data.get("run", result.data) if result.ok else None
    mine = feed.report(run_id)
    if mine is not None and (run is None or float(mine.get("ts", 0)) >= float(run.get("ts") or 0)):
        run = mine
    decisions = {f"{run_id}:{k}": v for k, v in (result.data.get("decisions") or {}).items()} if result.ok else {}
    decisions.update(feed.decisions())
    return {
        "run": run,
        "summary": run_row(run) if run else None,
        "error": "" if result.ok or run is not None else result.message,
        "missing": run is None and result.code == ErrorCode.NOT_FOUND.value,
        "decisions": {k: v for k, v in decisions.items() if k.startswith(f"{run_id}:")},
        "now": time.time(),
    }


def _query(request: web.Request) -> AgentQuery:
    try:
        return AgentQuery.parse(request.query)
    except QueryError as e:
        raise web.HTTPBadRequest(text=f"refused: {e}") from None


# -- pages ----------------------------------------------------------------------------------------------
async def agents_page(request: web.Request, status: int = 200, form: dict[str, Any] | None = None) -> web.Response:
    feed, commands = request.app[AGENTS_KEY], request.app[s.COMMANDS_KEY]
    query = _query(request)  # a form's answer: the form posts to /agents/approve|deny, with no query
    view = await asyncio.to_thread(agents_view, feed, commands, query)
    view["form"] = form  # the outcome of a form posted without script: which row, what it said, what was typed
    return pages.render(
        request,
        "agents.html",
        status,
        view_json=pages.json_in_html(view),
        states=RUN_STATES,
        sizes=PAGE_SIZES,
        query=query,
        done=request.query.get("done", ""),
    )


async def agent_runs(request: web.Request) -> web.Response:
    """GET /agents/runs?node=&rule=&state=&offset=&limit=: the page's view as JSON."""
    view = await asyncio.to_thread(agents_view, request.app[AGENTS_KEY], request.app[s.COMMANDS_KEY], _query(request))
    return web.json_response(view)


async def run_page(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    if not RUN_ID_RE.match(run_id):
        return pages.render(request, "missing.html", 404, what=f"agent run {run_id[:80]}")
    view = await asyncio.to_thread(run_view, request.app[AGENTS_KEY], request.app[s.COMMANDS_KEY], run_id)
    if view["run"] is None and view["missing"]:
        return pages.render(request, "missing.html", 404, what=f"agent run {run_id}")
    return pages.render(request, "agent_run.html", run_id=run_id, view_json=pages.json_in_html(view))


# -- streams --------------------------------------------------------------------------------------------
async def _stream(request: web.Request, build: Any) -> web.StreamResponse:
    """Send `build()` (blocking; run in a thread) at once, then whenever a report or decision arrives or
    REFRESH_S passed, when it differs from what was sent."""
    feed = request.app[AGENTS_KEY]
    resp = web.StreamResponse(headers=pages.STREAM_HEADERS)
    await resp.prepare(request)
    seen, last = feed.changes.version, ""
    try:
        while True:
            view = await asyncio.to_thread(build)
            data = json.dumps({k: v for k, v in view.items() if k != "now"}, sort_keys=True)
            if data != last:
                await resp.write(f"data: {json.dumps(view, sort_keys=True)}\n\n".encode())
                last = data
            else:
                await resp.write(b": keepalive\n\n")
            await asyncio.sleep(EVENT_GAP_S)
            seen = await feed.changes.wait(seen, REFRESH_S)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


async def agents_events(request: web.Request) -> web.StreamResponse:
    feed, commands, query = request.app[AGENTS_KEY], request.app[s.COMMANDS_KEY], _query(request)
    return await _stream(request, lambda: agents_view(feed, commands, query))


async def run_events(request: web.Request) -> web.StreamResponse:
    run_id = request.match_info["run_id"]
    if not RUN_ID_RE.match(run_id):
        raise web.HTTPNotFound(text=f"no agent run {run_id[:80]!r}")
    feed, commands = request.app[AGENTS_KEY], request.app[s.COMMANDS_KEY]
    return await _stream(request, lambda: run_view(feed, commands, run_id))


# -- approve / deny --------------------------------------------------------------------------------------
class FormError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def decision_command(op: str, form: MultiMapping[Any], account: str = "") -> Command:
    """`approve` / `deny` from the form's fields, each checked and named when it is wrong; `account`: the
    logged-in operator the console decides for (the orchestrator names "<account> via <the console>")."""

    def text(key: str) -> str:
        v = form.get(key, "")
        return v.strip() if isinstance(v, str) else ""

    node, run_id, step, reason = text("node"), text("run_id"), text("step"), text("reason")
    if not valid_name(node):
        raise FormError("node", f"node {node[:80]!r} is not a node name")
    if not RUN_ID_RE.match(run_id):
        raise FormError("run_id", f"run_id {run_id[:80]!r} is not a run id (8-64 letters, digits, '_' or '-')")
    if not (step.isascii() and step.isdigit() and len(step) <= 9):
        raise FormError("step", f"step {step[:20]!r} must be a whole number (the step that waits)")
    if len(reason) > MAX_REASON_CHARS:
        raise FormError("reason", f"reason is {len(reason)} characters; at most {MAX_REASON_CHARS}")
    fields: dict[str, Any] = {"node": node, "run_id": run_id, "step": int(step), "on_behalf_of": account}
    if reason:
        fields["reason"] = reason
    try:
        return Command(op=op, **fields)
    except PayloadError as e:
        raise FormError(e.field or "form", str(e)) from e


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


async def decide(request: web.Request, op: str) -> web.StreamResponse:
    form = await request.post()
    key = "/".join(str(form.get(k, ""))[:80] for k in ("node", "run_id", "step"))  # the queue row it came from
    typed = {"key": key, "op": op, "reason": str(form.get("reason", ""))[:4096]}
    session = s.session_of(request)
    try:
        cmd = decision_command(op, form, session.name if session else "")
    except FormError as e:
        return await _answer(request, 422, {**typed, "ok": False, "field": e.field, "message": e.message})
    result = await asyncio.to_thread(request.app[s.COMMANDS_KEY].call, cmd)
    log.info(
        "approval decision sent" if result.ok else "approval decision refused",
        extra={"op": op, "approval": key, "operator": session.name if session else "-", "code": result.code},
    )
    if not result.ok:
        status = 403 if result.code == ErrorCode.PERMISSION_DENIED.value else 422
        message = f"refused ({result.code or 'refused'}): {result.message}"
        return await _answer(request, status, {**typed, "ok": False, "field": result.field, "message": message})
    message = result.message or f"{op} sent for {key}"
    if _wants_json(request):
        return web.json_response({**typed, "ok": True, "message": message, "data": result.data})
    raise web.HTTPSeeOther(f"/agents?done={urllib.parse.quote(message)}")


async def _answer(request: web.Request, status: int, outcome: dict[str, Any]) -> web.StreamResponse:
    if _wants_json(request):
        return web.json_response(outcome, status=status)
    return await agents_page(request, status, outcome)


async def approve(request: web.Request) -> web.StreamResponse:
    return await decide(request, "approve")


async def deny(request: web.Request) -> web.StreamResponse:
    return await decide(request, "deny")


def add_routes(app: web.Application) -> None:
    """The routes, and the feed on the console's MQTT link (subscribed before the link connects)."""

    async def on_startup(app: web.Application) -> None:
        app[AGENTS_KEY].start()

    fleet = app[s.FLEET_KEY]
    app[AGENTS_KEY] = AgentFeed(fleet.topics, fleet.link)
    app.on_startup.insert(0, on_startup)
    r = app.router
    r.add_get("/agents", agents_page)
    r.add_get("/agents/runs", agent_runs)
    r.add_get("/agents/run/{run_id}", run_page)
    r.add_get("/events/agents", agents_events)
    r.add_get("/events/agents/run/{run_id}", run_events)
    r.add_post("/agents/approve", approve)
    r.add_post("/agents/deny", deny)
