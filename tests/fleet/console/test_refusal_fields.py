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
