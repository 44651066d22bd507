"""Draftless speculation end to end on the real model (smollm2-135m, in-process engines).

Two engines share the model: one without speculation, one that drafts eagerly (cheap steps assumed,
up to three running sequences) so verification runs often. Greedy text must be the same on both:
solo, batched with a sampled sequence, at max_tokens, at a stop string, after a cancelled draft, and
when the next prompt reuses the cells of a speculative answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from edgefleet.node.engine.engine import Engine
from edgefleet.node.engine.engine_inbox import EngineConfig
from edgefleet.node.engine.llama_backend import LoadedModel
from edgefleet.node.engine.speculation import SpeculationPolicy
from edgefleet.node.engine.types import (
    Event,
    Failed,
    Finished,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)
from edgefleet.node.model_catalog import resolve_model

PASSAGE = (
    "Pump P2 was serviced on 12 March: the mechanical seal was replaced, the coupling was realigned to "
    "0.05 mm and the discharge pressure alarm was set to 6.5 bar."
)
GREEDY = SamplingParams(max_tokens=40, temperature=0.0, top_k=1)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return LoadedModel(resolve_model("smollm2-135m-instruct", tmp_path_factory.mktemp("models")).path)


def start(model: LoadedModel, policy: SpeculationPolicy | None, slots: int = 3) -> Engine:
    cfg = EngineConfig(n_ctx_slot=512, slots=slots, n_batch=256, queue_limit=8, threads=1, adapt_threads=False)
    engine = Engine(model, cfg, speculation=policy)
    engine.start()
    return engine


EAGER = SpeculationPolicy(k=6, max_active=3, step_cost=0.2, learn_cost=False)  # drafts on any machine


@pytest.fixture(scope="module")
def engines(model: LoadedModel) -> Iterator[tuple[Engine, Engine]]:
    off, on = start(model, None), start(model, EAGER)
    yield off, on
    off.stop()
    on.stop()


def chat(model: LoadedModel, user: str) -> list[int]:
    text = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return model.tokenize(text, add_special=False, parse_special=True)


def copy_prompt(model: LoadedModel, passage: str = PASSAGE) -> list[int]:
    return chat(model, f"Repeat the following text exactly:\n{passage}")


@dataclass
class Answer:
    rid: str
    text: list[str] = field(default_factory=list)
    end: Finished | Failed | None = None
    done: threading.Event = field(default_factory=threading.Event)
    first: threading.Event = field(default_factory=threading.Event)

    def sink(self, ev: Event) -> None:
        if isinstance(ev, TextDelta):
            self.text.append(ev.text)
            self.first.set()
        elif isinstance(ev, Finished | Failed):
            if isinstance(ev, Finished):
                self.text.append(ev.text_tail)
            self.end = ev
            self.done.set()

    @property
    def full(self) -> str:
        return "".join(self.text)

    @property
    def finished(self) -> Finished:
        assert self.done.wait(180), "no answer"
        assert isinstance(self.end, Finished), self.end
        return self.end


_ids = iter(range(10**9))


def submit(engine: Engine, tokens: list[int], params: SamplingParams = GREEDY) -> Answer:
    answer = Answer(f"s{next(_ids)}")
    engine.submit(GenerationRequest(answer.rid, tokens, params, answer.sink))
    return answer


def generate(engine: Engine, tokens: list[int], params: SamplingParams = GREEDY) -> tuple[str, Finished]:
    answer = submit(engine, tokens, params)
    end = answer.finished
    return answer.full, end


def drafts(engine: Engine) -> tuple[int, int]:
    return engine.drafted_tokens, engine.accepted_tokens


def test_greedy_text_is_the_same_solo_and_drafts_are_accepted(
    model: LoadedModel, engines: tuple[Engine, Engine]
) -> None:
    off, on = engines
    tokens = copy_prompt(model)
    want, w = generate(off, tokens)
    d0, a0 = drafts(on)
    got, g = generate(on, tokens)
    d1, a1 = drafts(on)
    assert got == want and g.usage.completion_tokens == w.usage.completion_tokens and g.reason == w.reason
    assert a1 - a0 > 0 and d1 - d0 >= a1 - a0, "a copying answer has accepted drafts"
    assert "12 March" in got, got


def test_greedy_text_is_the_same_batched_with_a_sampled_sequence(
    model: LoadedModel, engines: tuple[Engine, Engine]
) -> None:
    off, on = engines
    other = "Safety rule 14: stop the dosing pump, close valve V-301 and wear a full-face respirator."
    prompts = [copy_prompt(model), copy_prompt(model, other), chat(model, "Name three kinds of pumps.")]
    sampled = SamplingParams(max_tokens=24, temperature=0.8, seed=42)
    params = [GREEDY, GREEDY, sampled]
    results = {}
    before = drafts(on)[1]
    for name, engine in (("off", off), ("on", on)):
        answers = [submit(engine, t, p) for t, p in zip(prompts, params, strict=True)]
        ends = [a.finished for a in answers]
        results[name] = [(a.full, e.usage.completion_tokens) for a, e in zip(answers, ends, strict=True)]
    assert results["on"][:2] == results["off"][:2], "greedy text batched, with and without drafts"
    assert drafts(on)[1] > before, "drafts were accepted while three sequences ran"
    assert results["on"][2] == results["off"][2], "the sampled sequence beside the drafts is unchanged"
    assert results["on"][2][1] == 24


def test_max_tokens_and_stop_strings_hold_inside_a_draft(model: LoadedModel, engines: tuple[Engine, Engine]) -> None:
    off, on = engines
    tokens = copy_prompt(model)
    for n in (1, 2, 7, 13):
        params = SamplingParams(max_tokens=n, temperature=0.0, top_k=1)
        want, w = generate(off, tokens, params)
        got, g = generate(on, tokens, params)
        assert (got, g.usage.completion_tokens, g.reason) == (want, w.usage.completion_tokens, w.reason)
        assert g.usage.completion_tokens == n and g.reason is FinishReason.LENGTH
    full, _ = generate(off, tokens)
    for stop in ("seal", "0.05", "alarm"):
        params = SamplingParams(max_tokens=40, temperature=0.0, top_k=1, stop=(stop,))
        want, w = generate(off, tokens, params)
        got, g = generate(on, tokens, params)
        assert stop in full and got == want == full[: full.index(stop)], (stop, got, want)
        assert g.reason is FinishReason.STOP and g.usage.completion_tokens == w.usage.completion_tokens


def test_a_cancelled_speculating_sequence_leaves_the_engine_consistent(model: LoadedModel) -> None:
    on, off = start(model, EAGER, slots=1), start(model, None, slots=1)
    try:
        tokens = copy_prompt(model)
        long = SamplingParams(max_tokens=200, temperature=0.0, top_k=1)
        for _ in range(2):
            before = drafts(on)[0]
            answer = submit(on, tokens, long)
            pause = threading.Event()
            for _ in range(20000):  # cancel once it has drafted (polled, with a deadline)
                if drafts(on)[0] > before or answer.done.is_set():
                    break
                pause.wait(0.005)
            on.cancel(answer.rid)
            assert answer.done.wait(120)
            assert isinstance(answer.end, Finished) and answer.end.reason is FinishReason.CANCELLED
        follow = chat(model, f"Summarize in one sentence:\n{PASSAGE}")
        assert generate(on, follow)[0] == generate(off, follow)[0]
        assert generate(on, tokens)[0] == generate(off, tokens)[0]
    finally:
        on.stop()
        off.stop()


def test_a_prompt_reusing_a_speculative_answer_gives_the_same_text(
    model: LoadedModel, engines: tuple[Engine, Engine]
) -> None:
    off, on = engines
    first = copy_prompt(model)
    answers = {}
    for name, engine in (("off", off), ("on", on)):
        text, _ = generate(engine, first)
        turn = model.tokenize(
            f"{text}<|im_end|>\n<|im_start|>user\nNow repeat it once more.<|im_end|>\n<|im_start|>assistant\n",
            add_special=False,
            parse_special=True,
        )
        got, end = generate(engine, first + turn)
        answers[name] = (got, end.usage.cached_prompt_tokens)
    assert answers["on"][0] == answers["off"][0], "the slot's cached tokens are the cells it holds"
    assert answers["on"][1] >= len(first), "the second turn reused the first turn's cells"
