"""Operator commands on releases in waves (proto/rollouts.py; orchestrator/rollouts/): start one, read its
status, pause, resume, promote, abort. Part of `Command`'s union (proto/commands.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from edgefleet.proto.command_base import CommandRequest, FilterText, NonEmpty, OnBehalfOf
from edgefleet.proto.rollouts import RolloutPlan


class RolloutStartRequest(CommandRequest):
    """Start a release: the plan's change moved to its target wave by wave, each wave gated; the
    answer is the rollout's status (its waves planned). The plan's `operator` is the signer's."""

    names_operator: ClassVar[bool] = True
    op: Literal["rollout-start"] = "rollout-start"
    plan: RolloutPlan


class RolloutStatusRequest(CommandRequest):
    """One rollout's whole status (`name`), or every rollout's summary, newest first (empty)."""

    op: Literal["rollout-status"] = "rollout-status"
    name: FilterText = ""


class RolloutVerbRequest(CommandRequest):
    """An operator's word on a running rollout, recorded in its events with the signer's name (and the
    console's account it was given for: "<account> via <signer>")."""

    names_operator: ClassVar[bool] = True
    name: NonEmpty
    on_behalf_of: OnBehalfOf = ""


class RolloutPauseRequest(RolloutVerbRequest):
    """Stop where it is: no wave starts, no soak ends, no gate is judged until resumed."""

    op: Literal["rollout-pause"] = "rollout-pause"


class RolloutResumeRequest(RolloutVerbRequest):
    """Go on after a pause, or after a hold (an evaluation that could not run is run again)."""

    op: Literal["rollout-resume"] = "rollout-resume"


class RolloutPromoteRequest(RolloutVerbRequest):
    """Cut the current wave's soak short; its gates still run (a gate is never skipped)."""

    op: Literal["rollout-promote"] = "rollout-promote"


class RolloutAbortRequest(RolloutVerbRequest):
    """Stop, and return every node that moved to its previous generation."""

    op: Literal["rollout-abort"] = "rollout-abort"
