"""`edgefleet-orchestrator`: one per site."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from pydantic import ValidationError

from edgefleet.orchestrator.runtime import build_orchestrator
from edgefleet.orchestrator.settings import OrchestratorSettings
from edgefleet.plumbing import failpoints
from edgefleet.plumbing.logs import configure_logging

log = logging.getLogger("edgefleet.orchestrator")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgefleet-orchestrator", description="edgefleet site orchestrator")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="keep the fleet in sync until SIGTERM")
    serve.add_argument("--mqtt-url", help="site broker, e.g. mqtt://127.0.0.1:1883")
    serve.add_argument("--site", help="site name")
    serve.add_argument("--registry-db", help="registry SQLite file")
    serve.add_argument("--log-format", choices=["json", "text"])
    serve.add_argument(
        "--front-door-address",
        help="gRPC front door host:port (default 0.0.0.0:50050; insecure: 127.0.0.1:50050); '' turns it off",
    )
    serve.add_argument(
        "--openai-address",
        help="OpenAI-compatible HTTP host:port (default 0.0.0.0:8080; insecure: 127.0.0.1:8080); '' turns it off",
    )
    serve.add_argument("--metrics-address", help="a /metrics listener of its own, host:port (default: none)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="local development only: plaintext MQTT, gRPC and HTTP, unsigned commands (EDGEFLEET_INSECURE)",
    )
    args = p.parse_args(argv)
    overrides = {
        k: v
        for k, v in {
            "mqtt_url": args.mqtt_url,
            "site": args.site,
            "registry_db": args.registry_db,
            "log_format": args.log_format,
            "front_door_address": args.front_door_address,
            "openai_address": args.openai_address,
            "metrics_address": args.metrics_address,
            "insecure": args.insecure,
        }.items()
        if v is not None
    }
    try:
        settings = OrchestratorSettings(**overrides)
    except (ValidationError, KeyError, ValueError) as e:
        sys.stderr.write(f"edgefleet-orchestrator: invalid setting: {e}\n")
        return 2
    configure_logging("orchestrator", settings.log_level, settings.log_format)
    if not settings.may_start(log, "edgefleet-orchestrator", "the orchestrator"):
        return 2
    try:
        switched_on = failpoints.load_env()
    except ValueError as e:
        sys.stderr.write(f"edgefleet-orchestrator: {e}\n")
        return 2
    if switched_on:
        log.warning("fail points switched on: it will fail on purpose", extra={"failpoints": switched_on})
    try:
        orch = build_orchestrator(settings)
    except Exception as e:  # a registry or artifact directory that cannot be opened: say which, exit
        log.exception("cannot start")
        sys.stderr.write(f"edgefleet-orchestrator: cannot start: {e}\n")
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    orch.start()
    log.info("orchestrator running", extra={"site": settings.site, "broker": settings.mqtt_url})
    stop.wait()
    orch.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
