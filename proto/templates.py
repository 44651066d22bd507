"""Prompt templates: sandboxed Jinja2 with declared variables, the same on orchestrator and node.

The orchestrator compiles a template before it publishes it; the node compiles it again before
it applies it and renders it per request. Rendering runs in Jinja2's immutable sandbox with
strict undefined variables, so `{{ x.__class__ }}`-style escapes and typos fail loudly.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer

from edgefleet.proto.payloads import TemplateSpec

MAX_RENDERED_CHARS = 64 * 1024
MAX_VARIABLE_CHARS = 16 * 1024
MAX_LOOP_ITERATIONS = 100_000  # all loops of one render together
MAX_WRITTEN_CHARS = 4 * MAX_RENDERED_CHARS  # all output written, macros' and discarded blocks' too
MAX_INT_BITS = 64 * 1024


class TemplateError(ValueError):
    """A template that cannot compile or render; the message names the template and the problem."""


class MissingVariable(TemplateError):
    pass


_steps: ContextVar[list[int]] = ContextVar("template_loop_steps")
_WIDTH_ARGS = {"center", "ljust", "rjust", "zfill", "expandtabs", "indent", "batch", "slice"}
_SPEC_NUMBER = re.compile(r"\d+")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict | set | frozenset) else 0


def _check_size(value: Any, what: str) -> Any:
    """A value the sandbox built must stay small: refuse it before it grows further."""
    if _size(value) > MAX_RENDERED_CHARS:
        raise SecurityError(f"{what} would build over {MAX_RENDERED_CHARS} items")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise SecurityError(f"{what} would build an integer over {MAX_INT_BITS} bits")
    return value


def _check_widths(name: str, args: Iterable[Any]) -> None:  # center, ljust, …: the width is the size
    if name in _WIDTH_ARGS and any(isinstance(a, int) and abs(a) > MAX_RENDERED_CHARS for a in args):
        raise SecurityError(f"{name} with a width over {MAX_RENDERED_CHARS}")


def _check_format(fmt: str, args: Iterable[Any], percent: bool) -> None:
    """Widths and precisions of a format string (written or taken from the arguments) stay small."""
    if percent:
        specs = re.findall(r"%[^a-zA-Z%]*", fmt)
    else:
        try:
            specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(fmt)]
        except ValueError:
            return  # the formatter refuses it itself
    if any(int(n) > MAX_RENDERED_CHARS for spec in specs for n in _SPEC_NUMBER.findall(spec)):
        raise SecurityError(f"a format width over {MAX_RENDERED_CHARS}")
    nested = any(("*" if percent else "{") in spec for spec in specs)
    if nested and any(isinstance(a, int) and abs(a) > MAX_RENDERED_CHARS for a in args):
        raise SecurityError(f"a format width over {MAX_RENDERED_CHARS}")


def _check_call(name: str, owner: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse, before running it, a call (a str method or a filter) whose result would be far over the limits."""
    values = [*args, *kwargs.values()]
    _check_widths(name, values)
    if name in ("format", "format_map") and isinstance(owner, str):
        flat = [v for a in values for v in (a.values() if isinstance(a, Mapping) else [a])]
        _check_format(owner, flat, percent=False)
    elif name == "replace" and isinstance(owner, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        hits = owner.count(old) if old else len(owner) + 1
        if len(owner) + hits * max(len(new) - len(old), 0) > MAX_RENDERED_CHARS:
            raise SecurityError(f"replace would build over {MAX_RENDERED_CHARS} characters")
    elif name == "join" and isinstance(owner, str) and args and isinstance(args[0], list | tuple):
        if len(owner) * len(args[0]) + sum(_size(i) for i in args[0]) > MAX_RENDERED_CHARS:
            raise SecurityError(f"join would build over {MAX_RENDERED_CHARS} characters")
    elif name in ("indent", "wordwrap") and isinstance(owner, str):
        pad = kwargs.get("width", args[0] if args else 4) if name == "indent" else kwargs.get("wrapstring", "\n")
        if name == "wordwrap" and len(args) >= 3:
            pad = args[2]
        each = pad if isinstance(pad, int) else _size(pad)
        if len(owner) + (owner.count("\n") + 1 if name == "indent" else len(owner)) * each > MAX_RENDERED_CHARS:
            raise SecurityError(f"{name} would build over {MAX_RENDERED_CHARS} characters")


def _bounded_filter(name: str, func: Any) -> Any:
    skip = 1 if _PassArg.from_obj(func) is not None else 0

    def bounded(*args: Any, **kwargs: Any) -> Any:
        args_list = list(args)
        if len(args_list) > skip:
            value, rest = args_list[skip], args_list[skip + 1 :]
            if name == "join" and not isinstance(value, str):
                value = args_list[skip] = list(value)
                sep = kwargs.get("d", rest[0] if rest else "")
                if isinstance(sep, str) and kwargs.get("attribute", rest[1] if len(rest) > 1 else None) is None:
                    _check_call("join", sep, [value], {})
            elif name == "format" and isinstance(value, str):
                _check_format(value, [*rest, *kwargs.values()], percent=True)
            else:
                _check_call(name, value if isinstance(value, str) else None, rest, kwargs)
        return _check_size(func(*args_list, **kwargs), f"filter {name}")

    bounded.__dict__.update(getattr(func, "__dict__", {}))  # keeps jinja2's pass_context/pass_environment mark
    return bounded


def _concat(parts: list[Any]) -> str:
    """`a ~ b ~ …`, refused as soon as it grows over the limit."""
    out: list[str] = []
    total = 0
    for part in parts:
        text = str(part)
        total += len(text)
        if total > MAX_RENDERED_CHARS:
            raise SecurityError(f"a concatenation would build over {MAX_RENDERED_CHARS} characters")
        out.append(text)
    return "".join(out)


@jinja2.pass_context
def _output(context: jinja2.runtime.Context, value: Any) -> Any:
    """A piece of output (`{{ … }}` or text), counted as it is written, inside macros and loops too."""
    steps = _steps.get(None)
    if steps is not None:
        steps[1] += len(str(value))
        if steps[1] > MAX_WRITTEN_CHARS:
            raise SecurityError(f"the template wrote over {MAX_WRITTEN_CHARS} characters")
    return value


@jinja2.pass_context
def _counted(context: jinja2.runtime.Context, iterable: Iterable[Any]) -> Iterator[Any]:
    """The iterable of a `for` loop, counted against the render's loop budget (never folded at compile)."""
    steps = _steps.get(None)
    for item in iterable:
        if steps is not None:
            steps[0] += 1
            if steps[0] > MAX_LOOP_ITERATIONS:
                raise SecurityError(f"loops ran over {MAX_LOOP_ITERATIONS} iterations")
        yield item


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, bounded: a template cannot build huge strings, lists or numbers
    (`'x' * 10**9`, `'{:>999999999}'.format(1)`, `s|replace('', s)`, `9**(9**9)`) nor loop without
    end (nested `range`s): what would is refused with `SecurityError` before it is built."""

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

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if _size(seq) and isinstance(n, int) and _size(seq) * n > MAX_RENDERED_CHARS:
                    raise SecurityError(f"repeating a sequence to over {MAX_RENDERED_CHARS} items")
            ints = isinstance(left, int) and isinstance(right, int)
            if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError(f"an integer over {MAX_INT_BITS} bits")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            if left.bit_length() * right > MAX_INT_BITS:
                raise SecurityError(f"an integer over {MAX_INT_BITS} bits")
        elif operator == "%" and isinstance(left, str):
            _check_format(left, right if isinstance(right, tuple) else (right,), percent=True)
        return _check_size(super().call_binop(context, operator, left, right), f"operator {operator}")

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        target = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(target, "__self__", None)
        if owner is not None and not isinstance(owner, type):
            _check_call(getattr(target, "__name__", ""), owner, args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs), "a call")


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
        budget = _steps.set([0, 0])
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
            _steps.reset(budget)
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
