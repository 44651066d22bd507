"""Prompt templates: sandboxed Jinja2 with declared variables, the same on orchestrator and node.

The orchestrator compiles a template before it publishes it; the node compiles it again before
it applies it and renders it per request. Rendering runs in Jinja2's immutable sandbox with
strict undefined variables, so `{{ x.__class__ }}`-style escapes and typos fail loudly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from edgefleet.proto.payloads import TemplateSpec

MAX_RENDERED_CHARS = 64 * 1024
MAX_VARIABLE_CHARS = 16 * 1024


class TemplateError(ValueError):
    """A template that cannot compile or render; the message names the template and the problem."""


class MissingVariable(TemplateError):
    pass


_env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


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
        try:
            user = self.body.render(**variables)
            system = self.system.render(**variables) if self.system else ""
        except SecurityError as e:
            raise TemplateError(f"template {name} tried something the sandbox forbids: {e}") from e
        except jinja2.UndefinedError as e:
            raise MissingVariable(f"template {name}: {e.message}") from e
        except Exception as e:  # any other runtime error inside the template
            raise TemplateError(f"template {name} failed to render: {e}") from e
        if len(user) + len(system) > MAX_RENDERED_CHARS:
            raise TemplateError(f"template {name} rendered to over {MAX_RENDERED_CHARS} characters")
        return system, user


def declared_variables(source: str) -> list[str]:
    """Variables a template body uses, for specs that do not list them."""
    try:
        return sorted(meta.find_undeclared_variables(_env.parse(source)))
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"template syntax error at line {e.lineno}: {e.message}") from e


def compile_template(spec: TemplateSpec) -> CompiledTemplate:
    """Parse the body and system prompt; every variable they use must be declared."""
    label = f"template {spec.name}@{spec.version}"
    try:
        used = set(meta.find_undeclared_variables(_env.parse(spec.template)))
        if spec.system:
            used |= meta.find_undeclared_variables(_env.parse(spec.system))
        body = _env.from_string(spec.template)
        system = _env.from_string(spec.system) if spec.system else None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{label}: syntax error at line {e.lineno}: {e.message}") from e
    undeclared = sorted(used - set(spec.variables))
    if undeclared:
        raise TemplateError(f"{label} uses undeclared variable(s) {', '.join(undeclared)}")
    return CompiledTemplate(spec, body, system)
