"""The evaluation runner: an evaluation set's cases sent through the site's front door, pinned to
each node of a wave, scored per node (proto/evaluation_sets.py).

The orchestrator calls its own front door in process: each case is one `Generation` of the front
door's `Dispatcher` (orchestrator/front_door/dispatch.py) on the front door's event loop, routed
exactly as a client's gRPC Generate with the `x-edgefleet-node` pin (`generate_route`): the same
router, slot claims, node channels (mutual TLS with the orchestrator's certificate) and metrics
(`api="evaluation"`). No API key or listener is involved, so it works whichever listeners and
authentication the site runs, as long as the front door runs (a listener address is set).

Every case is greedy (top_k 1, seed 0; the temperature is left unset so a node's response cache,
which only answers temperature-0 requests, never answers for the engine: the figures measure
generation), bounded by `case_timeout_s`. The cases of one node run one after another (its
latency is its own); the nodes of a wave run side by side. A case a node fails (refused, no node
to pin, an error mid-answer, the timeout) is scored failed with its error; nothing a node does
stops the run. Only a front door that is not running raises (`EvaluationUnavailable`): the
figures would say nothing about the nodes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from edgefleet.orchestrator.front_door.dispatch import NODE_KEY, Dispatcher, FrontDoorError
from edgefleet.orchestrator.front_door.grpc_front import generate_route
from edgefleet.orchestrator.front_door.openai_tools import ToolError, gather, parse_tools
from edgefleet.orchestrator.front_door.server import FrontDoor
from edgefleet.proto.evaluation_sets import (
    Answer,
    CaseScore,
    EvalCase,
    EvaluationSet,
    Figures,
    case_failed,
    figures,
    score_answer,
)
from edgefleet.proto.v1 import inference_pb2 as pb

log = logging.getLogger("edgefleet.orchestrator.rollouts.evaluation")
API = "evaluation"  # the front door metrics' `api` label of these requests
DEFAULT_CASE_TIMEOUT_S = 60.0


class EvaluationUnavailable(RuntimeError):
    """The front door is not running: no case can be sent (the rollout should hold, not judge)."""


@dataclass(frozen=True)
class NodeEvaluation:
    figures: Figures
    scores: list[CaseScore]


def build_request(case: EvalCase) -> pb.GenerateRequest:
    """The gRPC Generate of a case: greedy, its max_tokens, template or messages, collection,
    constrained schema, tools. ToolError for tools the front door would refuse."""
    req = pb.GenerateRequest(max_tokens=case.max_tokens, top_k=1, seed=0)
    if case.template is not None:
        req.template = case.template
        req.variables.update(case.variables)
    else:
        if case.system:
            req.messages.add(role="system", content=case.system)
        req.messages.add(role="user", content=case.prompt or "")
    if case.collection:
        req.retrieval.collection = case.collection
    if case.json_schema is not None and case.constrained:
        req.json_schema = json.dumps(case.json_schema)
    if case.tools:
        parse_tools({"tools": case.tools, "tool_choice": case.tool_choice}, req)
    return req


def answer_of(chunks: list[pb.GenerateChunk], latency_ms: float) -> Answer:
    last = chunks[-1]
    return Answer(
        text="".join(c.text for c in chunks),
        tool_calls=[str(c["function"]["name"]) for c in gather(chunks)],
        sources=list(last.source_chunk_ids),
        latency_ms=latency_ms,
        tokens_per_s=0.0 if last.cached else last.usage.tokens_per_second,
        completion_tokens=last.usage.completion_tokens,
    )


class EvaluationRunner:
    def __init__(self, front_door: FrontDoor, case_timeout_s: float = DEFAULT_CASE_TIMEOUT_S) -> None:
        if case_timeout_s <= 0:
            raise ValueError(f"case_timeout_s must be positive, not {case_timeout_s}")
        self.front_door, self.case_timeout_s = front_door, case_timeout_s

    def run(self, nodes: Sequence[str], evaluation_set: EvaluationSet) -> dict[str, Figures]:
        """Figures per node (blocking; call from any thread but the front door's)."""
        return {node: r.figures for node, r in self.run_detailed(nodes, evaluation_set).items()}

    def run_detailed(self, nodes: Sequence[str], evaluation_set: EvaluationSet) -> dict[str, NodeEvaluation]:
        """Figures and every case's score, per node."""
        loop, dispatcher = self.front_door.loop, self.front_door.dispatcher
        if loop is None or dispatcher is None:
            raise EvaluationUnavailable(
                "the front door is not running (set EDGEFLEET_FRONT_DOOR_ADDRESS or EDGEFLEET_OPENAI_ADDRESS): "
                "an evaluation sends its cases through it"
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("EvaluationRunner.run blocks: call it from another thread than the front door's")
        unique = list(dict.fromkeys(nodes))
        started = time.monotonic()
        future = asyncio.run_coroutine_threadsafe(self._all(dispatcher, unique, evaluation_set.cases), loop)
        # each case is bounded by its own timeout; this bound is only a last guard
        bound = self.case_timeout_s * len(evaluation_set.cases) + 30.0
        try:
            results = future.result(timeout=bound)
        except TimeoutError:
            future.cancel()
            raise EvaluationUnavailable(f"the evaluation did not end within {bound:.0f}s") from None
        for node, r in results.items():
            log.info(
                "evaluation figures",
                extra={"node": node, "set": evaluation_set.name, **r.figures.model_dump(),
                       "failed_cases": [s.case for s in r.scores if s.passed < len(s.checks)]},
            )  # fmt: skip
        log.info("evaluation done", extra={"nodes": unique, "seconds": round(time.monotonic() - started, 3)})
        return results

    async def _all(self, d: Dispatcher, nodes: list[str], cases: list[EvalCase]) -> dict[str, NodeEvaluation]:
        per_node = await asyncio.gather(*(self._node(d, node, cases) for node in nodes))
        return dict(zip(nodes, per_node, strict=True))

    async def _node(self, d: Dispatcher, node: str, cases: list[EvalCase]) -> NodeEvaluation:
        scores = [await self._case(d, node, case) for case in cases]
        return NodeEvaluation(figures(scores), scores)

    async def _case(self, d: Dispatcher, node: str, case: EvalCase) -> CaseScore:
        started = time.monotonic()
        try:
            answer = await asyncio.wait_for(self._ask(d, node, case, started), self.case_timeout_s + 1.0)
        except TimeoutError:
            error = f"no answer within {self.case_timeout_s:g}s"
        except FrontDoorError as e:
            error = f"{e.code.value}: {e.message}"
        except ToolError as e:
            error = f"tools: {e.message}"
        except _NotAnswered as e:
            error = str(e)
        except Exception as e:  # never let one node's failure end the run
            log.exception("evaluation case failed unexpectedly", extra={"node": node, "case": case.id})
            error = f"internal: {e}"
        else:
            return score_answer(case, answer)
        elapsed = (time.monotonic() - started) * 1000
        log.info("evaluation case failed", extra={"node": node, "case": case.id, "reason": error[:300]})
        return case_failed(case, error, elapsed)

    async def _ask(self, d: Dispatcher, node: str, case: EvalCase, started: float) -> Answer:
        request = build_request(case)
        route = generate_route(request, {NODE_KEY: node})
        rid = f"eval-{uuid.uuid4().hex[:16]}"
        gen = d.generation(API, request, route, rid, started + self.case_timeout_s, started)
        try:
            chunks = [await gen.start()]
            if gen.node != node:  # the pin routes to `node` only; a guard, never expected
                raise _NotAnswered(f"answered by {gen.node}, not the pinned node")
            chunks.extend([c async for c in gen.rest()])
        finally:
            gen.close()
        last = chunks[-1]
        if last.finish_reason in (pb.FINISH_REASON_UNSPECIFIED, pb.FINISH_REASON_CANCELLED):
            raise _NotAnswered(f"the answer ended without finishing ({pb.FinishReason.Name(last.finish_reason)})")
        return answer_of(chunks, (time.monotonic() - started) * 1000)


class _NotAnswered(Exception):
    pass
