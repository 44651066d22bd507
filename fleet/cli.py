"""`edgefleet`: the operator's command line. A gRPC client like any other."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import grpc
from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError

from edgefleet.fleet import ask as ask_module
from edgefleet.fleet import knowledge_commands, site_commands
from edgefleet.fleet.ask import AskError
from edgefleet.fleet.console import cli_commands as console_cli
from edgefleet.fleet.control import CommandRefused, OrchestratorSession, OrchestratorUnreachable, pages, refusal
from edgefleet.fleet.exit_codes import describe_rpc_error
from edgefleet.fleet.grpc_channel import node_channel
from edgefleet.fleet.knowledge_commands import KnowledgeCommandError
from edgefleet.fleet.settings import ConfigFileError, FleetSettings
from edgefleet.proto.commands import Command
from edgefleet.proto.input_limits import brief
from edgefleet.proto.payloads import describe_validation_error
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc


class CliError(Exception):
    """A problem the operator can fix; printed without a traceback."""


EPILOG = """\
settings (strongest first): flags, environment variables, the config file, defaults.
environment variables:
  EDGEFLEET_NODE         node address host:port (--node)
  EDGEFLEET_MQTT_URL     the site's broker, e.g. mqtt://127.0.0.1:18830 (--mqtt-url)
  EDGEFLEET_SITE         the site to operate (--site)
  EDGEFLEET_TIMEOUT_S    deadline of one call in seconds (--timeout)
  EDGEFLEET_TOPIC_ROOT   root of every MQTT topic (default edgefleet/{site}/)
  EDGEFLEET_MQTT_USERNAME, EDGEFLEET_MQTT_PASSWORD, EDGEFLEET_MQTT_CA_FILE,
  EDGEFLEET_MQTT_CERT_FILE, EDGEFLEET_MQTT_KEY_FILE   broker credentials and TLS
                         (the same certificate is used on gRPC; source an operator's
                         edgefleet.env from `edgefleet fleet enroll-operator`)
  EDGEFLEET_INSECURE     1: plaintext, no certificates, unsigned commands (--insecure)
  EDGEFLEET_CLI_CONFIG   the config file (default $XDG_CONFIG_HOME/edgefleet/cli.toml,
                         else ~/.config/edgefleet/cli.toml)
config file (TOML), for example:
  mqtt_url = "mqtt://127.0.0.1:18830"
  site = "demo"
  node = "127.0.0.1:50061"
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgefleet",
        description="Operate an edgefleet site",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--node", help="node address host:port (EDGEFLEET_NODE; default 127.0.0.1:50051)")
    p.add_argument("--group", help="use an online node of this group (found through the orchestrator)")
    p.add_argument("--timeout", type=float, help="deadline in seconds (EDGEFLEET_TIMEOUT_S; default 120)")
    p.add_argument("--mqtt-url", help="the site's broker (EDGEFLEET_MQTT_URL; default mqtt://127.0.0.1:1883)")
    p.add_argument("--site", help="the site to operate (EDGEFLEET_SITE; default 'default')")
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="local development only: plaintext MQTT and gRPC, unsigned commands (EDGEFLEET_INSECURE)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    ask_module.add_parser(sub)
    info = sub.add_parser("node-info", help="show what a node runs and how busy it is")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    knowledge_commands.add_parser(sub)
    site_commands.add_parser(sub)
    console_cli.register_console(sub)
    return p


def _settings(args: argparse.Namespace) -> FleetSettings:
    """Flags over environment over config file over defaults."""
    flags = {
        "node": args.node,
        "timeout_s": args.timeout,
        "mqtt_url": args.mqtt_url,
        "site": args.site,
        "insecure": args.insecure,
    }
    try:
        settings = FleetSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as e:
        raise CliError(f"invalid setting: {describe_validation_error(e)}") from e
    args.timeout = settings.timeout_s
    return settings


def group_node(settings: FleetSettings, group: str, timeout: float, err: TextIO) -> tuple[str, str]:
    """(gRPC address, node id) of an online node of `group` (the first by id), from `fleet status` pages."""
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:

        def nodes(**filters: str) -> Iterator[dict[str, Any]]:
            for result in pages(lambda c: s.call(c, min(timeout, 30.0)), Command(op="status", **filters)):
                if not result.ok:
                    raise CliError(refusal(result))
                yield from result.data.get("nodes", [])

        # in the group by its own report (the filter takes assigned groups it has not applied yet, too)
        online = (n for n in nodes(group=group, state="online") if group in n.get("groups", []))
        chosen = next((n for n in online if n.get("address")), None)
        if chosen is None:
            members = [n for n in nodes(group=group) if group in n.get("groups", [])]
            known = sorted({g for n in nodes() for g in n.get("groups", [])})
    if chosen is None:
        states = ", ".join(f"{n['node_id']} ({n['state']})" for n in members)
        why = f"its nodes: {states}" if members else "no node is in it"
        raise CliError(
            f"no online node of group {brief(group)} advertises a gRPC address ({why}); "
            f"groups of site {settings.site}: {', '.join(known) or 'none'}"
        )
    err.write(f"node {chosen['node_id']} ({chosen['address']}) of group {group}\n")
    return str(chosen["address"]), str(chosen["node_id"])


def _node_info(stub: pb_grpc.InferenceStub, args: argparse.Namespace, out: TextIO) -> int:
    info = stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=args.timeout)
    if args.json:
        out.write(json.dumps(MessageToDict(info, preserving_proto_field_name=True), indent=2) + "\n")
        return 0
    m = info.model
    th = info.thermal
    rows = [
        ("node", info.node_id),
        ("status", info.status),
        ("profile", info.profile),
        ("model", f"{m.name} ({m.architecture}, {m.quantization}, {m.file_size_bytes / 2**20:.1f} MiB)"),
        ("sha256", m.sha256),
        ("context", f"{info.n_ctx} tokens per slot"),
        ("slots", f"{info.slots_busy} busy / {info.slots_available} usable / {info.slots_total} total"),
        ("queue", f"{info.queue_depth} / {info.queue_limit}"),
        (
            "memory",
            f"RSS {info.rss_bytes / 2**20:.0f} MiB, estimate {info.memory_estimate_bytes / 2**20:.0f} MiB, "
            f"budget {info.memory_budget_bytes / 2**20:.0f} MiB",
        ),
        (
            "thermal",
            f"{th.temperature_c:.1f} C{' throttled' if th.throttled else ''}{' shedding' if th.shedding else ''}"
            if th.available
            else "no thermal zone",
        ),
        ("adapters", ", ".join(f"{a.name}@{a.version}" for a in info.adapters) or "none"),
        ("knowledge", f"{info.search_backend or 'off'} search, embedder {info.embedder or '-'}"),
        (
            "versions",
            ", ".join(f"{k} {v}" for k, v in MessageToDict(info.versions, preserving_proto_field_name=True).items()),
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        out.write(f"{k:<{width}}  {v}\n")
    return 0


def _node_command(
    settings: FleetSettings, address: str, name: str, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    channel = node_channel(settings, address, name or None, settings.api_key)
    stub = pb_grpc.InferenceStub(channel)
    try:
        if args.command == "ask":
            return ask_module.ask(stub, args, out, err)
        if args.command == "knowledge":
            return knowledge_commands.run(stub, args, out)
        return _node_info(stub, args, out)
    except grpc.RpcError as e:
        line, status = describe_rpc_error(e, address)
        err.write(f"edgefleet: {line}\n")
        return status
    finally:
        channel.close()


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "console_handler", None):  # the console, its accounts, balena: settings of their own
        # The global flags go on as overrides of the site section; each handler builds its settings with them.
        flags = {"mqtt_url": args.mqtt_url, "site": args.site, "insecure": args.insecure}
        try:
            return int(args.console_handler(args, overrides={k: v for k, v in flags.items() if v is not None}))
        except ValidationError as e:
            err.write(f"edgefleet: invalid setting: {describe_validation_error(e)}\n")
            return 2
    try:
        settings = _settings(args)
        if args.command == "fleet":
            return site_commands.run(args, settings, out)
        if args.group:
            address, name = group_node(settings, args.group, args.timeout, err)
        else:
            address, name = settings.node, settings.node_name
        return _node_command(settings, address, name, args, out, err)
    except (
        CliError,
        AskError,
        KnowledgeCommandError,
        site_commands.FleetCommandError,
        OrchestratorUnreachable,
        CommandRefused,
        ConfigFileError,
        ValueError,
    ) as e:
        err.write(f"edgefleet: {e}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
