"""Property-based: the template sandbox against escape attempts, mixed with ordinary template text.

Templates are generated from fragments: sandbox escapes (`__class__`, `__globals__`,
`__subclasses__`, `mro`, imports, `os`/`subprocess`, format-string attribute tricks, `attr`),
resource attacks (huge repeats, widths, ranges and nested loops, big powers, doubling `set`s,
recursion, expressions nested thousands deep, very long output) and valid fragments, with random
variable values. Whatever the template: `TemplateSpec` refuses it with a `ValidationError`, or
`compile_template` with a `TemplateError`, or rendering either refuses it with a `TemplateError`
or returns text within `MAX_RENDERED_CHARS`; never another exception, never a side effect (the
canary files the escapes try to create stay absent); an unbounded loop or allocation would hang the
test into pytest-timeout's limit (the sandbox's budgets are counted in iterations and characters, not time).

Cases: 300 (unit: spec, compile, render) + 40 (`fleet push-template`'s loader over a real file)
+ 25 (the orchestrator's `push-template` command over a real orchestrator) = 365.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgefleet.fleet.site_commands import FleetCommandError, load_template
from edgefleet.orchestrator.runtime import Orchestrator
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import TemplateSpec
from edgefleet.proto.templates import MAX_RENDERED_CHARS, TemplateError, compile_template
from tests.mqtt_support import Mosquitto
from tests.orchestrator.command_client import lab_orchestrator

VARIABLES = ["x", "y"]


def escapes(canary: Path) -> list[str]:
    """Ways out of the sandbox; several try to create `canary`."""
    touch = f"touch {canary}"
    return [
        "{{ x.__class__ }}",
        "{{ x.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__.__mro__[-1].__subclasses__() }}",
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{{ x.mro() }}",
        "{{ x|attr('__class__') }}",
        "{{ x['__class__'] }}",
        "{{ x.__dict__ }}",
        "{{ x._private }}",
        "{{ (1).__add__(2) }}",
        "{{ lipsum.__globals__ }}",
        "{{ lipsum.__globals__['os'].system('" + touch + "') }}",
        "{{ cycler.__init__.__globals__.os.popen('" + touch + "').read() }}",
        "{{ joiner.__init__.__globals__.__builtins__.open('" + str(canary) + "', 'w') }}",
        "{{ namespace.__init__.__globals__.__builtins__.__import__('os').system('" + touch + "') }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('" + touch + "') }}",
        "{{ self.__init__.__globals__ }}",
        "{{ range.__self__ }}",
        "{{ dict.__subclasses__() }}",
        "{{ lipsum.__code__ }}",
        "{% import 'os' as os %}{{ os.system('" + touch + "') }}",
        "{% from 'subprocess' import run %}{{ run(['touch', '" + str(canary) + "']) }}",
        "{% include '/etc/passwd' %}",
        "{% extends '/etc/hostname' %}",
        "{{ '{0.__class__.__mro__}'.format(x) }}",
        "{{ '{0.__globals__}'.format(lipsum) }}",
        "{{ '{0[__builtins__]}'.format(lipsum.__globals__) }}",
        "{{ '%s'|format(x.__class__) }}",
        "{{ '{x.__class__}'.format_map({'x': x}) }}",
        "{% set d = {} %}{{ d.update(a=1) }}",
        "{% set l = [] %}{{ l.append(1) }}{{ l.pop() }}",
        "{{ x.__len__() }}",
        "{{ config }}{{ request }}",
        "{{ ''.join.__self__.__class__ }}",
        "{{ x.encode.__globals__ }}",
    ]


RESOURCE = [
    "{{ 'x' * 10**9 }}",
    "{{ x * 10**8 }}",
    "{{ [x] * 10**8 }}",
    "{{ 9**(9**9) }}",
    "{{ 10**100000 }}",
    "{% set n = 3 %}" + "{% set n = n * n %}" * 40 + "{{ n }}",
    "{% set a = x ~ 'x' %}" + "{% set a = a ~ a %}" * 40 + "{{ a|length }}",
    "{% set a = x + 'x' %}" + "{% set a = a + a %}" * 40 + "{{ a|length }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:>{w}}'.format(1, w=10**10) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '%*d'|format(10**9, 1) }}",
    "{{ 'a'|center(10000000000) }}",
    "{{ x.ljust(10**10) }}",
    "{{ x|indent(10**9) }}",
    "{% set a = 'y' * 60000 %}{{ a|replace('', a)|length }}",
    "{% set a = 'y' * 60000 %}{{ a.replace('', a)|length }}",
    "{% set a = 'y' * 60000 %}{{ a|wordwrap(1, wrapstring=a) }}",
    "{{ range(1000)|join('z' * 60000) }}",
    "{{ range(10)|batch(10**9, 'x')|list|length }}",
    "{{ ['a', 'b']|map('center', 10**10)|list }}",
    "{{ range(10**9)|sum }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}.{% endfor %}{% endfor %}"
    "{% endfor %}",
    "{% for c in x %}{% for d in x %}{% for e in x %}{{ c }}{% endfor %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{% macro f(n) %}{{ f(n ~ n) }}{% endmacro %}{{ f(x) }}",
    "{{ 'q' * 60000 }}{{ 'q' * 60000 }}",
    "{% for i in range(99999) %}{{ x }}{% endfor %}",
]

VALID = [
    "Sensor {{ x }} reads {{ y }}.",
    "{{ x|upper }} / {{ y|lower|trim }}",
    "{% if x %}yes{% else %}no{% endif %}",
    "{% for c in x[:5] %}[{{ loop.index }}:{{ c }}]{% endfor %}",
    "{{ x ~ '-' ~ y }}",
    "{{ '%s=%s'|format(x, y) }}",
    "{{ 'v={}'.format(x) }}",
    "{{ [x, y]|join(', ') }}",
    "{{ x|replace('a', 'b') }}",
    "{{ (x|length) * 2 + 1 }}",
    "{{ x|truncate(20) }}",
    "{{ range(5)|list }}",
    "{% set n = namespace(c=0) %}{% for i in range(10) %}{% set n.c = n.c + i %}{% endfor %}{{ n.c }}",
    "{{ y|default('none') }}",
    "{{ x|wordwrap(10) }}",
    "{{ x|center(30) }}",
    "{# a comment #}plain text",
    "{{ 2 ** 10 }} {{ 7 % 3 }} {{ 'ab' * 3 }}",
]


def nested(depth: int, kind: str) -> str:
    if kind == "parens":
        return "{{ " + "(" * depth + "x" + ")" * depth + " }}"
    if kind == "lists":
        return "{{ " + "[" * depth + "x" + "]" * depth + " }}"
    if kind == "ifs":
        return "{% if x %}" * depth + "." + "{% endif %}" * depth
    if kind == "fors":
        return "{% for c in x %}" * depth + "." + "{% endfor %}" * depth
    if kind == "filters":
        return "{{ x" + "|upper" * depth + " }}"
    return "{{ x" + " ~ x" * depth + " }}"


def fragments(canary: Path) -> st.SearchStrategy[str]:
    return (
        st.sampled_from(escapes(canary))
        | st.sampled_from(RESOURCE)
        | st.sampled_from(VALID)
        | st.builds(
            nested,
            st.sampled_from([1, 10, 50, 300, 3000]),
            st.sampled_from(["parens", "lists", "ifs", "fors", "filters", "concat"]),
        )
        | st.text(max_size=40)
        | st.text(alphabet="{}%#()[]|.~'\"x_ ", max_size=30)
    )


def templates(canary: Path) -> st.SearchStrategy[str]:
    return st.lists(fragments(canary), min_size=1, max_size=4).map("".join)


values = st.text(max_size=30) | st.sampled_from(["", "{{ x.__class__ }}", "%s%n", "{:>99999}", "a" * 16 * 1024])


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("canary") / "escaped"
    yield path
    assert not path.exists(), "a template escaped the sandbox and created the canary file"


def check_template(source: str, system: str, x: str, y: str, canary: Path) -> str:
    """Spec, compile and render one template; returns how it ended ("spec", "compile", "render", "ok")."""
    try:
        try:
            spec = TemplateSpec(name="t", version="1", template=source, system=system, variables=VARIABLES)
        except ValidationError:
            return "spec"
        try:
            compiled = compile_template(spec)
        except TemplateError:
            return "compile"
        try:
            sys_text, user = compiled.render({"x": x, "y": y})
        except TemplateError as e:
            assert str(e).startswith("template t@1"), e
            return "render"
        assert len(sys_text) + len(user) <= MAX_RENDERED_CHARS
        return "ok"
    finally:
        assert not canary.exists(), f"escaped the sandbox: {source[:300]!r}"


OUTCOMES: dict[str, int] = {}


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_template_is_refused_with_a_template_error_or_renders_within_limits(
    canary: Path, data: st.DataObject
) -> None:
    source = data.draw(templates(canary), label="template")
    system = data.draw(st.just("") | templates(canary), label="system")
    outcome = check_template(source, system, data.draw(values, label="x"), data.draw(values, label="y"), canary)
    OUTCOMES[outcome] = OUTCOMES.get(outcome, 0) + 1


def test_every_escape_and_resource_attack_alone_is_refused(canary: Path) -> None:
    """Each fragment on its own, with the longest variable: no escape renders, and nothing slips through."""
    for source in [*escapes(canary), *RESOURCE]:
        outcome = check_template(source, "", "a" * 16 * 1024, "b", canary)
        assert outcome != "ok", f"rendered: {source!r}"
    for kind in ["parens", "lists", "ifs", "fors", "filters", "concat"]:  # refused, or harmless and rendered
        assert check_template(nested(1000, kind), "", "ab", "c", canary) in {"compile", "render", "ok"}


def test_valid_templates_still_render(canary: Path) -> None:
    for source in VALID:
        assert check_template(source, "", "hello world", "Y", canary) == "ok", source
    assert OUTCOMES == {} or set(OUTCOMES) <= {"spec", "compile", "render", "ok"}


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.lists(st.sampled_from([*RESOURCE, *VALID]) | st.just("{{ x.__class__ }}"), min_size=1, max_size=3))
def test_the_push_template_loader_refuses_with_a_fleet_command_error(
    canary: Path, tmp_path_factory: pytest.TempPathFactory, source: list[str]
) -> None:
    """`edgefleet fleet push-template FILE` reads and compiles the template before it sends anything."""
    path = tmp_path_factory.getbasetemp() / "template.txt"
    path.write_text("".join(source), encoding="utf-8")
    with contextlib.suppress(FleetCommandError):
        load_template(path, "t", "1", None)
    assert not canary.exists()


@pytest.fixture(scope="module")
def orch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    tmp = tmp_path_factory.mktemp("template-orch")
    broker = Mosquitto(tmp)
    try:
        with lab_orchestrator(broker, tmp) as o:
            yield o
    finally:
        broker.stop()


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_orchestrator_s_push_template_answers_template_error_never_internal(
    orch: Orchestrator, canary: Path, data: st.DataObject
) -> None:
    source = data.draw(templates(canary), label="template")
    template = {"name": "t", "version": "1", "template": source, "variables": VARIABLES}
    result = orch.table.dispatch("push-template", {"target": "group:g", "template": template, "force": True})
    assert result.ok or result.code in {ErrorCode.TEMPLATE_ERROR, ErrorCode.INVALID_PAYLOAD}, result
    assert not canary.exists()
