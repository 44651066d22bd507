"""The console's web server (aiohttp): login, pages, server-sent events, writes through commands.

Every page but the login page and static files needs a session (else a redirect to /login, or
401 for a stream); every POST needs the session's CSRF token (form field `csrf_token` or header
`X-CSRF-Token`) and, to change the fleet, the operator role. The Content-Security-Policy allows
this origin only: the pages load nothing from another host.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import jinja2
from aiohttp import web

from edgefleet.fleet.console import agents_page, pages, playground, releases_page, writes
from edgefleet.fleet.console.accounts import Accounts, Session
from edgefleet.fleet.console.commands import CommandBridge
from edgefleet.fleet.console.live_fleet import LiveFleet
from edgefleet.fleet.console.login_limits import LoginLimiter
from edgefleet.fleet.console.settings import ConsoleSettings
from edgefleet.plumbing.mqtt_link import MqttLink

log = logging.getLogger("edgefleet.console")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
SESSION_COOKIE = "edgefleet_session"
PUBLIC_PREFIXES = ("/login", "/static/")
MAX_UPLOAD_BYTES = 512 * 1024**2  # signed-in operators' uploads; /login reads at most 4 KiB (login_limits.py)
LOGIN_HASHES_AT_ONCE = 2  # Argon2id takes 64 MiB a check: logins beyond this many wait their turn

SETTINGS_KEY: web.AppKey[ConsoleSettings] = web.AppKey("settings", ConsoleSettings)
ACCOUNTS_KEY: web.AppKey[Accounts] = web.AppKey("accounts", Accounts)
LIMITER_KEY: web.AppKey[LoginLimiter] = web.AppKey("limiter", LoginLimiter)
HASH_SLOTS_KEY: web.AppKey[asyncio.Semaphore] = web.AppKey("hash_slots", asyncio.Semaphore)
FLEET_KEY: web.AppKey[LiveFleet] = web.AppKey("fleet", LiveFleet)
COMMANDS_KEY: web.AppKey[CommandBridge] = web.AppKey("commands", CommandBridge)
JINJA_KEY: web.AppKey[jinja2.Environment] = web.AppKey("jinja", jinja2.Environment)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_of(request: web.Request) -> Session | None:
    return request.get("session")


@web.middleware
async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log every request; sessions, CSRF and roles; security headers on every answer."""
    request["request_id"] = uuid.uuid4().hex[:12]
    token = request.cookies.get(SESSION_COOKIE, "")
    session = await asyncio.to_thread(request.app[ACCOUNTS_KEY].session, token) if token else None
    request["session"] = session
    public = request.path.startswith(PUBLIC_PREFIXES)
    if session is None and not public:
        if request.method == "GET" and not request.path.startswith("/events/"):
            raise web.HTTPSeeOther(f"/login?next={request.path_qs}" if request.path != "/" else "/login")
        raise web.HTTPUnauthorized(text="log in first")
    if request.method == "POST" and session is not None and request.path != "/login":
        sent = request.headers.get("X-CSRF-Token", "")
        if not sent and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            sent = str((await request.post()).get("csrf_token", ""))
        if sent != session.csrf:
            log.warning("write refused: missing or wrong CSRF token", extra={"path": request.path, "op": session.name})
            raise web.HTTPForbidden(text="refused: missing or wrong CSRF token; reload the page and try again")
        if request.path not in ("/logout", "/playground/generate") and not session.can_write:
            log.warning("write refused: viewer", extra={"path": request.path, "operator": session.name})
            raise web.HTTPForbidden(text=f"refused: {session.name} is a viewer; viewers cannot change the fleet")
    response = await handler(request)
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.method == "POST":
        log.info(
            "write",
            extra={"path": request.path, "status": response.status, "operator": session.name if session else "-"},
        )
    return response


def build_app(settings: ConsoleSettings, link: MqttLink | None = None) -> web.Application:
    app = web.Application(middlewares=[access], client_max_size=MAX_UPLOAD_BYTES)
    app[SETTINGS_KEY] = settings
    app[ACCOUNTS_KEY] = Accounts(settings.console_data_file)
    app[LIMITER_KEY] = LoginLimiter(settings.console_login_attempts)
    app[HASH_SLOTS_KEY] = asyncio.Semaphore(LOGIN_HASHES_AT_ONCE)
    commands = CommandBridge(settings)
    app[COMMANDS_KEY] = commands
    fs = settings.fleet_settings()
    link = link or MqttLink(
        fs.mqtt_url or "", client_id=f"console-{uuid.uuid4().hex[:10]}", **settings.mqtt_link_options()
    )
    app[FLEET_KEY] = LiveFleet(settings, commands, link)
    app[JINJA_KEY] = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )

    async def on_startup(app: web.Application) -> None:
        app[FLEET_KEY].start()
        app[FLEET_KEY].link.start()

    async def on_cleanup(app: web.Application) -> None:
        app[FLEET_KEY].stop()
        app[FLEET_KEY].link.stop()
        await asyncio.to_thread(commands.close)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    pages.add_routes(app)
    writes.add_routes(app)
    playground.add_routes(app)
    agents_page.add_routes(app)
    releases_page.add_routes(app)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app


def ssl_context(settings: ConsoleSettings) -> ssl.SSLContext | None:
    files = settings.https_files()
    if files is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(files[0]), str(files[1]))
    return ctx


def serve(settings: ConsoleSettings) -> None:
    host, port = settings.host_port()
    log.info("console listening", extra={"address": settings.console_address, "site": settings.site})
    web.run_app(
        build_app(settings),
        host=host,
        port=port,
        ssl_context=ssl_context(settings),
        print=None,
        access_log=None,
        shutdown_timeout=2,
    )
