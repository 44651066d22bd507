"""Operator commands for the site as a whole and its prompt templates: status, push-template, rm-template."""

from __future__ import annotations

from edgefleet.orchestrator.command_requests import NoArguments, PushTemplateRequest, RemoveEntryRequest
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.desired_edits import (
    PublishDesired,
    refuse_older,
    remove_entry,
    resolve_target,
    target_note,
)
from edgefleet.orchestrator.registry import Registry
from edgefleet.proto.payloads import CommandResult
from edgefleet.proto.templates import compile_template


class SiteCommands:
    def __init__(self, registry: Registry, publish_desired: PublishDesired) -> None:
        self.registry = registry
        self.publish_desired = publish_desired

    def register(self, table: CommandTable) -> None:
        table.register("status", NoArguments, self.status)
        table.register("push-template", PushTemplateRequest, self.push_template)
        table.register("rm-template", RemoveEntryRequest, self.remove_template)

    def status(self, _: NoArguments) -> CommandResult:
        """Every node: groups, profile, model, state, last seen, templates, and in sync or drifted (why)."""
        return CommandResult(ok=True, data={"nodes": [r.as_dict() for r in self.registry.rows()]})

    def push_template(self, req: PushTemplateRequest) -> CommandResult:
        compile_template(req.template)  # TemplateError: refused with the reason
        target = resolve_target(req.target, self.registry, creating=True, new_group=req.new_group)
        current = self.registry.desired(target.key)
        templates = dict(current.templates) if current else {}
        before = templates.get(req.template.name)
        spec = req.template
        refuse_older("template", spec.name, spec.version, before.version if before else None, target.key, req.force)
        templates[spec.name] = spec
        doc = self.publish_desired(target, current, {"templates": templates})
        return CommandResult(
            ok=True,
            message=f"template {spec.name}@{spec.version} published for {target.key} as generation "
            f"{doc.generation}{target_note(target, self.registry)}",
            data={"generation": doc.generation, "target": target.key},
        )

    def remove_template(self, req: RemoveEntryRequest) -> CommandResult:
        target = resolve_target(req.target, self.registry)
        current = self.registry.desired(target.key)
        return remove_entry(self.publish_desired, target, current, "templates", req.name, "template")
