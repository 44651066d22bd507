"""The node's gRPC server: Inference, health and reflection, thermal polling and drain on SIGTERM.

If the engine fails, the node stops serving at once (health NOT_SERVING, MQTT status `failed`
with the reason), gives the failed streams a moment to reach their clients, and `serve` returns
EXIT_ENGINE_FAILED so the process exits non-zero and its supervisor restarts it.

A model switch (`Node.request_restart`) stops it the way SIGTERM does (drain, then stop); the CLI
then executes the node again (node/model_switch.py). A switched-to model is committed once the
server is up and healthy, before the control plane reports anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgefleet.node.api.access import node_access
from edgefleet.node.api.metrics import MetricsInterceptor, NodeMetrics
from edgefleet.node.api.servicer import InferenceServicer
from edgefleet.node.runtime import Node
from edgefleet.node.settings import NodeSettings
from edgefleet.node.update_lock import hold_update_lock
from edgefleet.plumbing.grpc_malformed import MalformedRequestInterceptor, request_types
from edgefleet.plumbing.site_tls import PeerCheckInterceptor, Revocations, server_credentials
from edgefleet.proto.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger("edgefleet.node.server")
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
EXIT_ENGINE_FAILED = 70  # EX_SOFTWARE: the engine thread died; restart the process


async def _poll_thermal(node: Node) -> None:
    service = node.service
    last = None
    while True:
        state = service.thermal.poll()
        service.apply_thermal(state)
        if (state.throttled, state.shedding) != last:
            if last is not None:
                log.warning(
                    "thermal state changed",
                    extra={
                        "temperature_c": state.temperature_c,
                        "throttled": state.throttled,
                        "shedding": state.shedding,
                    },
                )
            last = (state.throttled, state.shedding)
        await asyncio.sleep(service.profile.thermal.poll_interval_s)


async def _set_health(health_servicer: health.aio.HealthServicer, status: int) -> None:
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)


async def serve(node: Node, settings: NodeSettings, ready: asyncio.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then drain: in-flight requests finish, new ones get UNAVAILABLE.

    Returns the process exit code: 0 after a drain, EXIT_ENGINE_FAILED when the engine failed.
    """
    opts = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    interceptor = MalformedRequestInterceptor(
        request_types(inference_pb2.DESCRIPTOR.services_by_name["Inference"], inference_pb2)
    )
    interceptors: list[grpc.aio.ServerInterceptor] = [interceptor]
    if settings.metrics_port:
        metrics = NodeMetrics(node)
        node.engine.observer = metrics
        interceptors.insert(0, MetricsInterceptor(metrics))
        metrics.serve(settings.host, settings.metrics_port)
        log.info("metrics", extra={"url": f"http://{settings.host}:{settings.metrics_port}/metrics"})
    tls = settings.tls_files() if not settings.insecure else None
    if tls is not None:  # checked at start; the CRL refuses revoked callers, the grants other kinds' calls
        access = node_access(settings.node_id, settings.operators_may_write_knowledge)
        crls = [p for p in (tls.crl, settings.crl_file()) if p]  # the site's file, if given, and the one over MQTT
        interceptors.insert(0, PeerCheckInterceptor(Revocations(crls), access))
    server = grpc.aio.server(options=opts, interceptors=interceptors)
    servicer = InferenceServicer(node.service)
    inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{settings.host}:{settings.port}"
    if tls is not None:  # mutual TLS: only holders of a site certificate may call
        port = server.add_secure_port(address, server_credentials(tls, require_client_auth=True))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    stop = asyncio.Event()
    failure: list[str] = []
    loop = asyncio.get_running_loop()

    def engine_failed(reason: str) -> None:
        """On the engine thread, before it fails the requests: health says so before any client hears."""
        failure.append(reason)
        marked = asyncio.run_coroutine_threadsafe(
            _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING), loop
        )
        with contextlib.suppress(Exception):
            marked.result(timeout=2.0)
        loop.call_soon_threadsafe(stop.set)

    node.engine.on_failure.append(engine_failed)

    def restart() -> None:  # a model switch, from the sync thread: stop as on SIGTERM
        loop.call_soon_threadsafe(stop.set)

    node.on_restart.append(restart)
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
    if node.engine.failure:  # it failed before the callback was in place
        failure.append(node.engine.failure)
        stop.set()
    else:
        await asyncio.to_thread(node.commit_model)
    log.info("listening", extra={"address": f"{settings.host}:{port}", "port": port})
    node.start_control_plane()

    def signalled() -> None:
        node.signalled = True  # a switch draining now stops here: the supervisor wants the node gone
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled)
    poller = asyncio.create_task(_poll_thermal(node))
    locker = asyncio.create_task(hold_update_lock(node, settings.update_lock_file, settings.update_lock_max_s))
    if ready is not None:
        ready.set()
    await stop.wait()

    for task in (poller, locker):  # the update lock is released: the supervisor is stopping us anyway
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    if failure:
        reason = failure[0]
        log.critical(
            "engine failed: not serving; exiting for the supervisor to restart the node",
            extra={"reason": reason, "exit_code": EXIT_ENGINE_FAILED, "grace_s": settings.failure_grace_s},
        )
        if node.agent is not None:
            await asyncio.to_thread(node.agent.report_failure, reason)
        await asyncio.sleep(settings.failure_grace_s)  # failed streams and health reach their clients
        await server.stop(grace=0.5)
        servicer.close()
        await asyncio.to_thread(node.close, reason)
        log.info("stopped", extra={"exit_code": EXIT_ENGINE_FAILED})
        return EXIT_ENGINE_FAILED

    log.info("draining", extra={"in_flight": node.engine.outstanding, "why": node.restart_reason or "signal"})
    node.service.start_draining()
    deadline = loop.time() + settings.drain_timeout_s
    while (node.engine.outstanding > 0 or node.service.preparing > 0) and loop.time() < deadline and not failure:
        await asyncio.sleep(0.05)
    await server.stop(grace=1.0)
    servicer.close()
    node.close()
    log.info("stopped")
    return EXIT_ENGINE_FAILED if failure else 0
