"""`edgefleet fleet model push | rm`: a GGUF base model for a group or a node, through the orchestrator.

push checks the file here first (a GGUF base model, not a LoRA adapter: proto/model_gguf.py), uploads
it to the orchestrator a piece at a time (never whole in memory), asks it to sign and publish the
model for the target (`push-model`), then shows each target node until it serves the model, refused
it (with the node's numbers: its memory budget), or the wait ends. `--upload-only` stops after the
orchestrator signed and kept it (a rollout moves it later) and prints its reference.
rm sends `rm-model`: the target's nodes go back to their own model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from edgefleet.fleet.adapter_commands import bar
from edgefleet.fleet.applied import nodes_of
from edgefleet.fleet.control import OrchestratorSession, pages, refusal
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.uploads import upload_file
from edgefleet.proto.artifacts import MAX_ARTIFACT_BYTES
from edgefleet.proto.commands import Command
from edgefleet.proto.input_limits import brief
from edgefleet.proto.model_gguf import ModelFileError, ModelHeader, read_model
from edgefleet.proto.payloads import PayloadError
from edgefleet.proto.topics import valid_name

VERBS = ("model",)
MiB = 1024 * 1024


class ModelCommandError(Exception):
    """A problem the operator can fix (not a model, a refused command)."""


def add_parsers(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    model = fsub.add_parser("model", help="base models (GGUF) of groups and nodes")
    msub = model.add_subparsers(dest="model_command", required=True)
    push = msub.add_parser("push", help="push a GGUF base model to a group or a node (it replaces their model)")
    push.add_argument("file", type=Path)
    push.add_argument("--name", required=True)
    push.add_argument("--version", required=True)
    push.add_argument("--target", required=True, help="GROUP or NODE (or group:NAME / node:NAME)")
    push.add_argument(
        "--upload-only", action="store_true", help="only upload and sign it (for a rollout); change no target"
    )
    push.add_argument("--force", action="store_true", help="accept a version older than the one pushed before")
    push.add_argument("--new-group", action="store_true", help="create the group if no node is in it yet")
    push.add_argument("--no-wait", action="store_true", help="return once the orchestrator accepted it")
    push.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the nodes (default 600)")
    rm = msub.add_parser("rm", help="a group or a node back to its nodes' own model")
    rm.add_argument("--target", required=True)


def check_file(path: Path) -> ModelHeader:
    """The file is a GGUF base model of a size a site takes; ModelCommandError naming what is wrong."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ModelCommandError(f"cannot read {path}: {e.strerror}") from e
    if not path.is_file() or size == 0:
        raise ModelCommandError(f"{path} is not a file with content")
    if size > MAX_ARTIFACT_BYTES:
        raise ModelCommandError(f"{path} is {size} bytes; a model may be at most {MAX_ARTIFACT_BYTES}")
    try:
        return read_model(path)
    except ModelFileError as e:
        raise ModelCommandError(f"{path} refused: {e}") from e


def _upload(s: OrchestratorSession, path: Path, timeout: float, err: TextIO) -> str:
    def progress(sent: int, count: int, done: bool) -> None:
        if err.isatty() or done or sent == count:
            err.write(f"\rupload {bar(sent, count)}")

    sha, r = upload_file(lambda cmd: s.call(cmd, timeout), path, progress)
    err.write("\n")
    if not r.ok:
        raise ModelCommandError(f"upload {refusal(r)}")
    return sha


def node_state(n: dict[str, Any], name: str, version: str) -> str:
    """Where one node is with model `name@version`: serving, refused (why), fetching (bar), waiting."""
    if n.get("reported_model") == f"{name}@{version}":
        return "serving"
    t = n.get("transfers", {}).get(f"model/{name}")
    if t and t.get("version") == version:
        if t["state"] == "failed":
            return f"refused: {t.get('error') or 'failed'}"
        return f"{t['state']} {bar(t['have'], t['total'])}"
    return "waiting" if n.get("state") == "online" else f"{n.get('state', 'offline')}: fetches when it connects"


def _status_nodes(s: OrchestratorSession, timeout: float) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    for r in pages(lambda c: s.call(c, timeout), Command(op="status")):
        if not r.ok:
            raise ModelCommandError(refusal(r))
        nodes += r.data.get("nodes", [])
    return nodes


def watch(
    s: OrchestratorSession, target: str, name: str, version: str, wait: float, timeout: float, err: TextIO
) -> int:
    """A line per target node when its state changes, until all serve it (0), one refused it or time ran out (1)."""
    deadline = time.monotonic() + wait
    shown: dict[str, str] = {}
    seen_online: set[str] = set()  # offline after that: restarting to switch (it comes back), not done
    while True:
        states = {n["node_id"]: node_state(n, name, version) for n in nodes_of(target, _status_nodes(s, timeout))}
        for node_id, st in sorted(states.items()):
            if shown.get(node_id) != st:
                err.write(f"{node_id:<20} {st}\n")
            if not st.startswith("offline"):
                seen_online.add(node_id)
        shown = states
        if not states:
            err.write("no node of the target has reported yet; each fetches the model when it connects\n")
            return 0
        if all(
            st == "serving" or st.startswith("refused") or (st.startswith("offline") and node_id not in seen_online)
            for node_id, st in states.items()
        ):
            return 1 if any(st.startswith("refused") for st in states.values()) else 0
        if time.monotonic() > deadline:
            err.write(f"not every node serves it after {wait:.0f} s; `edgefleet fleet status` shows progress\n")
            return 1
        time.sleep(1.0)


def push(s: OrchestratorSession, args: argparse.Namespace, timeout: float, out: TextIO, err: TextIO) -> int:
    sha = _upload(s, args.file, timeout, err)
    try:
        cmd = Command(
            op="push-model",
            name=args.name,
            version=args.version,
            sha256=sha,
            target=args.target,
            force=args.force,
            new_group=args.new_group,
            upload_only=args.upload_only,
        )
    except PayloadError as e:
        raise ModelCommandError(str(e)) from e
    r = s.call(cmd, timeout)
    if not r.ok:
        raise ModelCommandError(refusal(r))
    out.write(r.message + "\n")
    if args.upload_only:
        out.write(json.dumps(r.data.get("model", {})) + "\n")  # the ArtifactRef a rollout names
        return 0
    out.flush()
    if args.no_wait:
        return 0
    return watch(s, str(r.data.get("target", args.target)), args.name, args.version, args.wait, timeout, err)


def run(args: argparse.Namespace, settings: FleetSettings, out: TextIO, err: TextIO = sys.stderr) -> int:
    timeout = min(args.timeout, 30.0)
    if args.model_command == "push":  # the file is checked before anything is sent
        if not valid_name(args.name):
            raise ModelCommandError(
                f"model name {brief(args.name)} is invalid: use letters, digits, '.', '_' or '-', no '/' or '..'"
            )
        header = check_file(args.file)
        err.write(
            f"{args.file.name}: {header.architecture}, {header.n_layer} layers, "
            f"{header.kv_bytes_per_token} KV bytes per token\n"
        )
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:
        if args.model_command == "push":
            return push(s, args, timeout, out, err)
        r = s.call(Command(op="rm-model", target=args.target), timeout)
        if not r.ok:
            raise ModelCommandError(refusal(r))
        out.write(r.message + "\n")
        return 0
