"""`edgefleet fleet push-adapter | rm-adapter | adapters`.

push-adapter uploads the file to the orchestrator in pieces over MQTT (each confirmed), asks it
to sign and publish the adapter for a target, then shows each target node's transfer with a
progress bar until every one has loaded it, refused it, or the wait ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from edgefleet.fleet.control import OrchestratorSession, pages, refusal
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.uploads import upload
from edgefleet.proto.commands import Command
from edgefleet.proto.input_limits import brief
from edgefleet.proto.knowledge_bundle import BundleDocument, write_bundle
from edgefleet.proto.payloads import PayloadError
from edgefleet.proto.topics import valid_name

MAX_ADAPTER_BYTES = 2 * 1024**3


class AdapterCommandError(Exception):
    """A problem the operator can fix (bad file, refused command)."""


def add_parsers(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push = fsub.add_parser("push-adapter", help="push a LoRA adapter (GGUF) to a group or a node")
    push.add_argument("file", type=Path)
    push.add_argument("--name", required=True)
    push.add_argument("--version", required=True)
    push.add_argument("--target", required=True, help="GROUP or NODE (or group:NAME / node:NAME)")
    push.add_argument("--no-wait", action="store_true", help="return once the orchestrator accepted it")
    push.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the nodes (default 300)")
    push.add_argument("--new-group", action="store_true", help="create the group if no node is in it yet")
    rm = fsub.add_parser("rm-adapter", help="remove an adapter from a group or a node")
    rm.add_argument("name")
    rm.add_argument("--target", required=True)
    ls = fsub.add_parser("adapters", help="which adapters and knowledge collections are where, in which version")
    ls.add_argument("--json", action="store_true", help="manifests, desired versions, nodes (with --limit: the page)")
    ls.add_argument("--group", default="", help="only nodes in this group (or assigned to it)")
    ls.add_argument("--limit", type=int, help="one page of at most N nodes (with the next page's offset)")
    ls.add_argument("--offset", type=int, default=0, help="start at this node (the last page's next offset)")
    pk = fsub.add_parser(
        "push-knowledge", help="push a folder of .md/.txt/.html/.pdf documents as a knowledge collection"
    )
    pk.add_argument("dir", type=Path)
    pk.add_argument("--collection", required=True)
    pk.add_argument("--version", required=True)
    pk.add_argument("--target", required=True, help="GROUP or NODE (or group:NAME / node:NAME)")
    pk.add_argument("--no-wait", action="store_true", help="return once the orchestrator accepted it")
    pk.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the nodes (default 300)")
    pk.add_argument("--new-group", action="store_true", help="create the group if no node is in it yet")
    rk = fsub.add_parser("rm-knowledge", help="remove a knowledge collection from a group or a node")
    rk.add_argument("name")
    rk.add_argument("--target", required=True)


def bar(have: int, total: int, width: int = 24) -> str:
    filled = width * have // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {have}/{total}"


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AdapterCommandError(f"cannot read {path}: {e.strerror}") from e
    if not data:
        raise AdapterCommandError(f"{path} is empty")
    if len(data) > MAX_ADAPTER_BYTES:
        raise AdapterCommandError(f"{path} is {len(data)} bytes; adapters may be at most {MAX_ADAPTER_BYTES}")
    if data[:4] != b"GGUF":
        raise AdapterCommandError(f"{path} is not a GGUF file")
    return data


def knowledge_bundle(directory: Path, err: TextIO) -> bytes:
    """The folder's documents (.md, .txt, .html, .pdf) as a knowledge bundle, deterministic: ids and
    metadata {"source": ...} are the paths relative to the folder; PDFs travel as pages (format "pages")."""
    from edgefleet.fleet.knowledge_commands import KnowledgeCommandError, document_files, read_document

    if not directory.is_dir():
        raise AdapterCommandError(f"{directory} is not a folder")
    try:
        files = document_files([directory])
        docs = []
        for i, (p, rel) in enumerate(files, start=1):
            text, fmt = read_document(p)
            docs.append(BundleDocument(rel, text, {"source": rel}, "" if fmt == "auto" else fmt))
            if err.isatty() or i == len(files):  # redrawn on a terminal; the last line only in a log
                err.write(f"\rbundle {bar(i, len(files))}")
    except KnowledgeCommandError as e:
        raise AdapterCommandError(str(e)) from e
    err.write("\n")
    return write_bundle(docs)


def _upload(s: OrchestratorSession, data: bytes, timeout: float, err: TextIO) -> str:
    """`fleet/uploads.py` with a progress bar on `err` (redrawn on a terminal; the last state in a log)."""

    def progress(sent: int, count: int, done: bool) -> None:
        if err.isatty() or done or sent == count:
            err.write(f"\rupload {bar(sent, count)}")

    sha, r = upload(lambda cmd: s.call(cmd, timeout), data, progress)
    err.write("\n")
    if not r.ok:
        raise AdapterCommandError(f"upload {refusal(r)}")
    return sha


def _watch(s: OrchestratorSession, kind: str, name: str, version: str, wait: float, timeout: float, err: TextIO) -> int:
    """Show progress per target node until all loaded it (0), one refused it (1), or time ran out (1)."""
    desired_key, loaded_key = ("desired", "loaded") if kind == "adapter" else ("knowledge_desired", "knowledge_loaded")
    deadline = time.monotonic() + wait
    lines = 0
    shown: dict[str, str] = {}
    while True:
        nodes: dict[str, Any] = overview(s, Command(op="adapters"), timeout)["nodes"]
        targets = {n: v for n, v in nodes.items() if v[desired_key].get(name) == version}
        states: dict[str, str] = {}
        for node_id, v in sorted(targets.items()):
            t = v["transfers"].get(f"{kind}/{name}")
            if v[loaded_key].get(name) == version:
                states[node_id] = "loaded"
            elif t and t["version"] == version and t["state"] == "failed":
                states[node_id] = f"refused: {t['error']}"
            elif t and t["version"] == version:
                states[node_id] = f"{t['state']} {bar(t['have'], t['total'])}"
            else:
                states[node_id] = "waiting" if v["state"] == "online" else "offline: fetches when it connects"
        if err.isatty():  # redraw the lines in place
            err.write(f"\x1b[{lines}F" if lines else "")
            for node_id, st in states.items():
                err.write(f"{node_id:<20} {st}\x1b[K\n")
            lines = len(states)
        else:  # a log: a line when a node's state changes
            for node_id, st in states.items():
                if shown.get(node_id) != st:
                    err.write(f"{node_id:<20} {st}\n")
            shown = dict(states)
        settled = {n: st for n, st in states.items() if st == "loaded" or st.startswith(("refused", "offline"))}
        if not targets:
            err.write(f"no node of the target has reported yet; each fetches the {kind} when it connects\n")
            return 0
        if len(settled) == len(states):
            return 1 if any(st.startswith("refused") for st in states.values()) else 0
        if time.monotonic() > deadline:
            err.write(f"still transferring after {wait:.0f} s; `edgefleet fleet adapters` shows progress\n")
            return 1
        time.sleep(0.5)


def transfer_cell(t: dict[str, Any] | None) -> str:
    """A transfer as a table cell: `installed`, or its state with a progress bar (and error)."""
    if not t:
        return "-"
    cell = t["state"] if t["state"] == "installed" else f"{t['state']} {bar(t['have'], t['total'], 12)}"
    return cell + (f" ({t['error']})" if t.get("error") else "")


def print_adapters(data: dict[str, Any], out: TextIO) -> None:
    out.write("KIND       NAME      VERSION   SIZE        CHUNKS\n")
    for m in data.get("manifests", []):
        out.write(f"{m['kind']:<10} {m['name']:<9} {m['version']:<9} {m['size']:<11} {m['chunks']}\n")
    out.write("\nNODE                 KIND       NAME        DESIRED   LOADED    TRANSFER\n")
    for node_id, v in sorted(data.get("nodes", {}).items()):
        for kind, desired, loaded in (
            ("adapter", v["desired"], v["loaded"]),
            ("knowledge", v.get("knowledge_desired", {}), v.get("knowledge_loaded", {})),
        ):
            for name in sorted(set(desired) | set(loaded)):
                out.write(
                    f"{node_id:<20} {kind:<10} {name:<11} {desired.get(name, '-'):<9} {loaded.get(name, '-'):<9} "
                    f"{transfer_cell(v['transfers'].get(f'{kind}/{name}'))}\n"
                )


def overview(s: OrchestratorSession, cmd: Command, timeout: float) -> dict[str, Any]:
    """Every page of an `adapters` command as one: the manifests, the desired versions, all the nodes."""
    data: dict[str, Any] = {"manifests": [], "desired": {}, "nodes": {}}
    for r in pages(lambda c: s.call(c, timeout), cmd):
        if not r.ok:
            raise AdapterCommandError(refusal(r))
        data.update(manifests=r.data.get("manifests", []), desired=r.data.get("desired", {}))
        data["nodes"].update(r.data.get("nodes", {}))
    return data


def _list(s: OrchestratorSession, args: argparse.Namespace, timeout: float, out: TextIO) -> int:
    """`fleet adapters`: every page of nodes (or the one `--limit` asks for)."""
    try:
        cmd = Command(op="adapters", group=args.group, offset=args.offset, limit=args.limit)
    except PayloadError as e:
        raise AdapterCommandError(str(e).replace("invalid adapters command: ", "fleet adapters: --")) from e
    if args.limit is None:
        data = overview(s, cmd, timeout)
    else:
        r = s.call(cmd, timeout)
        if not r.ok:
            raise AdapterCommandError(refusal(r))
        data = r.data
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
        return 0
    print_adapters(data, out)
    if data.get("next_offset") is not None:
        out.write(f"next page: --offset {data['next_offset']}\n")
    return 0


def run(args: argparse.Namespace, settings: FleetSettings, out: TextIO, err: TextIO = sys.stderr) -> int:
    timeout = min(args.timeout, 30.0)
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:
        if args.fleet_command == "adapters":
            return _list(s, args, timeout, out)
        if args.fleet_command in ("rm-adapter", "rm-knowledge"):
            r = s.call(Command(op=args.fleet_command, name=args.name, target=args.target), timeout)
            if not r.ok:
                raise AdapterCommandError(refusal(r))
            out.write(r.message + "\n")
            return 0
        kind = "knowledge" if args.fleet_command == "push-knowledge" else "adapter"
        name = args.collection if kind == "knowledge" else args.name
        if not valid_name(name):
            raise AdapterCommandError(
                f"{kind} name {brief(name)} is invalid: use letters, digits, '.', '_' or '-', no '/' or '..'"
            )
        data = knowledge_bundle(args.dir, err) if kind == "knowledge" else _read(args.file)
        sha = _upload(s, data, timeout, err)
        try:
            cmd = Command(
                op=args.fleet_command,
                name=name,
                version=args.version,
                sha256=sha,
                target=args.target,
                new_group=args.new_group,
            )
        except PayloadError as e:
            raise AdapterCommandError(str(e)) from e
        r = s.call(cmd, timeout)
        if not r.ok:
            raise AdapterCommandError(refusal(r))
        out.write(r.message + "\n")
        out.flush()
        return 0 if args.no_wait else _watch(s, kind, name, args.version, args.wait, timeout, err)
