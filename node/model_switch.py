"""Switching a node's base model: drain, load the new model, check it, commit it or go back.

Why the process re-executes itself instead of swapping the engine in place: nearly everything a
node serves with is built around its model once, in node/runtime.py `build_node`: the service holds
the model file, the loaded model, its chat formatter and tool-call format, the engine (contexts sized
for that model's KV cache), the adapter manager (adapters checked against that base), and the
knowledge store opened with that model's embedding size and sha256; the gRPC servicer, the MQTT agent,
the sensor plane, the agent runner and the metrics hold the service or the engine. An in-place swap
would have to rebuild and re-point each of them while requests run, and any part missed would serve
the old model's facts against the new one. The memory budget holds one model, so the old one must be
freed before the new one loads anyway: keeping the old engine warm for an instant return is not an
option on a small device. So a switch is a restart that keeps the pid (`os.execv`): the node drains
(new requests are refused DRAINING so the front door routes around it, in-flight ones finish),
stops every part (its ports are freed, its last status says why it went offline) and executes
itself again with the same arguments and environment; the new image's `build_node` reads node.db
(node/control/base_models.py) and loads the pending model through the same path as any start. A
supervisor (balena, systemd, a test) sees the same process throughout; a restart for any other
reason (a crash, a power cut) lands in the same code, so the switch survives it by construction.

At start (`choose_and_build`): a pending model is loaded and checked (it loads, fits the budget, a
short greedy generation gives a token, the engine stays alive); the node then serves it and commits
it once its gRPC server is up and healthy (`Node.commit_model`, before the control plane reports
anything), so the reported model (NodeStatus info.model, ReportedState.model) is always one that
passed. A pending model that fails is refused (kept in node.db with the reason, reported in the
reported state and on the errors topic), its file removed, and the committed model (else the node's
own) is loaded instead, in the same start: the node returns to the old model by itself. A pending
model whose start never finished (the process died in its check) is dropped the same way on the next
start. The previous model's file stays on disk until the new one is committed, and one model back is
kept after that, so a rollback to it needs no download.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from edgefleet.node.control.base_models import BaseModels, ModelSlot
from edgefleet.node.engine.engine import Engine
from edgefleet.node.engine.llama_backend import LoadedModel
from edgefleet.node.engine.types import Failed, Finished, GenerationRequest, SamplingParams, TextDelta
from edgefleet.node.errors import EdgefleetError, ModelError
from edgefleet.node.model_catalog import ModelFile
from edgefleet.plumbing import failpoints

log = logging.getLogger("edgefleet.node.model_switch")
CHECK_FAILPOINT = "model.check"
CHECK_PROMPT = "The capital of France is"
CHECK_TOKENS = 4
N = TypeVar("N")


def check_generation(engine: Engine, model: LoadedModel, timeout_s: float) -> str:
    """A short greedy generation on a freshly loaded model: ModelError unless it gives a token in time."""
    failpoints.hit(CHECK_FAILPOINT)
    tokens = model.tokenize(CHECK_PROMPT, add_special=True, parse_special=False)
    if not tokens:
        raise ModelError("the model's vocabulary gives no token for the check prompt")
    done = threading.Event()
    text: list[str] = []
    outcome: list[Finished | Failed] = []

    def sink(event: object) -> None:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, Finished | Failed):
            if isinstance(event, Finished):
                text.append(event.text_tail)
            outcome.append(event)
            done.set()

    params = SamplingParams(max_tokens=CHECK_TOKENS, temperature=0.0, top_k=1, seed=0)
    engine.submit(GenerationRequest("model-check", tokens, params, sink))
    if not done.wait(timeout_s):
        engine.cancel("model-check")
        raise ModelError(f"the check generation gave no answer within {timeout_s:.0f} s")
    result = outcome[0]
    if isinstance(result, Failed):
        raise ModelError(f"the check generation failed: {result.error}")
    if result.usage.completion_tokens < 1:
        raise ModelError("the check generation produced no token")
    engine.check_alive()
    return "".join(text)


def choose_and_build(
    models: BaseModels | None,
    own: Callable[[], ModelFile],
    build: Callable[[ModelFile, bool], N],
) -> tuple[N, ModelSlot | None]:
    """Build the node with the model it should serve now: (node, the pending model to commit once
    serving, else None). `build(model_file, check)` builds a node (raising on any failure, having
    freed what it loaded); `check` asks it to run `check_generation` first."""
    if models is None:
        return build(own(), False), None
    pending, abandoned = models.begin_attempt()
    if abandoned is not None:
        reason = "the node stopped while loading or checking it; the previous model serves"
        log.error("pending model dropped", extra={"model": abandoned.label, "reason": reason})
        models.refuse(abandoned, reason)
        models.drop_pending(abandoned)
    if pending is not None:
        log.info("switching model: loading and checking", extra={"model": pending.label})
        try:
            return build(own() if pending.own else pending.model_file(), True), pending
        except Exception as e:  # whatever the new model breaks (a chat template jinja2 refuses too): go back
            log.error("model switch failed; going back", extra={"model": pending.label, "reason": str(e)})
            models.refuse(pending, f"its check failed: {e}; the previous model serves again")
            models.drop_pending(pending)
    committed = models.committed()
    if committed is not None:
        try:
            return build(committed.model_file(), False), None
        except EdgefleetError as e:
            log.error("committed model cannot be loaded; serving the own model", extra={"reason": str(e)})
            models.refuse(committed, f"it no longer loads: {e}; the node's own model serves")
            models.forget_committed()
    return build(own(), False), None


def reexec() -> None:
    """Replace this process with a fresh run of the same command line (same pid, environment and
    standard streams). Only returns when exec fails (OSError)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    argv = list(getattr(sys, "orig_argv", sys.argv))
    os.execv(sys.executable, [sys.executable, *argv[1:]])
