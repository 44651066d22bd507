"""`edgefleet fleet …`: site-wide commands, answered by the orchestrator over MQTT."""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from edgefleet.fleet import (
    adapter_commands,
    agent_commands,
    applied,
    group_commands,
    identity_commands,
    keys_commands,
    model_commands,
    rollout_commands,
    rule_commands,
    uplink_commands,
)
from edgefleet.fleet.adapter_commands import bar
from edgefleet.fleet.balena import cli_commands as balena_cli
from edgefleet.fleet.balena.client import BalenaFleet, BalenaSyncError, make_sdk
from edgefleet.fleet.balena.status_view import StatusRow
from edgefleet.fleet.balena.status_view import join as join_balena
from edgefleet.fleet.balena.status_view import render as render_balena
from edgefleet.fleet.console.cli_commands import register_operator
from edgefleet.fleet.control import OrchestratorSession, pages, refusal
from edgefleet.fleet.settings import FleetSettings
from edgefleet.proto.artifacts import SiteKey
from edgefleet.proto.commands import Command
from edgefleet.proto.input_limits import brief
from edgefleet.proto.paging import MAX_PAGE_LIMIT, NodeFilter, summary_line
from edgefleet.proto.payloads import PayloadError, TemplateSpec, describe_validation_error, validation_field
from edgefleet.proto.templates import TemplateError, compile_template, declared_variables
from edgefleet.proto.topics import valid_name


class FleetCommandError(Exception):
    """A problem the operator can fix (bad file, refused command).

    `field`: what it is about, where one thing is (`load_template`: "name", "version", "file", or
    another `TemplateSpec` field); empty otherwise."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = sub.add_parser("fleet", help="site-wide commands through the orchestrator")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True)
    st = fsub.add_parser("status", help="nodes, groups, status, last seen, templates in sync or drifted")
    st.add_argument("--json", action="store_true", help="one JSON list of the nodes (with --limit: the page, summary)")
    st.add_argument("--group", default="", help="only nodes in this group (or assigned to it)")
    st.add_argument("--state", default="", choices=["online", "offline", "failed"], help="only nodes in this state")
    st.add_argument("--profile", default="", help="only nodes of this hardware profile")
    st.add_argument("--model", default="", help="only nodes serving this model")
    st.add_argument("--out-of-sync", action="store_true", help="only nodes drifted from their desired state")
    st.add_argument("--errors", action="store_true", help="only nodes whose engine or an artifact transfer failed")
    st.add_argument("--search", default="", help="only nodes whose id contains this (any case)")
    st.add_argument(
        "--limit", type=int, help=f"one page of at most N nodes (0: the counts only; at most {MAX_PAGE_LIMIT})"
    )
    st.add_argument("--offset", type=int, default=0, help="start at this node (the last page's next offset)")
    st.add_argument(
        "--balena",
        metavar="FLEET",
        help="also balena's view of this balena fleet beside each node, disagreements flagged (token: BALENA_API_KEY)",
    )
    push = fsub.add_parser("push-template", help="push a prompt template to a group or a node")
    push.add_argument("file", type=Path, help="a Jinja2 file, or YAML/JSON with template, system, variables")
    push.add_argument("--name", required=True)
    push.add_argument("--version", required=True)
    push.add_argument("--target", required=True, help="GROUP or NODE (or group:NAME / node:NAME)")
    push.add_argument("--system", help="system prompt (overrides the file's)")
    applied.add_push_flags(push, force=True)
    init = fsub.add_parser("init-site", help="create the site's Ed25519 key pair for signing artifacts")
    init.add_argument("--dir", type=Path, default=Path.home() / ".config" / "edgefleet", help="where to write it")
    init.add_argument("--force", action="store_true", help="replace an existing key pair (key rotation)")
    init.add_argument(
        "--uplink",
        metavar="HOST:PORT",
        help="also write this site broker's bridge to a central broker (as `fleet uplink-config`) into --uplink-out",
    )
    init.add_argument("--uplink-out", type=Path, help="where the bridge block goes (default <dir>/uplink.conf)")
    uplink_commands.tls_flags(init)
    rm = fsub.add_parser("rm-template", help="remove a template from a group or a node")
    rm.add_argument("name")
    rm.add_argument("--target", required=True)
    applied.add_wait_flags(rm)
    adapter_commands.add_parsers(fsub)
    model_commands.add_parsers(fsub)
    rollout_commands.add_parsers(fsub)
    rule_commands.add_parsers(fsub)
    agent_commands.add_parsers(fsub)
    group_commands.add_parsers(fsub)
    register_operator(fsub)
    identity_commands.add_parsers(fsub)
    keys_commands.add_parsers(fsub)
    uplink_commands.add_parsers(fsub)
    balena_cli.register(fsub)


def load_template(path: Path, name: str, version: str, system: str | None) -> TemplateSpec:
    if not valid_name(name):
        raise FleetCommandError(
            f"template name {brief(name)} is invalid: use letters, digits, '.', '_' or '-', no '/' or '..'",
            field="name",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FleetCommandError(f"cannot read {path}: {e.strerror}", field="file") from e
    except UnicodeDecodeError as e:
        raise FleetCommandError(f"{path} is not UTF-8 text", field="file") from e
    fields: dict[str, Any] = {}
    if path.suffix in (".yaml", ".yml", ".json"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise FleetCommandError(f"{path} is not valid YAML/JSON: {e}", field="file") from e
        if not isinstance(data, dict) or "template" not in data:
            raise FleetCommandError(
                f"{path} must be a mapping with a 'template' key (and system, variables)", field="file"
            )
        fields = {k: data[k] for k in ("template", "system", "variables", "description") if k in data}
    else:
        fields["template"] = text
    if system is not None:
        fields["system"] = system
    try:
        if "variables" not in fields:
            used = set(declared_variables(fields["template"]))
            if fields.get("system"):
                used |= set(declared_variables(fields["system"]))
            fields["variables"] = sorted(used)
        spec = TemplateSpec(name=name, version=version, **fields)
        compile_template(spec)
    except ValidationError as e:
        raise FleetCommandError(f"template refused: {describe_validation_error(e)}", field=validation_field(e)) from e
    except TemplateError as e:
        raise FleetCommandError(str(e), field="template") from e
    return spec


def _age(ts: float) -> str:
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


def _groups(n: dict[str, Any]) -> str:
    """A node's groups as it reports them, and assigned ones it has not applied yet."""
    text = ",".join(n["groups"]) or "-"
    pending = [g for g in n.get("assigned_groups", []) if g not in n["groups"]]
    return text + (f" (+{','.join(pending)} assigned)" if pending else "")


def model_cell(n: dict[str, Any]) -> str:
    """The model a node serves (what it reports, else its status's), and the one desired for it when
    that differs (a model on its way: `qwen@1 -> tiny@2`)."""
    serving = n.get("reported_model") or n["model"] or "-"
    desired = n.get("desired_model", "")
    return f"{serving} -> {desired}" if desired and desired != serving else serving


def print_status(nodes: list[dict[str, Any]], out: TextIO) -> None:
    header = ["NODE", "GROUPS", "PROFILE", "MODEL", "STATUS", "LAST SEEN", "OUTBOX", "TEMPLATES / ADAPTERS"]
    rows = []
    for n in nodes:
        templates = ", ".join(f"{k}@{v}" for k, v in sorted(n["templates"].items())) or "-"
        adapters = ", ".join(f"{k}@{v}" for k, v in sorted(n.get("adapters", {}).items()))
        if adapters:
            templates += f"; adapters {adapters}"
        knowledge = ", ".join(f"{k}@{v}" for k, v in sorted(n.get("knowledge", {}).items()))
        if knowledge:
            templates += f"; knowledge {knowledge}"
        for key, t in sorted(n.get("transfers", {}).items()):
            if t["state"] in ("fetching", "verifying"):
                templates += f"; {key}@{t['version']} {bar(t['have'], t['total'], 12)}"
        sync = n["sync"] + (f" ({'; '.join(n['drift'])})" if n["drift"] else "")
        rows.append(
            [
                n["node_id"],
                _groups(n),
                n["profile"],
                model_cell(n),
                n["state"],
                _age(n["last_seen"]),
                "-" if n.get("outbox") is None else str(n["outbox"]),
                f"{sync}: {templates}",
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + str(r[-1]) + "\n")
    if not rows:
        out.write("(no nodes have reported yet)\n")


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("group", "state", "profile", "model", "out_of_sync", "errors", "search")}


def status_command(args: argparse.Namespace, offset: int = 0, limit: int | None = None) -> Command:
    """The `status` command of `fleet status`'s filter flags, for one page."""
    try:
        return Command(op="status", offset=offset, limit=limit, **_filters(args))
    except PayloadError as e:
        raise FleetCommandError(str(e).replace("invalid status command: ", "fleet status: --"), field=e.field) from e


def status_pages(s: OrchestratorSession, command: Command, timeout: float) -> Iterator[dict[str, Any]]:
    """The data of each page of a `status` command, from its offset to the last page."""
    for result in pages(lambda c: s.call(c, timeout), command):
        if not result.ok:
            raise FleetCommandError(refusal(result))
        yield result.data


def _write_json_list(items: Iterable[Any], out: TextIO) -> None:
    """`json.dumps(list(items), indent=2)`, written item by item (a page at a time, never all in memory twice)."""
    first = True
    for item in items:
        out.write(("[\n" if first else ",\n") + textwrap.indent(json.dumps(item, indent=2), "  "))
        first = False
    out.write("[]\n" if first else "\n]\n")


def _print_page_notes(data: dict[str, Any], args: argparse.Namespace, shown: int, out: TextIO) -> None:
    """The summary line, and what the filters and the page hold (before the table)."""
    if "summary" in data:
        out.write(summary_line(data["summary"]) + "\n")
    described = NodeFilter(**_filters(args)).describe()
    total = data.get("total", shown)
    if described:
        out.write(f"{total} match {described}\n")
    if args.limit:  # one page (--limit 0: the counts alone)
        following = data.get("next_offset")
        span = f"nodes {args.offset + 1}-{args.offset + shown} of {total}" if shown else f"no nodes of {total} here"
        out.write(span + (f"; next page: --offset {following}" if following is not None else "") + "\n")


def status(args: argparse.Namespace, settings: FleetSettings, timeout: float, out: TextIO) -> int:
    """`fleet status`: every page (or the one `--limit` asks for), the summary line, then the table."""
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:
        if args.limit is not None:  # one page, as the orchestrator answers it
            data = next(status_pages(s, status_command(args, args.offset, args.limit), timeout))
            if args.json:
                out.write(json.dumps(data, indent=2) + "\n")
            else:
                _print_page_notes(data, args, len(data.get("nodes", [])), out)
                if args.limit:
                    print_status(data.get("nodes", []), out)
            return 0
        datas = status_pages(s, status_command(args, args.offset), timeout)
        if args.json and not args.balena:  # streamed: a page at a time
            _write_json_list((n for d in datas for n in d.get("nodes", [])), out)
            return 0
        last: dict[str, Any] = {}
        nodes: list[dict[str, Any]] = []
        for last in datas:
            nodes += last.get("nodes", [])
    rows = balena_rows(args.balena, nodes, settings.balena_api_url) if args.balena else None
    if args.json:
        out.write(json.dumps({"nodes": nodes, "balena": [r.as_dict() for r in rows or []]}, indent=2) + "\n")
        return 0
    _print_page_notes(last, args, len(nodes), out)
    print_status(nodes, out)
    if rows is not None:
        out.write(f"\nbalena fleet {args.balena}:\n")
        out.writelines(line + "\n" for line in render_balena(rows))
    return 0


def init_site(directory: Path, force: bool, site: str, out: TextIO) -> int:
    private, public = directory / f"{site}.key", directory / f"{site}.pub"
    if private.exists() and not force:
        raise FleetCommandError(f"{private} exists; pass --force to replace it (nodes must then pin the new {public})")
    directory.mkdir(parents=True, exist_ok=True)
    SiteKey.generate().save(private, public)
    out.write(f"wrote {private} (keep it on the orchestrator only) and {public} (pin it on every node)\n")
    return 0


def balena_rows(fleet: str, nodes: list[dict[str, Any]], api_url: str | None) -> list[StatusRow]:
    """balena's devices of `fleet` joined with the nodes (`api_url`, EDGEFLEET_BALENA_API_URL: another API)."""
    try:
        devices = BalenaFleet(make_sdk(api_url)).devices(fleet)
    except BalenaSyncError as e:
        raise FleetCommandError(str(e)) from e
    return join_balena(devices, nodes)


def _has_key(directory: Path, settings: FleetSettings) -> bool:
    """An existing key pair with `--uplink` alone: keep it, write the bridge (no --force needed)."""
    return (directory / f"{settings.site}.key").exists()


def run(args: argparse.Namespace, settings: FleetSettings, out: TextIO) -> int:
    if args.fleet_command == "init-site":
        keep = args.uplink and not args.force and _has_key(args.dir, settings)
        made = 0 if keep else init_site(args.dir, args.force, settings.site, out)
        if args.uplink:
            up = argparse.Namespace(**{**vars(args), "fleet_command": "uplink-config", "central": args.uplink})
            up.out = args.uplink_out or args.dir / "uplink.conf"
            return uplink_commands.run(up, settings, out)
        return made
    if args.fleet_command in identity_commands.VERBS:
        try:
            return identity_commands.run(args, settings.site, settings.topic_root, out)
        except identity_commands.IdentityCommandError as e:
            raise FleetCommandError(str(e)) from e
    if args.fleet_command in keys_commands.VERBS:
        try:
            return keys_commands.run(args, settings, out)
        except keys_commands.KeysCommandError as e:
            raise FleetCommandError(str(e)) from e
    if args.fleet_command in uplink_commands.VERBS:
        try:
            return uplink_commands.run(args, settings, out)
        except uplink_commands.UplinkCommandError as e:
            raise FleetCommandError(str(e)) from e
    if args.fleet_command in group_commands.VERBS:
        try:
            return group_commands.run(args, settings, out)
        except group_commands.GroupCommandError as e:
            raise FleetCommandError(str(e)) from e
    if args.fleet_command in agent_commands.VERBS:
        try:
            return agent_commands.run(args, settings, out)
        except agent_commands.AgentCommandError as e:
            raise FleetCommandError(str(e)) from e
    if args.fleet_command in rollout_commands.VERBS:
        try:
            return rollout_commands.run(args, settings, out)
        except rollout_commands.RolloutCommandError as e:
            raise FleetCommandError(str(e)) from e
    if args.fleet_command in model_commands.VERBS:
        try:
            return model_commands.run(args, settings, out)
        except model_commands.ModelCommandError as e:
            raise FleetCommandError(str(e)) from e
    if args.fleet_command in ("push-rule", "rm-rule", "rules"):
        try:
            return rule_commands.run(args, settings, out)
        except rule_commands.RuleCommandError as e:
            raise FleetCommandError(str(e)) from e
    if args.fleet_command in ("push-adapter", "rm-adapter", "adapters", "push-knowledge", "rm-knowledge"):
        try:
            return adapter_commands.run(args, settings, out)
        except adapter_commands.AdapterCommandError as e:
            raise FleetCommandError(str(e)) from e
    timeout = min(args.timeout, 30.0)
    if args.fleet_command == "status":
        return status(args, settings, timeout, out)
    if args.fleet_command == "push-template":
        spec = load_template(args.file, args.name, args.version, args.system)
        cmd = Command(op="push-template", target=args.target, template=spec, force=args.force, new_group=args.new_group)
    else:
        cmd = Command(op="rm-template", target=args.target, name=args.name)
    return applied.desired_change(settings, args, cmd, out)
