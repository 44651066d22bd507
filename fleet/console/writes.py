"""Pushes and removals from the forms, validated the CLI's way, sent through the command table.

A form is checked with the CLI's own loaders (`load_template`, `load_rule`) and the file checks
of `push-adapter` / `push-knowledge`, so the console refuses what the CLI refuses with the same
words; then the orchestrator's `CommandResult` decides. A refusal re-renders the form with what
was typed and the reason next to the field it concerns: nothing is lost and nothing is pushed.
Which field that is comes typed, never from the message's words: the request field a refusal
names (`CommandResult.field`, `PayloadError.field`) or the loader's (`FleetCommandError.field`).
"""

from __future__ import annotations

import asyncio
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from edgefleet.fleet.adapter_commands import MAX_ADAPTER_BYTES
from edgefleet.fleet.console import pages
from edgefleet.fleet.console import server as s
from edgefleet.fleet.group_commands import parse_groups
from edgefleet.fleet.rule_commands import RuleCommandError, load_rule
from edgefleet.fleet.site_commands import FleetCommandError, load_template
from edgefleet.plumbing.document_text import DocumentTextError, document_text, format_for_name
from edgefleet.proto.commands import Command
from edgefleet.proto.knowledge_bundle import BundleDocument, write_bundle
from edgefleet.proto.payloads import PayloadError
from edgefleet.proto.topics import valid_name

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPS = {
    "templates": ("push-template", "rm-template"),
    "rules": ("push-rule", "rm-rule"),
    "adapters": ("push-adapter", "rm-adapter"),
    "knowledge": ("push-knowledge", "rm-knowledge"),
}
BODY_FIELD = {"templates": "template", "rules": "rule", "adapters": "file", "knowledge": "files"}
# the form's fields besides the body, each named as the request field it fills
FORM_FIELDS = {
    "templates": ("target", "name", "version"),
    "rules": ("target",),
    "adapters": ("target", "name", "version"),
    "knowledge": ("target", "name", "version"),
}
SPEC_FIELD = {"templates": "template", "rules": "rule"}  # the request field whose name and version the form has
DOC_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")


class FieldError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _text(form: MultiDictProxy[Any], key: str) -> str:
    v = form.get(key, "")
    return v.strip() if isinstance(v, str) else ""


def _upload(form: MultiDictProxy[Any], key: str) -> tuple[str, bytes] | None:
    f = form.get(key)
    if f is None or isinstance(f, str) or not getattr(f, "filename", ""):
        return None
    return Path(f.filename).name, f.file.read()


def form_field(kind: str, field: str) -> str:
    """The form field showing a refusal about request field `field` (dotted; "": the body).

    `template.version` is the templates form's `version`; a field the form has no input for
    (`rule.version`, `sha256`, `template.variables`) is shown at the body it comes from."""
    path = field.split(".")
    if kind in SPEC_FIELD and path[0] == SPEC_FIELD[kind]:
        path = path[1:]
    return path[0] if path and path[0] in FORM_FIELDS[kind] else BODY_FIELD[kind]


def template_command(form: MultiDictProxy[Any]) -> Command:
    upload = _upload(form, "template_file")
    name, version = _text(form, "name"), _text(form, "version")
    suffix, body = (Path(upload[0]).suffix or ".j2", upload[1]) if upload else (".j2", form.get("template", ""))
    if not body:
        raise FieldError("template", "write the template or choose a file")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"template{suffix if suffix in ('.yaml', '.yml', '.json') else '.j2'}"
        path.write_bytes(body if isinstance(body, bytes) else str(body).encode())
        try:
            spec = load_template(path, name, version, _text(form, "system") or None)
        except FleetCommandError as e:  # its field is a TemplateSpec field, or "file"
            msg = str(e).replace(str(path), upload[0] if upload else "the template")
            raise FieldError(form_field("templates", f"template.{e.field}"), msg) from e
    return Command(
        op="push-template", target=_text(form, "target"), template=spec, new_group=form.get("new_group") == "on"
    )


def rule_command(form: MultiDictProxy[Any]) -> Command:
    upload = _upload(form, "rule_file")
    body = upload[1] if upload else str(form.get("rule", "")).encode()
    if not body.strip():
        raise FieldError("rule", "write the rule (YAML or JSON) or choose a file")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rule.yaml"
        path.write_bytes(body)
        try:
            rule = load_rule(path)
        except RuleCommandError as e:
            raise FieldError("rule", str(e).replace(str(path), upload[0] if upload else "the rule")) from e
    return Command(op="push-rule", target=_text(form, "target"), rule=rule)


def adapter_file(form: MultiDictProxy[Any]) -> bytes:
    upload = _upload(form, "file")
    if upload is None:
        raise FieldError("file", "choose a GGUF adapter file")
    filename, data = upload
    if not data:
        raise FieldError("file", f"{filename} is empty")
    if len(data) > MAX_ADAPTER_BYTES:
        raise FieldError("file", f"{filename} is {len(data)} bytes; adapters may be at most {MAX_ADAPTER_BYTES}")
    if data[:4] != b"GGUF":
        raise FieldError("file", f"{filename} is not a GGUF file")
    return data


def knowledge_bundle(form: MultiDictProxy[Any]) -> bytes:
    """The chosen files as a knowledge bundle, each read as the CLI and the node read it
    (plumbing/document_text.py: PDF pages, HTML as Markdown, Markdown, text); its id is the file name as
    chosen (`pump 3.pdf`), as `push-knowledge` names a folder's files."""
    files = [f for f in form.getall("files", []) if not isinstance(f, str) and f.filename]
    docs: dict[str, BundleDocument] = {}
    for f in sorted(files, key=lambda f: f.filename):
        name = Path(f.filename).name
        if not name.lower().endswith(DOC_SUFFIXES):
            continue
        if name in docs:
            raise FieldError("files", f"{name} is chosen twice")
        try:
            got = document_text(f.file.read(), format_for_name(name), name=name)
        except DocumentTextError as e:
            raise FieldError("files", str(e)) from e
        docs[name] = BundleDocument(name, got.text, {"source": name}, "" if got.format == "auto" else got.format)
    if not docs:
        raise FieldError("files", f"choose documents ({', '.join(DOC_SUFFIXES)})")
    return write_bundle(docs.values())


async def push(request: web.Request, kind: str) -> web.StreamResponse:
    form = await request.post()
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf_token"}
    commands = request.app[s.COMMANDS_KEY]
    target = _text(form, "target")
    try:
        if not target:
            raise FieldError("target", "choose a group or a node")
        if kind == "templates":
            result = await asyncio.to_thread(commands.call, template_command(form))
        elif kind == "rules":
            result = await asyncio.to_thread(commands.call, rule_command(form))
        else:
            name, version = _text(form, "name"), _text(form, "version")
            if not valid_name(name):
                raise FieldError(
                    "name",
                    f"{kind.rstrip('s') if kind == 'adapters' else 'knowledge'} name {name!r} "
                    "is invalid: use letters, digits, '.', '_' or '-', no '/' or '..'",
                )
            if not version:
                raise FieldError("version", "give a version")
            # reading PDFs is CPU work: off the event loop that serves the other pages
            data = adapter_file(form) if kind == "adapters" else await asyncio.to_thread(knowledge_bundle, form)
            result = await asyncio.to_thread(commands.push_artifact, OPS[kind][0], name, version, target, data)
    except FieldError as e:
        return pages.desired_page(request, kind, 422, {e.field: e.message}, values)
    except PayloadError as e:  # a command that does not validate: nothing was sent
        return pages.desired_page(request, kind, 422, {form_field(kind, e.field): str(e)}, values)
    if not result.ok:
        message = f"refused ({result.code or 'refused'}): {result.message}"
        return pages.desired_page(request, kind, 422, {form_field(kind, result.field): message}, values)
    raise web.HTTPSeeOther(f"/{kind}?done={urllib.parse.quote(result.message)}")


async def remove(request: web.Request, kind: str) -> web.StreamResponse:
    form = await request.post()
    try:
        cmd = Command(op=OPS[kind][1], target=_text(form, "target"), name=_text(form, "name"))
    except PayloadError as e:
        return pages.desired_page(request, kind, 422, form_error=str(e))
    result = await asyncio.to_thread(request.app[s.COMMANDS_KEY].call, cmd)
    if not result.ok:
        return pages.desired_page(request, kind, 422, form_error=f"refused ({result.code}): {result.message}")
    raise web.HTTPSeeOther(f"/{kind}?done={urllib.parse.quote(result.message)}")


async def assign_groups(request: web.Request) -> web.StreamResponse:
    """The node page's form: the groups the orchestrator assigns to this node (assign-groups)."""
    form = await request.post()
    node_id, value = request.match_info["node_id"], _text(form, "groups")
    try:
        groups = parse_groups(value)
        cmd = Command(op="assign-groups", target=node_id, groups=groups)
    except ValueError as e:  # PayloadError is one
        return await pages.node_view(request, 422, groups_error=str(e), groups_value=value)
    result = await asyncio.to_thread(request.app[s.COMMANDS_KEY].call, cmd)
    if not result.ok:
        message = f"refused ({result.code or 'refused'}): {result.message}"
        return await pages.node_view(request, 422, groups_error=message, groups_value=value)
    raise web.HTTPSeeOther(f"/node/{urllib.parse.quote(node_id)}?done={urllib.parse.quote(result.message)}")


def _handler(action: Callable[[web.Request, str], Awaitable[web.StreamResponse]], kind: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await action(request, kind)

    return handle


def add_routes(app: web.Application) -> None:
    for kind in OPS:
        app.router.add_post(f"/{kind}/push", _handler(push, kind))
        app.router.add_post(f"/{kind}/remove", _handler(remove, kind))
    app.router.add_post("/node/{node_id}/groups", assign_groups)
