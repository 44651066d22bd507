"""The front door's thread: its own asyncio loop running the grpc.aio server, the aiohttp server
(OpenAI API, and /metrics for operator and orchestrator certificates), an optional metrics-only
listener (plaintext, no authentication: what Prometheus scrapes), the serving probe and the health
updater. The runtime starts it after the MQTT link and stops it first.

A listener that cannot bind (the port is taken) is logged as an error and left off: the rest of the
orchestrator (the control plane) keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgefleet.orchestrator.fleet_view import FleetView
from edgefleet.orchestrator.front_door.auth import FrontDoorAuth
from edgefleet.orchestrator.front_door.dispatch import Dispatcher, DispatchPolicy
from edgefleet.orchestrator.front_door.grpc_front import FrontDoorServicer
from edgefleet.orchestrator.front_door.metrics import FrontDoorMetrics
from edgefleet.orchestrator.front_door.openai_http import OpenAIApi
from edgefleet.orchestrator.front_door.router import Router, RouteRequest, RoutingPolicy
from edgefleet.orchestrator.front_door.slot_queue import SlotQueue
from edgefleet.orchestrator.front_door.upstream import NodeChannels, probe_forever
from edgefleet.orchestrator.settings import OrchestratorSettings, split_address
from edgefleet.plumbing.grpc_malformed import MalformedRequestInterceptor, request_types
from edgefleet.plumbing.site_tls import Revocations, server_credentials, server_ssl_context
from edgefleet.plumbing.transport_security import TlsFiles
from edgefleet.proto.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger("edgefleet.orchestrator.front_door")
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
_HEALTH_INTERVAL_S = 0.5


def routing_policy(s: OrchestratorSettings) -> RoutingPolicy:
    return RoutingPolicy(
        affinity=s.route_affinity,
        slots_when_unknown=s.route_slots_when_unknown,
        max_slots_per_node=s.route_max_slots_per_node,
        cooldown_failures=s.route_cooldown_failures,
        cooldown_window_s=s.route_cooldown_window_s,
        cooldown_s=s.route_cooldown_s,
    )


class FrontDoor:
    def __init__(self, settings: OrchestratorSettings, view: FleetView) -> None:
        self.settings, self.view = settings, view
        self.metrics = FrontDoorMetrics()
        self.router = Router(routing_policy(settings))
        self.metrics.watch_fleet(view.snapshot, self.router.cooling_nodes)
        self.ports: dict[str, int] = {}  # listener → bound port
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dispatcher: Dispatcher | None = None  # set once running: in-process callers (rollout evaluations)
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._tls: TlsFiles | None = None  # set on start: None in insecure mode
        self._thread = threading.Thread(target=self._run, name="edgefleet-front-door", daemon=True)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The front door's event loop while it runs (`dispatcher` is used on it only)."""
        loop = self._loop
        return loop if loop is not None and loop.is_running() and self._thread.is_alive() else None

    @property
    def enabled(self) -> bool:
        s = self.settings
        return bool(s.front_door_address or s.openai_address or s.metrics_address)

    def start(self, timeout: float = 15.0) -> None:
        if not self.enabled:
            log.info("front door off: no listener address set")
            return
        self._thread.start()
        if not self._ready.wait(timeout):
            log.error("front door did not start in time", extra={"timeout_s": timeout})

    def stop(self, timeout: float = 10.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is None or stop is None or not self._thread.is_alive():
            return
        loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("front door stopped on an error")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        s = self.settings
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        tls = None if s.insecure else s.tls_files()
        self._tls = tls
        channels = NodeChannels(tls)
        slots = SlotQueue(self.router, self.view.snapshot, self.metrics, s.route_buffer_size, s.route_buffer_wait_s)
        policy = DispatchPolicy(s.route_first_token_timeout_s, s.route_max_attempts)
        dispatcher = Dispatcher(self.view, self.router, slots, channels, self.metrics, policy)
        self.dispatcher = dispatcher
        auth = FrontDoorAuth.from_settings(
            s.front_door_auth_mode(),
            s.api_keys_path(),
            self.metrics,
            Revocations(tls.crl if tls else None),
            s.front_door_identity_rpm,
            s.front_door_identity_tpm,
        )
        tasks = [asyncio.create_task(probe_forever(channels, self.view, s.route_probe_interval_s))]
        if auth.enabled:
            tasks.append(asyncio.create_task(auth.flush_forever()))
        grpc_server = await self._grpc(dispatcher, tasks, auth) if s.front_door_address else None
        runners = []
        if s.openai_address:
            api = OpenAIApi(dispatcher, self.metrics, s.request_timeout_s, auth)
            ctx = server_ssl_context(tls, require_client_cert=False) if tls is not None else None
            runners.append(await self._http("openai", s.openai_address, api.app(), ctx))
        if s.metrics_address:  # plaintext and open, for Prometheus: bind it to 127.0.0.1 or an internal network
            page = web.Application()
            page.router.add_get("/metrics", OpenAIApi(dispatcher, self.metrics, s.request_timeout_s).metrics_page)
            runners.append(await self._http("metrics", s.metrics_address, page))
        self._ready.set()
        await self._stop.wait()
        for t in tasks:
            t.cancel()
        if grpc_server is not None:
            await grpc_server.stop(grace=1.0)
        for r in runners:
            if r is not None:
                await r.cleanup()
        await channels.close()
        auth.close()
        log.info("front door stopped")

    async def _grpc(
        self, dispatcher: Dispatcher, tasks: list[asyncio.Task[None]], auth: FrontDoorAuth
    ) -> grpc.aio.Server | None:
        address = self.settings.front_door_address
        interceptor = MalformedRequestInterceptor(
            request_types(inference_pb2.DESCRIPTOR.services_by_name["Inference"], inference_pb2)
        )
        # 16 MiB as the nodes: an operator's Ingest of a manual's PDF bytes passes through whole
        options = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        server = grpc.aio.server(interceptors=[interceptor], options=options)
        inference_pb2_grpc.add_InferenceServicer_to_server(
            FrontDoorServicer(dispatcher, self.settings.request_timeout_s, auth), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        try:
            if self._tls is not None:
                # gRPC's TLS either requires a client certificate or asks for none: with none, API keys
                creds = server_credentials(self._tls, require_client_auth=self.settings.front_door_client_certs)
                port = server.add_secure_port(address, creds)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port == 0:
            log.error("front door cannot listen: gRPC left off", extra={"address": address})
            return None
        await server.start()
        self.ports["grpc"] = port
        tasks.append(asyncio.create_task(self._health(health_servicer)))
        log.info("front door listening", extra={"api": "grpc", "address": address, "port": port})
        return server

    async def _health(self, servicer: health.aio.HealthServicer) -> None:
        """SERVING while at least one node can take work."""
        last = None
        while True:
            can = bool(self.router.candidates(self.view.snapshot(), RouteRequest(), time.time()))
            status = health_pb2.HealthCheckResponse.SERVING if can else health_pb2.HealthCheckResponse.NOT_SERVING
            if status != last:
                for name in ("", SERVICE_NAME):
                    await servicer.set(name, status)
                log.info("front door health", extra={"serving": can})
                last = status
            await asyncio.sleep(_HEALTH_INTERVAL_S)

    async def _http(
        self, name: str, address: str, app: web.Application, ssl_context: ssl.SSLContext | None = None
    ) -> web.AppRunner | None:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        host, port = split_address(address)
        site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as e:
            log.error("front door cannot listen: left off", extra={"api": name, "address": address, "reason": str(e)})
            with contextlib.suppress(Exception):
                await runner.cleanup()
            return None
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.ports[name] = sockets[0].getsockname()[1] if sockets else port
        log.info(
            "front door listening",
            extra={"api": name, "address": address, "port": self.ports[name], "tls": ssl_context is not None},
        )
        return runner
