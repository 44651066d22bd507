"""Which form field shows a refusal: decided by the typed field it names, never by its words.

`form_field` maps a request field (`CommandResult.field`, `PayloadError.field`) to the console's
form input; the template loader (`load_template`) names its field on `FleetCommandError.field`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.fleet.console.writes import form_field
from edgefleet.fleet.site_commands import FleetCommandError, load_template
from edgefleet.proto.commands import Command
from edgefleet.proto.payloads import PayloadError


@pytest.mark.parametrize(
    ("kind", "field", "shown_at"),
    [
        ("templates", "target", "target"),
        ("templates", "template.version", "version"),
        ("templates", "template.name", "name"),
        ("templates", "template", "template"),
        ("templates", "template.variables.0", "template"),
        ("templates", "", "template"),
        ("rules", "target", "target"),
        ("rules", "rule.version", "rule"),  # the rules form has no version input: the rule's body
        ("rules", "rule.template", "rule"),
        ("adapters", "version", "version"),
        ("adapters", "name", "name"),
        ("adapters", "sha256", "file"),
        ("knowledge", "sha256", "files"),
        ("knowledge", "op", "files"),
    ],
)
def test_a_request_field_is_shown_at_its_form_field(kind: str, field: str, shown_at: str) -> None:
    assert form_field(kind, field) == shown_at


def test_a_command_the_console_cannot_build_names_its_field() -> None:
    with pytest.raises(PayloadError) as e:
        Command(op="push-adapter", target="g", name="a", version="../1", sha256="0" * 64)
    assert e.value.field == "version" and form_field("adapters", e.value.field) == "version"


@pytest.mark.parametrize(
    ("name", "version", "body", "suffix", "field"),
    [
        ("a/b", "1", "Hi", ".j2", "name"),
        ("greet", "not a version!", "Hi", ".j2", "version"),
        ("greet", "1", "Hi {{ who ", ".j2", "template"),
        ("greet", "1", "just: [a list", ".yaml", "file"),
        ("greet", "1", "system: no template key", ".yaml", "file"),
    ],
)
def test_the_template_loader_names_the_field_it_refuses(
    tmp_path: Path, name: str, version: str, body: str, suffix: str, field: str
) -> None:
    path = tmp_path / f"t{suffix}"
    path.write_text(body)
    with pytest.raises(FleetCommandError) as e:
        load_template(path, name, version, None)
    assert e.value.field == field, e.value


def test_an_unreadable_template_file_is_the_file_s_fault(tmp_path: Path) -> None:
    path = tmp_path / "t.j2"
    path.write_bytes(b"\xff\xfe not UTF-8")
    with pytest.raises(FleetCommandError) as e:
        load_template(path, "greet", "1", None)
    assert e.value.field == "file" and form_field("templates", f"template.{e.value.field}") == "template"


def test_the_knowledge_form_reads_pdfs_as_the_cli_does(tmp_path: Path) -> None:
    """The console's knowledge upload: PDFs as pages (the CLI's text exactly), ids the file names; a scan
    refused at the files field, saying to run OCR."""
    import io

    from aiohttp.web_request import FileField
    from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

    from edgefleet.fleet.console.writes import FieldError, knowledge_bundle
    from edgefleet.fleet.knowledge_commands import read_document
    from edgefleet.proto.knowledge_bundle import read_bundle
    from tests.node.knowledge.test_documents_ids import write_pdf

    def form(*paths: Path) -> MultiDictProxy[object]:
        fields = [
            ("files", FileField("files", p.name, io.BytesIO(p.read_bytes()), "application/octet-stream", headers))
            for p in paths
        ]
        return MultiDictProxy(MultiDict([("csrf_token", "x"), *fields]))

    headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
    pdf = write_pdf(tmp_path / "pump 3.pdf", ["Cover.", "Replace the shaft seal every 8000 hours."])
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\nClean the strainer weekly.\n", encoding="utf-8")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    bundle = read_bundle(io.BytesIO(knowledge_bundle(form(pdf, notes, tmp_path / "skip.bin"))))
    assert [(d.id, d.format, dict(d.metadata)) for d in bundle] == [
        ("notes.md", "markdown", {"source": "notes.md"}),
        ("pump 3.pdf", "pages", {"source": "pump 3.pdf"}),
    ]
    assert bundle[1].text == read_document(pdf)[0]
    with pytest.raises(FieldError) as e:
        knowledge_bundle(form(write_pdf(tmp_path / "scan.pdf", [""])))
    assert e.value.field == "files" and "scan.pdf has no text layer" in e.value.message and "OCR" in e.value.message
