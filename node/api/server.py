"""The node's gRPC server: Inference, health and reflection, thermal polling and drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgefleet.node.api.servicer import InferenceServicer
from edgefleet.node.runtime import Node
from edgefleet.node.settings import NodeSettings
from edgefleet.proto.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger("edgefleet.node.server")
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


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


async def serve(node: Node, settings: NodeSettings, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain: in-flight requests finish, new ones get UNAVAILABLE."""
    opts = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=opts)
    inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(node.service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{settings.host}:{settings.port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("listening", extra={"address": f"{settings.host}:{port}", "port": port})
    node.start_control_plane()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    poller = asyncio.create_task(_poll_thermal(node))
    if ready is not None:
        ready.set()
    await stop.wait()

    log.info("draining", extra={"in_flight": node.engine.outstanding})
    node.service.draining = True
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    deadline = loop.time() + settings.drain_timeout_s
    while node.engine.outstanding > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    poller.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await poller
    await server.stop(grace=1.0)
    node.close()
    log.info("stopped")
