"""Pages (server-rendered HTML) and their server-sent event streams: one stream per page."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from edgefleet.fleet.console import login_limits
from edgefleet.fleet.console import server as s
from edgefleet.fleet.console.fleet_table import LIVE_GAP_S, FleetQuery, PageStream, QueryError, fleet_view

log = logging.getLogger("edgefleet.console.pages")

NAV = [
    ("/", "Fleet"),
    ("/templates", "Templates"),
    ("/rules", "Sensor rules"),
    ("/adapters", "Adapters"),
    ("/knowledge", "Knowledge"),
    ("/sensors", "Sensors"),
    ("/agents", "Agents"),
    ("/releases", "Releases"),
    ("/playground", "Playground"),
]
KINDS = ("templates", "rules", "adapters", "knowledge")
LOGIN_COOKIE = "edgefleet_login_csrf"
KEEPALIVE_S = 15.0
MIN_EVENT_GAP_S = 0.1
STREAM_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def render(request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
    session = s.session_of(request)
    fleet = request.app[s.FLEET_KEY]
    html = (
        request.app[s.JINJA_KEY]
        .get_template(template)
        .render(
            nav=NAV,
            path=request.path,
            session=session,
            csrf=session.csrf if session else "",
            site=request.app[s.SETTINGS_KEY].site,
            status_error=fleet.status_error,
            **ctx,
        )
    )
    return web.Response(text=html, content_type="text/html", status=status)


def cookie_secure(request: web.Request) -> bool:
    return request.secure or request.app[s.SETTINGS_KEY].console_tls_cert_file is not None


# -- login ---------------------------------------------------------------------------------------------
async def login_page(request: web.Request, error: str = "", status: int = 200, name: str = "") -> web.Response:
    token = secrets.token_urlsafe(24)
    nxt = request.query.get("next", "/")
    resp = render(
        request,
        "login.html",
        status,
        login_csrf=token,
        error=error,
        name=name,
        next=login_limits.safe_next(nxt),
    )
    resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=cookie_secure(request), path="/login")
    return resp


async def login(request: web.Request) -> web.StreamResponse:
    """In this order, cheapest first: the form's size (413), its CSRF token (403), the rate limit (429),
    and only then the password's Argon2id check, a few at a time."""
    form = await login_limits.read_login_form(request)
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    if not form.get("login_csrf") or form.get("login_csrf") != request.cookies.get(LOGIN_COOKIE):
        return await login_page(request, "the login form expired; try again", 403, name)
    limiter = request.app[s.LIMITER_KEY]
    address = login_limits.client_address(request.remote)
    wait = limiter.begin(address, name)
    if wait > 0:
        log.warning("login refused: rate limit", extra={"operator": name[:80], "remote": request.remote})
        return await login_page(request, f"too many failed logins; try again in {wait:.0f} s", 429, name)
    accounts = request.app[s.ACCOUNTS_KEY]
    async with request.app[s.HASH_SLOTS_KEY]:
        role = await asyncio.to_thread(accounts.verify, name, password)
    if role is None:  # the attempt `begin` counted stays counted
        log.warning("login failed", extra={"operator": name[:80], "remote": request.remote})
        return await login_page(request, "wrong name or password", 401, name)
    limiter.succeeded(address, name)
    hours = request.app[s.SETTINGS_KEY].console_session_hours
    token, _ = await asyncio.to_thread(accounts.open_session, name, hours * 3600)
    log.info("login", extra={"operator": name, "role": role, "remote": request.remote})
    resp = web.HTTPSeeOther(login_limits.safe_next(str(form.get("next", "/"))))
    resp.set_cookie(
        s.SESSION_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=cookie_secure(request),
        max_age=int(hours * 3600),
        path="/",
    )
    raise resp


async def logout(request: web.Request) -> web.StreamResponse:
    token = request.cookies.get(s.SESSION_COOKIE, "")
    await asyncio.to_thread(request.app[s.ACCOUNTS_KEY].close_session, token)
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(s.SESSION_COOKIE, path="/")
    raise resp


# -- pages ----------------------------------------------------------------------------------------------
def fleet_query(request: web.Request) -> FleetQuery:
    try:
        return FleetQuery.parse(request.query)
    except QueryError as e:
        raise web.HTTPBadRequest(text=f"refused: {e}") from None


def json_in_html(value: Any) -> str:
    """JSON to put inside a <script type="application/json"> element: nothing in it can end the element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


async def fleet_page(request: web.Request) -> web.Response:
    """The summary and the first page of rows for the URL's query, in the page: no second request."""
    fleet = request.app[s.FLEET_KEY]
    view = fleet_view(fleet, fleet_query(request))
    balena = fleet.balena.fleet if fleet.balena is not None else ""
    return render(request, "fleet.html", view_json=json_in_html(view), view=view, balena=balena)


async def fleet_rows(request: web.Request) -> web.Response:
    """GET /fleet/rows?q=&state=&group=&sort=&desc=&offset=&limit=: the summary and one page, as JSON."""
    return web.json_response(fleet_view(request.app[s.FLEET_KEY], fleet_query(request)))


async def node_page(request: web.Request) -> web.Response:
    return await node_view(request, done=request.query.get("done", ""))


async def node_view(
    request: web.Request, status: int = 200, groups_error: str = "", groups_value: str = "", done: str = ""
) -> web.Response:
    """The node page; after an assign-groups form, with its outcome next to the field."""
    fleet = request.app[s.FLEET_KEY]
    node_id = request.match_info["node_id"]
    detail = fleet.node_detail(node_id)
    if detail is None:
        return render(request, "missing.html", 404, what=f"node {node_id}")
    result = await asyncio.to_thread(request.app[s.COMMANDS_KEY].telemetry_history, node_id)
    history = result.data if result.ok else None
    return render(
        request,
        "node.html",
        status,
        node_id=node_id,
        detail_json=json.dumps(detail),
        history_json=json.dumps(history),
        history_note="" if result.ok else f"not available: {result.message[:120]}",
        groups_error=groups_error,
        groups_value=groups_value,
        done=done,
    )


def kind_page(kind: str) -> Callable[[web.Request], Any]:
    async def page(request: web.Request) -> web.Response:
        return desired_page(request, kind)

    return page


def desired_page(
    request: web.Request,
    kind: str,
    status: int = 200,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    form_error: str = "",
) -> web.Response:
    fleet = request.app[s.FLEET_KEY]
    return render(
        request,
        "desired.html",
        status,
        kind=kind,
        targets=fleet.targets(),
        nodes=fleet.node_ids(),
        groups=fleet.groups(),
        errors=errors or {},
        values=values or {},
        form_error=form_error,
        done=request.query.get("done", ""),
        transfers_json=json.dumps(transfers(request)),
    )


def transfers(request: web.Request) -> dict[str, Any]:
    return {r["node_id"]: r["transfers"] for r in request.app[s.FLEET_KEY].fleet_rows() if r["transfers"]}


async def sensors_page(request: web.Request) -> web.Response:
    fleet = request.app[s.FLEET_KEY]
    return render(request, "sensors.html", rules=fleet.rules_by_target())


async def playground_page(request: web.Request) -> web.Response:
    fleet = request.app[s.FLEET_KEY]
    nodes = [(r["node_id"], r["address"]) for r in fleet.fleet_rows() if r["address"] and r["state"] == "online"]
    return render(
        request,
        "playground.html",
        front_door=request.app[s.SETTINGS_KEY].front_door_address,
        nodes=nodes,
        targets=fleet.targets(),
    )


# -- server-sent events -----------------------------------------------------------------------------------
async def stream(request: web.Request, view: Callable[[], Any]) -> web.StreamResponse:
    """Send `view()` whenever the fleet changes (and it differs from what was sent), until the page goes."""
    resp = web.StreamResponse(headers=STREAM_HEADERS)
    await resp.prepare(request)
    changes = request.app[s.FLEET_KEY].changes
    seen, last = -1, ""
    try:
        while True:
            version = await changes.wait(seen, KEEPALIVE_S)
            if version == seen:
                await resp.write(b": keepalive\n\n")
                continue
            seen = version
            data = json.dumps(view(), sort_keys=True)
            if data != last:
                await resp.write(f"data: {data}\n\n".encode())
                last = data
            await asyncio.sleep(MIN_EVENT_GAP_S)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


async def fleet_events(request: web.Request) -> web.StreamResponse:
    """The fleet page's stream for one query: first what the browser lacks (everything, unless `have` is
    the digest of the page as it is now), then, at most every LIVE_GAP_S, what changed on it."""
    fleet = request.app[s.FLEET_KEY]
    query = fleet_query(request)
    resp = web.StreamResponse(headers=STREAM_HEADERS)
    await resp.prepare(request)
    page = PageStream()
    seen = fleet.changes.version
    view = fleet_view(fleet, query)
    if request.query.get("have") == view["digest"]:
        page.seed(view)
    try:
        while True:
            event = page.update(view, time.time())
            if event is not None:
                await resp.write(f"data: {json.dumps(event, sort_keys=True)}\n\n".encode())
            await asyncio.sleep(LIVE_GAP_S)
            version = await fleet.changes.wait(seen, KEEPALIVE_S)
            if version == seen:
                await resp.write(b": keepalive\n\n")
                continue
            seen = version
            view = fleet_view(fleet, query)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


async def node_events(request: web.Request) -> web.StreamResponse:
    fleet = request.app[s.FLEET_KEY]
    node_id = request.match_info["node_id"]
    return await stream(request, lambda: {"node": fleet.node_detail(node_id), "now": time.time()})


async def desired_events(request: web.Request) -> web.StreamResponse:
    fleet = request.app[s.FLEET_KEY]
    return await stream(request, lambda: {"targets": fleet.targets(), "transfers": transfers(request)})


async def sensor_events(request: web.Request) -> web.StreamResponse:
    fleet = request.app[s.FLEET_KEY]
    return await stream(
        request,
        lambda: {
            "feed": fleet.sensors.entries(),
            "outbox": {r["node_id"]: r["outbox"] for r in fleet.fleet_rows()},
        },
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/", fleet_page)
    r.add_get("/fleet/rows", fleet_rows)
    r.add_get("/node/{node_id}", node_page)
    for kind in KINDS:
        r.add_get(f"/{kind}", kind_page(kind))
    r.add_get("/sensors", sensors_page)
    r.add_get("/playground", playground_page)
    r.add_get("/events/fleet", fleet_events)
    r.add_get("/events/node/{node_id}", node_events)
    r.add_get("/events/desired", desired_events)
    r.add_get("/events/sensors", sensor_events)
