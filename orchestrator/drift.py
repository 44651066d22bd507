"""What a node should hold (its groups' desired state, then its own) and why it does not: pure functions.

The registry (for `fleet status`) and the fleet view (for the router and the console) both
describe drift with these, so the two never disagree.
"""

from __future__ import annotations

from edgefleet.proto.payloads import ArtifactRef, DesiredState, ReportedState, TemplateSpec, effective_model, merged


def target_keys(node_id: str, groups: list[str] | tuple[str, ...]) -> list[str]:
    """The desired-state documents that apply to a node, weakest first: its groups in order, then its own."""
    return [*(f"group:{g}" for g in groups), f"node:{node_id}"]


def desired_generations(
    node_id: str, groups: list[str] | tuple[str, ...], desired: dict[str, DesiredState]
) -> dict[str, int]:
    return {k: desired[k].generation for k in target_keys(node_id, groups) if k in desired}


def expected_templates(node_id: str, groups: list[str], desired: dict[str, DesiredState]) -> dict[str, TemplateSpec]:
    return merged(desired, node_id, groups, "templates")


def expected_adapters(node_id: str, groups: list[str], desired: dict[str, DesiredState]) -> dict[str, ArtifactRef]:
    """The adapters a node should hold: its groups' (in order), then its own, which win on a name clash."""
    return merged(desired, node_id, groups, "adapters")


def expected_knowledge(node_id: str, groups: list[str], desired: dict[str, DesiredState]) -> dict[str, ArtifactRef]:
    return merged(desired, node_id, groups, "knowledge")


def drift_reasons(
    node_id: str, groups: list[str], desired: dict[str, DesiredState], rep: ReportedState | None
) -> list[str]:
    """Why a node is not what its desired state says (empty: in sync)."""
    if rep is None:
        return ["no reported state yet"]
    reasons = []
    for key, gen in desired_generations(node_id, groups, desired).items():
        have = rep.generations.get(key, 0)
        if have < gen:
            reasons.append(f"{key} at generation {have}, desired {gen}")
    want = expected_templates(node_id, groups, desired)
    for name, spec in want.items():
        have_v = rep.templates.get(name)
        if have_v is None:
            reasons.append(f"template {name} missing")
        elif have_v != spec.version:
            reasons.append(f"template {name} at {have_v}, desired {spec.version}")
    reasons.extend(f"template {name} not desired" for name in rep.templates if name not in want)
    want_adapters = expected_adapters(node_id, groups, desired)
    for name, ref in want_adapters.items():
        have_v = rep.adapters.get(name)
        if have_v != ref.version:
            t = rep.transfers.get(f"adapter/{name}")
            where = f"{t.state} {t.have}/{t.total}" if t else (f"at {have_v}" if have_v else "missing")
            reasons.append(f"adapter {name} {where}, desired {ref.version}")
    reasons.extend(f"adapter {name} not desired" for name in rep.adapters if name not in want_adapters)
    for name, ref in expected_knowledge(node_id, groups, desired).items():
        if rep.knowledge.get(name) != ref.version:
            t = rep.transfers.get(f"knowledge/{name}")
            where = (
                f"{t.state} {t.have}/{t.total}"
                if t
                else (f"at {rep.knowledge[name]}" if name in rep.knowledge else "missing")
            )
            reasons.append(f"knowledge {name} {where}, desired {ref.version}")
    model = effective_model(desired, node_id, groups)
    if model is not None and rep.model != f"{model.name}@{model.version}":
        t = rep.transfers.get(f"model/{model.name}")
        where = f"{t.state} {t.have}/{t.total}" if t and t.version == model.version else "not fetched"
        reasons.append(f"model {model.name}@{model.version} {where}, serving {rep.model or 'unknown'}")
    reasons.extend(f"error: {e}" for e in rep.errors)
    return reasons
