"""Operator commands for the site as a whole and its prompt templates: status, push-template, rm-template."""

from __future__ import annotations

from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.desired_edits import (
    PublishDesired,
    refuse_older,
    remove_entry,
    resolve_target,
    target_note,
)
from edgefleet.orchestrator.registry import Registry
from edgefleet.proto.commands import PushTemplateRequest, RemoveTemplateRequest, StatusRequest
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import CommandResult
from edgefleet.proto.templates import TemplateError, compile_template


class SiteCommands:
    def __init__(self, registry: Registry, publish_desired: PublishDesired) -> None:
        self.registry = registry
        self.publish_desired = publish_desired

    def register(self, table: CommandTable) -> None:
        table.register(StatusRequest, self.status)
        table.register(PushTemplateRequest, self.push_template)
        table.register(RemoveTemplateRequest, self.remove_template)

    def status(self, req: StatusRequest) -> CommandResult:
        """One page of the nodes the filters match (groups, profile, model, state, last seen, templates,
        in sync or drifted and why), their total, the next page's offset, and the site's summary.
        A page holds what fits one answer, however many nodes the site has (proto/paging.py)."""
        return CommandResult(ok=True, data=self.registry.node_page(req.node_filter(), req.offset, req.limit))

    def push_template(self, req: PushTemplateRequest) -> CommandResult:
        try:
            compile_template(req.template)
        except TemplateError as e:
            raise CommandError(str(e), ErrorCode.TEMPLATE_ERROR, field="template") from e
        target = resolve_target(req.target, self.registry, creating=True, new_group=req.new_group)
        current = self.registry.desired(target.key)
        templates = dict(current.templates) if current else {}
        before = templates.get(req.template.name)
        spec = req.template
        before_version = before.version if before else None
        refuse_older("template", spec.name, spec.version, before_version, target.key, req.force, "template.version")
        templates[spec.name] = spec
        doc = self.publish_desired(target, current, {"templates": templates})
        return CommandResult(
            ok=True,
            message=f"template {spec.name}@{spec.version} published for {target.key} as generation "
            f"{doc.generation}{target_note(target, self.registry)}",
            data={"generation": doc.generation, "target": target.key},
        )

    def remove_template(self, req: RemoveTemplateRequest) -> CommandResult:
        target = resolve_target(req.target, self.registry)
        current = self.registry.desired(target.key)
        return remove_entry(self.publish_desired, target, current, "templates", req.name, "template")
