"""`fleet rollout start`'s flags and files → a `RolloutPlan` (proto/rollouts.py), checked whole before
anything is sent; a problem raises RolloutCommandError naming the flag or the file.

The change's files are read with the push commands' own loaders: a template as `push-template` reads
it, a rule as `push-rule`, agent rules and tools as `agent set` / `tool set`, a model checked as
`model push` checks it (its reference, sha256 and size, computed here; fleet/rollout_commands.py
uploads it when the plan is sent), an adapter read as `push-adapter` reads it, a knowledge collection
bundled from its folder as `push-knowledge` bundles it (or a bundle file made before).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import ValidationError

from edgefleet.proto.agents import AgentRule, ToolSpec
from edgefleet.proto.evaluation_sets import EvaluationSetError, load_evaluation_set
from edgefleet.proto.payloads import ArtifactRef, Target, describe_validation_error
from edgefleet.proto.rollouts import RolloutPlan

# --remove's section words, singular as an operator writes them, to the desired state's sections
SECTIONS = {
    "template": "templates",
    "rule": "rules",
    "agent": "agents",
    "tool": "tools",
    "adapter": "adapters",
    "knowledge": "knowledge",
    "model": "model",
}
# plan fields as the flags that set them, for refusals
FLAGS = {
    "name": "NAME",
    "target": "--target",
    "waves.canary": "--canary",
    "waves.canary_count": "--canary-count",
    "waves.steps": "--steps",
    "waves.soak_s": "--soak",
    "waves.apply_timeout_s": "--apply-timeout",
    "waves": "--canary/--canary-count",
    "gates.max_error_reports": "--max-errors",
    "gates.max_p95_ratio": "--max-p95-ratio",
    "gates.min_tokens_per_s_ratio": "--min-tps-ratio",
    "gates.max_quality_drop": "--max-quality-drop",
    "gates.min_quality": "--min-quality",
    "change": "the change",
}
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class RolloutCommandError(Exception):
    """A problem the operator can fix before anything is sent (a flag, a file); exit status 2."""


@dataclass(frozen=True)
class ReleaseUpload:
    """The file a release's artifact is made of, uploaded (and its manifest signed and kept, with
    `push-<kind> --upload-only`) before the plan is sent: a model read from its path, an adapter or
    a knowledge bundle from the bytes read here (the sha256 in the plan's reference is theirs)."""

    kind: Literal["model", "adapter", "knowledge"]
    ref: ArtifactRef
    path: Path | None = None
    data: bytes | None = None

    @property
    def op(self) -> str:
        return f"push-{self.kind}"


def duration(text: str, flag: str) -> float:
    """`30s`, `2m`, `1.5h`, `500ms`, `90` (seconds) → seconds."""
    m = DURATION.match(text)
    if not m:
        raise RolloutCommandError(f"{flag} {text!r}: give a time such as 30s, 2m, 1h or 90 (seconds)")
    return float(m.group(1)) * UNIT_S[m.group(2)]


def name_version(text: str, flag: str) -> tuple[str, str]:
    name, at, version = text.partition("@")
    if not at or not name or not version:
        raise RolloutCommandError(f"{flag} {text!r}: give NAME@VERSION (e.g. triage@2)")
    return name, version


def target(text: str) -> Target:
    kind, colon, name = text.partition(":")
    if not colon or kind not in ("group", "node"):
        raise RolloutCommandError(f"--target {text!r}: give group:NAME (or node:NAME for one node)")
    try:
        return Target(kind=kind, name=name)  # type: ignore[arg-type]
    except ValidationError as e:
        raise RolloutCommandError(f"--target: {e.errors()[0]['msg']}") from e


def steps(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise RolloutCommandError(f"--steps {text!r}: give whole percentages, e.g. 50,100") from None


# -- the change --------------------------------------------------------------------------------------------
def _entry(args: argparse.Namespace) -> tuple[str, str, Any] | None:
    """(section, name, entry) of the one change flag given (None: only removals); the file is read
    with the push command's loader. A model's entry is its file path (uploaded when the plan is sent)."""
    from edgefleet.fleet.agent_commands import AgentCommandError, load_spec
    from edgefleet.fleet.rule_commands import RuleCommandError, load_rule
    from edgefleet.fleet.site_commands import FleetCommandError, load_template

    changes = ("template", "rule", "agent", "tool", "model", "adapter", "knowledge")
    given = [f for f in changes if getattr(args, f, None) is not None]
    if len(given) > 1:
        raise RolloutCommandError(f"one change per release: give one of --{', --'.join(given)}")
    if args.file is not None and given[:1] not in (["template"], ["model"], ["adapter"], ["knowledge"]):
        raise RolloutCommandError("--file goes with --template, --model, --adapter or --knowledge")
    if args.system is not None and given[:1] != ["template"]:
        raise RolloutCommandError("--system goes with --template")
    if not given:
        return None
    kind = given[0]
    try:
        if kind == "template":
            name, version = name_version(args.template, "--template")
            if args.file is None:
                raise RolloutCommandError("--template needs --file (a Jinja2 file, or YAML/JSON with template)")
            return "templates", name, load_template(args.file, name, version, args.system)
        if kind == "rule":
            rule = load_rule(args.rule)
            return "rules", rule.name, rule
        if kind in ("agent", "tool"):
            spec = load_spec(getattr(args, kind), AgentRule if kind == "agent" else ToolSpec)
            return f"{kind}s", spec.name, spec
    except (FleetCommandError, RuleCommandError, AgentCommandError) as e:
        raise RolloutCommandError(str(e)) from e
    if kind in ("adapter", "knowledge"):
        name, version = name_version(getattr(args, kind), f"--{kind}")
        if args.file is None:
            what = "the LoRA adapter, GGUF" if kind == "adapter" else "a folder of documents, or a bundle file"
            raise RolloutCommandError(f"--{kind} needs --file ({what})")
        return f"{kind}s" if kind == "adapter" else kind, name, (name, version, args.file)
    name, version = name_version(args.model, "--model")
    if args.file is None:
        raise RolloutCommandError("--model needs --file (the GGUF model)")
    return "model", "model", (name, version, args.file)


def artifact_upload(
    kind: Literal["adapter", "knowledge"], name: str, version: str, path: Path, err: TextIO
) -> ReleaseUpload:
    """An adapter file read and checked as `push-adapter` reads it, or a knowledge collection bundled
    from its folder as `push-knowledge` bundles it (a file: a bundle made before); its reference."""
    from edgefleet.fleet.adapter_commands import AdapterCommandError, knowledge_bundle
    from edgefleet.fleet.adapter_commands import _read as read_adapter

    try:
        if kind == "adapter":
            data = read_adapter(path)
        elif path.is_dir():
            data = knowledge_bundle(path, err)
        else:
            data = path.read_bytes()
            if not data:
                raise RolloutCommandError(f"--file {path} is empty")
    except AdapterCommandError as e:
        raise RolloutCommandError(f"--file {e}") from e
    except OSError as e:
        raise RolloutCommandError(f"--file: cannot read {path}: {e.strerror}") from e
    try:
        ref = ArtifactRef(name=name, version=version, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    except ValidationError as e:
        raise RolloutCommandError(f"--{kind}: {describe_validation_error(e)}") from e
    return ReleaseUpload(kind, ref, data=data)


def _removals(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    section, names = None, []
    for item in args.remove:
        word, _, name = item.partition(":")
        if word not in SECTIONS or (word != "model" and not name):
            raise RolloutCommandError(
                f"--remove {item!r}: give SECTION:NAME, SECTION one of {', '.join(SECTIONS)} (model alone: 'model')"
            )
        if section is not None and SECTIONS[word] != section:
            raise RolloutCommandError("--remove: one section per release")
        section = SECTIONS[word]
        names.append("model" if word == "model" else name)
    return section, names


def model_ref(name: str, version: str, path: Path) -> ArtifactRef:
    """The reference a model file will have (sha256, size), checked as `fleet model push` checks it."""
    from edgefleet.fleet.model_commands import ModelCommandError, check_file

    try:
        check_file(path)
    except ModelCommandError as e:
        raise RolloutCommandError(str(e)) from e
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            digest.update(block)
    try:
        return ArtifactRef(name=name, version=version, sha256=digest.hexdigest(), size=path.stat().st_size)
    except ValidationError as e:
        raise RolloutCommandError(f"--model: {describe_validation_error(e)}") from e


def _flag_of(e: ValidationError) -> str:
    problems = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        known = [k for k in sorted(FLAGS, key=len, reverse=True) if loc == k or loc.startswith(k + ".")]
        flag = FLAGS[known[0]] if known else loc
        problems.append(f"{flag or '(plan)'}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def build_plan(args: argparse.Namespace, err: TextIO | None = None) -> tuple[RolloutPlan, ReleaseUpload | None]:
    """The plan of `rollout start`'s flags and files, checked whole; and the artifact to upload first
    (None: a change with no file: templates, rules, agents, tools, removals). `err`: where a
    knowledge folder's bundling shows its progress. RolloutCommandError names the flag or the file."""
    tgt = target(args.target)
    entry = _entry(args)
    removed_section, removed = _removals(args)
    if entry is None and not removed:
        raise RolloutCommandError(
            "give the change: --template NAME@VERSION --file F, --rule FILE, --agent FILE, --tool FILE, "
            "--model|--adapter|--knowledge NAME@VERSION --file F, or --remove SECTION:NAME"
        )
    section = entry[0] if entry else removed_section
    if entry and removed_section and removed_section != section:
        raise RolloutCommandError(f"--remove {removed_section} with a {section} change: one section per release")
    upload: ReleaseUpload | None = None
    entries: dict[str, Any] = {}
    if entry is not None:
        _, name, value = entry
        if section == "model":
            mname, version, model_file = value
            upload = ReleaseUpload("model", model_ref(mname, version, model_file), path=model_file)
            value = upload.ref
        elif section in ("adapters", "knowledge"):
            aname, version, path = value
            kind: Literal["adapter", "knowledge"] = "adapter" if section == "adapters" else "knowledge"
            upload = artifact_upload(kind, aname, version, path, err or io.StringIO())
            value = upload.ref
        entries[name] = value
    waves: dict[str, Any] = {}
    if args.canary is not None:
        waves["canary"] = [n.strip() for n in args.canary.split(",") if n.strip()]
    if args.canary_count is not None:
        waves["canary_count"] = args.canary_count
    if args.steps is not None:
        waves["steps"] = steps(args.steps)
    if args.soak is not None:
        waves["soak_s"] = duration(args.soak, "--soak")
    if args.apply_timeout is not None:
        waves["apply_timeout_s"] = duration(args.apply_timeout, "--apply-timeout")
    gates: dict[str, Any] = {"health": False} if args.no_health else {}
    for flag, field in (
        ("max_errors", "max_error_reports"),
        ("max_p95_ratio", "max_p95_ratio"),
        ("min_tps_ratio", "min_tokens_per_s_ratio"),
        ("max_quality_drop", "max_quality_drop"),
        ("min_quality", "min_quality"),
    ):
        if getattr(args, flag) is not None:
            gates[field] = getattr(args, flag)
    evaluation = None
    if args.eval is not None:
        try:
            evaluation = load_evaluation_set(args.eval)
        except EvaluationSetError as e:
            raise RolloutCommandError(f"--eval {e}") from e
    try:
        plan = RolloutPlan.model_validate(
            {
                "name": args.name,
                "target": tgt,
                "change": {"section": section, "entries": entries, "remove": removed},
                "waves": waves,
                "gates": gates,
                "evaluation": evaluation,
            }
        )
    except ValidationError as e:
        raise RolloutCommandError(f"rollout refused: {_flag_of(e)}") from e
    return plan, upload
