"""Prompt templates: sandboxed Jinja2 with declared variables, the same on orchestrator and node.

The orchestrator compiles a template before it publishes it; the node compiles it again before
it applies it and renders it per request. Rendering runs in Jinja2's immutable sandbox with
strict undefined variables, so `{{ x.__class__ }}`-style escapes and typos fail loudly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer

from edgefleet.proto import template_bounds as bounds
from edgefleet.proto.payloads import TemplateSpec
from edgefleet.proto.template_bounds import (
    MAX_BUILT_CHARS,
    MAX_INT_BITS,
    MAX_LOOP_ITERATIONS,
    MAX_RENDERED_CHARS,
    MAX_WRITTEN_CHARS,
)

__all__ = [
    "MAX_BUILT_CHARS",
    "MAX_INT_BITS",
    "MAX_LOOP_ITERATIONS",
    "MAX_RENDERED_CHARS",
    "MAX_VARIABLE_CHARS",
    "MAX_WRITTEN_CHARS",
    "CompiledTemplate",
    "MissingVariable",
    "TemplateError",
    "compile_template",
    "declared_variables",
]

MAX_VARIABLE_CHARS = 16 * 1024


class TemplateError(ValueError):
    """A template that cannot compile or render; the message names the template and the problem."""


class MissingVariable(TemplateError):
    pass


def _bounded_filter(name: str, func: Any) -> Any:
    skip = 1 if _PassArg.from_obj(func) is not None else 0

    def bounded(*args: Any, **kwargs: Any) -> Any:
        args_list = list(args)
        if len(args_list) > skip:
            env = getattr(args_list[0], "environment", args_list[0]) if skip else None
            value, rest = bounds.prepare_filter(name, args_list[skip], args_list[skip + 1 :], kwargs, env)
            args_list[skip:] = [value, *rest]
        return bounds.settle(func(*args_list, **kwargs), f"filter {name}")

    bounded.__dict__.update(getattr(func, "__dict__", {}))  # keeps jinja2's pass_context/pass_environment mark
    return bounded


def _concat(parts: list[Any]) -> str:
    """`a ~ b ~ …`, each part measured before it is turned into text: refused once it would grow over the limit."""
    total = 0
    for part in parts:
        total += bounds.text_size(part, MAX_RENDERED_CHARS - total)
        bounds.refuse_over(total, "a concatenation")
    bounds.charge(total, "a concatenation")
    return "".join(str(part) for part in parts)


@jinja2.pass_context
def _output(context: jinja2.runtime.Context, value: Any) -> Any:
    """A piece of output (`{{ … }}` or text), counted as it is written, inside macros and loops too."""
    bounds.check_written(value)
    return value


@jinja2.pass_context
def _counted(context: jinja2.runtime.Context, iterable: Iterable[Any]) -> Iterator[Any]:
    """The iterable of a `for` loop, counted against the render's loop budget (never folded at compile)."""
    for item in iterable:
        bounds.check_loop_step()
        yield item


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, bounded: a template cannot build huge strings, lists or numbers
    (`'x' * 10**9`, `'{:>999999999}'.format(1)`, `s|replace('', s)`, `s.join(s)`, `9**(9**9)`) nor
    loop without end (nested `range`s): what would is refused with `SecurityError` before it is
    built (see `template_bounds`). `lipsum` is gone (no template needs filler text, and it was slow);
    `range` is at most `MAX_LOOP_ITERATIONS` long."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        # not optimized: constant folding runs template code at compile time, cubic in nesting
        super().__init__(
            undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False, optimized=False
        )
        for name, func in list(self.filters.items()):
            self.filters[name] = _bounded_filter(name, func)
        self.filters["_edgefleet_counted"] = _counted
        self.filters["_edgefleet_concat"] = _concat
        self.filters["_edgefleet_output"] = _output
        del self.globals["lipsum"]
        self.globals["range"] = bounds.bounded_range

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        bounds.check_binop(operator, left, right)
        return bounds.settle(super().call_binop(context, operator, left, right), f"operator {operator}")

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        target = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(target, "__self__", None)
        if owner is not None:
            args = bounds.prepare_call(getattr(target, "__name__", ""), owner, args, kwargs)
        return bounds.settle(super().call(__context, __obj, *args, **kwargs), "a call")


class _Bounds(NodeTransformer):
    """Every loop counted, every `~` concatenation checked as it grows, every piece of output counted."""

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)  # in place
        node.nodes = [nodes.Filter(n, "_edgefleet_output", [], [], None, None, lineno=n.lineno) for n in node.nodes]
        return node

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)  # in place
        node.iter = nodes.Filter(node.iter, "_edgefleet_counted", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)  # in place
        parts = nodes.List(list(node.nodes), lineno=node.lineno)
        return nodes.Filter(parts, "_edgefleet_concat", [], [], None, None, lineno=node.lineno)


def _parse(source: str) -> nodes.Template:
    tree = _Bounds().visit(_env.parse(source))
    assert isinstance(tree, nodes.Template)
    return tree


_env = _BoundedSandbox()


@dataclass(frozen=True)
class CompiledTemplate:
    spec: TemplateSpec
    body: jinja2.Template
    system: jinja2.Template | None

    def render(self, variables: Mapping[str, str]) -> tuple[str, str]:
        """(system prompt, user text) for these variables."""
        name = f"{self.spec.name}@{self.spec.version}"
        missing = [v for v in self.spec.variables if v not in variables]
        if missing:
            raise MissingVariable(f"template {name} needs variable(s) {', '.join(missing)}")
        unknown = sorted(set(variables) - set(self.spec.variables))
        if unknown:
            raise TemplateError(
                f"template {name} does not declare variable(s) {', '.join(unknown)}; "
                f"it takes {', '.join(self.spec.variables) or 'none'}"
            )
        for key, value in variables.items():
            if len(value) > MAX_VARIABLE_CHARS:
                raise TemplateError(f"variable {key} is {len(value)} characters; the limit is {MAX_VARIABLE_CHARS}")
        budget = bounds.start_render()
        try:
            user = self.body.render(**variables)
            system = self.system.render(**variables) if self.system else ""
        except SecurityError as e:
            raise TemplateError(f"template {name} tried something the sandbox forbids: {e}") from e
        except jinja2.UndefinedError as e:
            raise MissingVariable(f"template {name}: {e.message}") from e
        except Exception as e:  # any other runtime error inside the template
            raise TemplateError(f"template {name} failed to render: {e}") from e
        finally:
            bounds.end_render(budget)
        if len(user) + len(system) > MAX_RENDERED_CHARS:
            raise TemplateError(f"template {name} rendered to over {MAX_RENDERED_CHARS} characters")
        return system, user


def _undeclared(tree: nodes.Template) -> set[str]:
    """`jinja2.meta.find_undeclared_variables` without its constant folding (cubic in nesting)."""
    codegen = meta.TrackingCodeGenerator(_env)
    codegen.optimizer = None
    codegen.visit(tree)
    return set(codegen.undeclared_identifiers)


def declared_variables(source: str) -> list[str]:
    """Variables a template body uses, for specs that do not list them."""
    try:
        return sorted(_undeclared(_env.parse(source)))
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"template syntax error at line {e.lineno}: {e.message}") from e
    except RecursionError as e:
        raise TemplateError("template nests too deeply to parse") from e


def compile_template(spec: TemplateSpec) -> CompiledTemplate:
    """Parse the body and system prompt; every variable they use must be declared."""
    label = f"template {spec.name}@{spec.version}"
    try:
        used = set(_undeclared(_env.parse(spec.template)))
        if spec.system:
            used |= _undeclared(_env.parse(spec.system))
        body = _env.from_string(_parse(spec.template))
        system = _env.from_string(_parse(spec.system)) if spec.system else None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{label}: syntax error at line {e.lineno}: {e.message}") from e
    except (RecursionError, SyntaxError) as e:  # nested thousands deep: Jinja's or Python's compiler gives up
        raise TemplateError(f"{label} nests too deeply to compile") from e
    undeclared = sorted(used - set(spec.variables))
    if undeclared:
        raise TemplateError(f"{label} uses undeclared variable(s) {', '.join(undeclared)}")
    return CompiledTemplate(spec, body, system)
