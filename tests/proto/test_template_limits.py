"""The template sandbox refuses what would be too big before it builds it (issue 22).

Before: `('x'*12000).join('y'*12000)` built a 144 MB string and only then was refused,
`'{0}'*20000` formatted 400 MB, `lipsum(20000)` ran for seconds, and `[s]*60000` was written out
in full to be measured. Each hostile template here must be refused with a `TemplateError` naming
the template and the limit, while the render's peak memory (tracemalloc) stays under a few MB.
Ordinary templates near the limits still render exactly as Jinja2 renders them.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from edgefleet.proto.payloads import TemplateSpec
from edgefleet.proto.templates import (
    MAX_BUILT_CHARS,
    MAX_RENDERED_CHARS,
    CompiledTemplate,
    TemplateError,
    compile_template,
)

PEAK_BYTES = 4 * 1024 * 1024
BIG = "'x' * 60000"

HOSTILE = {
    "str.join of a string": "{{ ('x'*12000).join('y'*12000) }}",
    "join filter on a string": "{{ ('x'*12000)|join('y'*12000) }}",
    "str.join of a generator": "{{ ('y'*12000).join(range(12000)|map('string')) }}",
    "str.format repeating a field": "{{ ('{0}'*20000).format('x'*20000) }}",
    "str.format_map": "{{ ('{a}'*20000).format_map({'a': 'x'*20000}) }}",
    "percent operator": "{{ ('%s'*20000) % (('x'*20000,)*20000) }}",
    "format filter": "{{ ('%s'*20000)|format(*(['x'*20000]*20000)) }}",
    "replace": "{{ ('ab'*30000).replace('a', 'x'*60000) }}",
    "translate": "{{ ('a'*60000).translate({97: 'x'*60000}) }}",
    "expandtabs": "{{ ('\\t'*60000).expandtabs(60000) }}",
    "to_bytes": "{{ (1).to_bytes(10**9, 'big') }}",
    "string of a shared list": f"{{{{ ([{BIG}]*60000)|string }}}}",
    "tojson of a shared list": f"{{{{ ([{BIG}]*60000)|tojson }}}}",
    "pprint of a shared list": f"{{{{ ([{BIG}]*60000)|pprint }}}}",
    "output of a shared list": f"{{{{ [{BIG}]*60000 }}}}",
    "concatenation of a shared list": f"{{{{ ([{BIG}]*60000) ~ '' }}}}",
    "str.format of a shared list": f"{{{{ '{{}}'.format([{BIG}]*60000) }}}}",
    "join of a shared list": f"{{{{ ([{BIG}]*60000)|join }}}}",
    "join by attribute": f"{{% set ns = namespace(a={BIG}) %}}{{{{ ([ns]*60000)|join(attribute='a') }}}}",
    "sum of shared lists": "{{ ([[1]*60000]*60000)|sum(start=[]) }}",
    "map building wide strings": "{{ range(1000)|map('center', 60000)|list|length }}",
    "loop building and discarding": f"{{% for i in range(1000) %}}{{% set s = {BIG} %}}{{% endfor %}}",
    "list of a long range": "{{ range(100000)|list|length }}",
    "fromkeys of a long range": "{{ {}.fromkeys(range(100000), 1)|length }}",
    "range too long": "{{ range(10**9)|length }}",
    "indent": "{{ ('x\\n'*30000)|indent('y'*60000) }}",
    "wordwrap": "{{ ('x '*30000)|wordwrap(1, wrapstring='y'*100) }}",
}
LIMIT_NAMES = ("MAX_RENDERED_CHARS", "MAX_BUILT_CHARS", "MAX_LOOP_ITERATIONS", "MAX_WRITTEN_CHARS")


def compiled(source: str) -> CompiledTemplate:
    return compile_template(TemplateSpec(name="t", version="1", template=source, variables=[]))


@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_templates_are_refused_before_they_build(source: str) -> None:
    template = compiled(source)
    tracemalloc.start()
    began = time.perf_counter()
    try:
        with pytest.raises(TemplateError) as refused:
            template.render({})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    took = time.perf_counter() - began
    message = str(refused.value)
    assert message.startswith("template t@1 tried something the sandbox forbids"), message
    assert any(name in message for name in LIMIT_NAMES), message
    assert peak < PEAK_BYTES, f"{peak / 1e6:.1f} MB built before the refusal"
    assert took < 2, f"{took:.1f} s before the refusal"


def test_lipsum_is_not_offered() -> None:
    """`lipsum(20000)` took seconds to refuse; templates have no use for filler text."""
    with pytest.raises(TemplateError, match=r"undeclared variable\(s\) lipsum"):
        compiled("{{ lipsum(20000) }}")


def test_the_range_limit_names_its_setting() -> None:
    with pytest.raises(TemplateError, match="MAX_LOOP_ITERATIONS=100000"):
        compiled("{% for i in range(100001) %}{% endfor %}").render({})
    assert compiled("{{ range(100000)|length }}").render({}) == ("", "100000")


def test_a_render_s_built_total_names_its_limit() -> None:
    """Each `'x' * 60000` is small; a thousand of them are not."""
    with pytest.raises(TemplateError, match=f"MAX_BUILT_CHARS={MAX_BUILT_CHARS}"):
        compiled(f"{{% for i in range(1000) %}}{{% set s = {BIG} %}}{{% endfor %}}").render({})


ORDINARY = [
    ("{{ ', '.join(['a', 'b', 'c']) }}", "a, b, c"),
    ("{{ ['a', 'b']|join('-') }}", "a-b"),
    ("{{ [{'n': 'a'}, {'n': 'b'}]|join('/', attribute='n') }}", "a/b"),
    ("{{ '{0} {1:>5} {x!r} {0}'.format('a', 'b', x='c') }}", "a     b 'c' a"),
    ("{{ '{a[k]}'.format_map({'a': {'k': 'v'}}) }}", "v"),
    ("{{ '%s=%05.1f'|format('a', 2.25) }}", "a=002.2"),
    ("{{ '%(a)s/%(b)s' % {'a': 1, 'b': 2} }}", "1/2"),
    ("{{ 'abc'.center(7, '*') }} {{ 'a\tb'.expandtabs(4) }}", "**abc** a   b"),
    ("{{ 'aXa'.replace('a', 'yy') }} {{ 'aXa'.translate({97: 'zz'}) }}", "yyXyy zzXzz"),
    ("{{ [1, 'two', {'k': none}]|string }}", "[1, 'two', {'k': None}]"),
    ("{{ {'k': [1, 2]}|tojson }}", '{"k": [1, 2]}'),
    ("{{ 'one two three'|wordwrap(7) }}", "one two\nthree"),
    ("{{ 'a\nb'|indent(2) }}", "a\n  b"),
    ("{{ range(3)|map('string')|join }}", "012"),
    ("{{ [[1], [2]]|sum(start=[]) }}", "[1, 2]"),
    ("{{ (1).to_bytes(2, 'big')|length }}", "2"),
]


@pytest.mark.parametrize(("source", "expected"), ORDINARY)
def test_ordinary_templates_render_as_before(source: str, expected: str) -> None:
    assert compiled(source).render({}) == ("", expected)


def test_the_limits_are_exact_where_the_size_is_known() -> None:
    assert len(compiled(f"{{{{ 'x'.center({MAX_RENDERED_CHARS}) }}}}").render({})[1]) == MAX_RENDERED_CHARS
    with pytest.raises(TemplateError, match="center with a width over MAX_RENDERED_CHARS"):
        compiled(f"{{{{ 'x'.center({MAX_RENDERED_CHARS + 1}) }}}}").render({})
    half = MAX_RENDERED_CHARS // 2
    assert len(compiled(f"{{{{ '-'.join(['a' * {half - 1}, 'b' * {half}]) }}}}").render({})[1]) == MAX_RENDERED_CHARS
    with pytest.raises(TemplateError, match=r"str\.join would build over MAX_RENDERED_CHARS"):
        compiled(f"{{{{ '--'.join(['a' * {half - 1}, 'b' * {half}]) }}}}").render({})


def test_variables_near_their_limit_still_format() -> None:
    spec = TemplateSpec(
        name="v", version="1", template="{{ '{}: {}'.format(a, b) }}|{{ '%s %s' % (a, b) }}", variables=["a", "b"]
    )
    a, b = "a" * 16 * 1024, "b" * 8 * 1024
    assert compile_template(spec).render({"a": a, "b": b}) == ("", f"{a}: {b}|{a} {b}")
