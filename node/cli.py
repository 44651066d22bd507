"""`edgefleet-node`: run a node on this device."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal
import sys

from pydantic import ValidationError

from edgefleet.node.errors import EdgefleetError
from edgefleet.node.settings import NodeSettings
from edgefleet.plumbing import failpoints
from edgefleet.plumbing.logs import configure_logging

log = logging.getLogger("edgefleet.node")
EXIT_RESTART = 75  # EX_TEMPFAIL: a model switch could not execute the node again; start it again


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet-node", description="edgefleet node: a local language model over gRPC")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="load the model and serve gRPC until SIGTERM")
    serve.add_argument("--profile", help="firmware profile name or TOML path (default: auto-detect)")
    serve.add_argument("--model", help="catalog model name or GGUF path (default: the profile's)")
    serve.add_argument("--port", type=int, help="gRPC port (default 50051; 0 picks one)")
    serve.add_argument("--host", help="listen address (default 0.0.0.0; 127.0.0.1 when insecure)")
    serve.add_argument("--node-id", help="this node's id (default: the hostname)")
    serve.add_argument("--data-dir", help="state folder (default ~/.local/share/edgefleet)")
    serve.add_argument("--threads", type=int, help="llama.cpp compute threads (default: the profile's)")
    serve.add_argument("--log-format", choices=["json", "text"], help="log format (default json)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus metrics on this port (default 0: off)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="local development only: plaintext gRPC and MQTT, unsigned desired state (EDGEFLEET_INSECURE)",
    )
    sub.add_parser("profiles", help="list the shipped firmware profiles")
    rebuild = sub.add_parser(
        "rebuild-db", help="move a corrupted knowledge database aside and start an empty one (then ingest again)"
    )
    rebuild.add_argument("--data-dir", help="state folder (default ~/.local/share/edgefleet)")
    return p


def _rebuild_db(data_dir: str | None) -> int:
    from pathlib import Path

    from edgefleet.node.knowledge.caches import default_cache_path
    from edgefleet.node.knowledge.store import KnowledgeStore
    from edgefleet.node.runtime import KNOWLEDGE_DB
    from edgefleet.node.settings import NodeSettings

    settings = NodeSettings(data_dir=Path(data_dir)) if data_dir else NodeSettings()
    path = Path(settings.data_dir) / KNOWLEDGE_DB
    if not path.exists():
        sys.stderr.write(f"edgefleet-node: {path} does not exist; nothing to rebuild\n")
        return 2
    moved = KnowledgeStore.rebuild(path)
    default_cache_path(path).unlink(missing_ok=True)  # caches refer to the old content
    sys.stdout.write(f"moved {path} to {moved}; an empty store is in its place: ingest or push the collections again\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "rebuild-db":
        return _rebuild_db(args.data_dir)
    if args.command == "profiles":
        from edgefleet.node.profiles import builtin_profiles, load_profile_file

        for name, path in builtin_profiles().items():
            prof = load_profile_file(path)
            c = prof.context
            sys.stdout.write(
                f"{name:24} {prof.memory.budget_mb:>6} MiB  {prof.compute.threads:>2} threads  "
                f"{c.slots:>2} slots x {c.n_ctx} ctx  {prof.device.description}\n"
            )
        return 0
    overrides = {
        k: v
        for k, v in {
            "profile": args.profile,
            "model": args.model,
            "port": args.port,
            "host": args.host,
            "node_id": args.node_id,
            "data_dir": args.data_dir,
            "log_format": args.log_format,
            "threads": args.threads,
            "metrics_port": args.metrics_port,
            "insecure": args.insecure,
        }.items()
        if v is not None
    }
    try:
        settings = NodeSettings(**overrides)
    except ValidationError as e:
        sys.stderr.write(f"edgefleet-node: invalid setting: {e}\n")
        return 2
    configure_logging(settings.node_id, settings.log_level, settings.log_format)
    if not settings.may_start(log, "edgefleet-node", "this node"):
        return 2
    try:
        switched_on = failpoints.load_env()
    except ValueError as e:
        sys.stderr.write(f"edgefleet-node: {e}\n")
        return 2
    if switched_on:
        log.warning("fail points switched on: this node will fail on purpose", extra={"failpoints": switched_on})
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    from edgefleet.node.api.server import serve
    from edgefleet.node.runtime import build_node

    try:
        node = build_node(settings)
    except EdgefleetError as e:
        log.error("cannot start", extra={"reason": str(e)})
        sys.stderr.write(f"edgefleet-node: cannot start: {e}\n")
        return 2
    try:
        code = asyncio.run(serve(node, settings))
    except OSError as e:
        node.close()
        sys.stderr.write(f"edgefleet-node: {e}\n")
        return 2
    if code == 0 and node.restart_reason and not node.signalled:  # a model switch: the same process, again
        from edgefleet.node.model_switch import reexec

        log.info("executing again", extra={"reason": node.restart_reason})
        try:
            reexec()
        except OSError as e:
            sys.stderr.write(f"edgefleet-node: cannot execute again ({e}); exiting for the supervisor\n")
            return EXIT_RESTART
    return code


if __name__ == "__main__":
    sys.exit(main())
