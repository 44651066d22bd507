"""The prefix store: fixed prompt prefixes' KV cells kept on disk across engine restarts.

The file format and its checks are pure (bytes in, bytes or StaleEntry out); the engine tests run
the real model (smollm2) in-process, restart the engine on the same store directory, and compare
greedy text with and without a restored prefix.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from edgefleet.node.engine.engine import Engine
from edgefleet.node.engine.engine_inbox import EngineConfig
from edgefleet.node.engine.llama_backend import LoadedModel
from edgefleet.node.engine.prefix_store import PrefixKey, PrefixStore, StaleEntry, decode, encode
from edgefleet.node.engine.scheduler import Scheduler, Sequence
from edgefleet.node.engine.types import Failed, Finished, GenerationRequest, SamplingParams, TextDelta, Usage
from edgefleet.node.model_catalog import ModelFile, resolve_model

SHA = "a" * 64
KEY = PrefixKey(SHA, "", "f16", (1, 2, 3, 4))
STATE = bytes(range(256)) * 8


# -- the file format ---------------------------------------------------------------------------
def test_an_entry_reads_back_only_for_the_key_it_was_made_for() -> None:
    blob = encode(KEY, STATE)
    assert decode(blob, KEY) == STATE
    others = {
        "model": PrefixKey("b" * 64, "", "f16", KEY.tokens),
        "adapter": PrefixKey(SHA, "ops@1#" + "c" * 64 + "*1", "f16", KEY.tokens),
        "KV type": PrefixKey(SHA, "", "q8_0", KEY.tokens),
        "prefix tokens": PrefixKey(SHA, "", "f16", (1, 2, 3, 5)),
    }
    for what, key in others.items():
        assert key.digest() != KEY.digest(), f"another {what} is another file"
        with pytest.raises(StaleEntry):
            decode(blob, key)
    damaged = bytearray(blob)
    damaged[-100] ^= 0xFF
    with pytest.raises(StaleEntry, match="checksum"):
        decode(bytes(damaged), KEY)
    with pytest.raises(StaleEntry, match="bytes"):
        decode(blob[:-1], KEY)
    with pytest.raises(StaleEntry, match="magic"):
        decode(b"GGUF" + blob[4:], KEY)


def test_the_store_drops_stale_entries_with_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = PrefixStore(tmp_path, 1 << 20, SHA, "f16")
    assert store.save(KEY, STATE)
    good = store.key((9, 8, 7, 6))
    assert store.save(good, STATE)
    (tmp_path / f"{'0' * 64}.kv").write_bytes(encode(PrefixKey("b" * 64, "", "f16", (5,)), STATE))
    (tmp_path / f"{'1' * 64}.kv").write_bytes(encode(PrefixKey(SHA, "", "q8_0", (5,)), STATE))
    with caplog.at_level(logging.WARNING, "edgefleet.prefix_store"):
        reopened = PrefixStore(tmp_path, 1 << 20, SHA, "f16")
    assert len(reopened) == 2, "the other model's and the other KV type's entries are dropped on open"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{KEY.digest()}.kv", f"{good.digest()}.kv"])
    assert caplog.text.count("prefix store entry dropped") == 2
    path = tmp_path / f"{KEY.digest()}.kv"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING, "edgefleet.prefix_store"):
        assert reopened.load(KEY) is None, "damaged bytes are never used"
    assert not path.exists() and "checksum" in getattr(caplog.records[-1], "reason", "")
    assert reopened.load(store.key((9, 8, 7, 5))) is None, "other tokens (a changed template) miss"
    assert reopened.load(good) == STATE


def test_the_store_keeps_to_its_size_least_recently_used_out(tmp_path: Path) -> None:
    one = len(encode(KEY, STATE))
    store = PrefixStore(tmp_path, 2 * one + 10, SHA, "f16")
    keys = [store.key((i, i, i, i)) for i in range(3)]
    store.save(keys[0], STATE)
    store.save(keys[1], STATE)
    assert store.load(keys[0]) == STATE  # used: keys[1] is now the least recently used
    store.save(keys[2], STATE)
    assert [store.has(k) for k in keys] == [True, False, True]
    assert store.total_bytes() <= store.max_bytes
    assert not PrefixStore(tmp_path, 10, SHA, "f16").save(keys[1], STATE), "larger than the store: not kept"
    big = PrefixStore(tmp_path / "big", 1 << 20, SHA, "f16")
    big.save(keys[0], STATE, "template:pump-check@2")
    big.save(keys[1], STATE, "template:pump-check@3")
    big.save(keys[2], STATE)
    reopened = PrefixStore(tmp_path / "big", 1 << 20, SHA, "f16")
    assert reopened.retain_templates({"pump-check@3"}) == 1, "a changed template's prefix goes"
    assert [reopened.has(k) for k in keys] == [False, True, True], "the current one's and a chat preamble's stay"


def test_the_scheduler_restores_a_stored_prefix_or_stops_its_prefill_there_to_save_it() -> None:
    stored: set[tuple[int, ...]] = set()

    def restore(seq: Sequence, slot: int) -> int:
        prefix = tuple(seq.req.prompt_tokens[: seq.req.prefix_len])
        return len(prefix) if prefix in stored else 0

    s = Scheduler(n_slots=1, queue_limit=2, n_batch=64, n_ctx_slot=256)
    s.restore = restore
    prompt = list(range(100, 140))
    s.add(GenerationRequest("a", prompt, SamplingParams(), lambda e: None, prefix_len=30))
    plan = s.schedule(0.0)
    assert [len(i.tokens) for i in plan.items] == [30] and not plan.items[0].logits, "stops at the prefix's end"
    s.decoded(plan)
    seq = plan.items[0].seq
    assert seq.save_at == seq.n_past == 30  # the engine saves the slot's cells now
    stored.add(tuple(prompt[:30]))
    s.cancel("a")  # the slot's cells are gone: the prefix must come from the store
    s.add(GenerationRequest("b", [*prompt[:30], 7, 8], SamplingParams(), lambda e: None, prefix_len=30))
    plan = s.schedule(0.0)
    assert plan.admissions[0].keep == 30 and [i.tokens for i in plan.items] == [[7, 8]]
    assert plan.items[0].seq.save_at == 0 and plan.items[0].seq.cached_tokens == 30


# -- the engine, real model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelFile, LoadedModel]:
    mf = resolve_model("smollm2-135m-instruct", tmp_path_factory.mktemp("models"))
    return mf, LoadedModel(mf.path)


SYSTEM = (
    "You are the maintenance assistant of a water treatment plant. Pumps P1 to P4 feed the filters; "
    "vibration above 7 mm/s RMS, bearing temperature above 80 C or a pressure drop over 0.5 bar means "
    "a fault. Answer in one short sentence, name the pump and the reading, and say what to check first. "
) * 3


def chat_tokens(model: LoadedModel, question: str) -> tuple[list[int], int]:
    head = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
    prefix = model.tokenize(head, add_special=False, parse_special=True)
    rest = model.tokenize(f"{question}<|im_end|>\n<|im_start|>assistant\n", add_special=False, parse_special=True)
    return prefix + rest, len(prefix)


def start(model: LoadedModel, sha: str, store: Path | None, slots: int = 1, kv_type: str = "f16") -> Engine:
    cfg = EngineConfig(
        n_ctx_slot=1024,
        slots=slots,
        n_batch=512,
        queue_limit=4,
        threads=1,
        adapt_threads=False,
        kv_type=kv_type,
        prefix_store_dir=store,
        prefix_store_bytes=64 << 20 if store else 0,
        model_sha256=sha,
    )
    engine = Engine(model, cfg)
    engine.start()
    return engine


def generate(engine: Engine, tokens: list[int], prefix_len: int) -> tuple[str, Usage]:
    done = threading.Event()
    text: list[str] = []
    out: list[Finished | Failed] = []

    def sink(event: object) -> None:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, Finished | Failed):
            if isinstance(event, Finished):
                text.append(event.text_tail)
            out.append(event)
            done.set()

    params = SamplingParams(max_tokens=12, temperature=0.0, top_k=1)
    engine.submit(GenerationRequest(f"r{id(text)}", tokens, params, sink, prefix_len=prefix_len))
    assert done.wait(120), "no answer"
    assert isinstance(out[0], Finished), out[0]
    return "".join(text), out[0].usage


def test_a_restored_prefix_gives_the_same_greedy_text(
    model: tuple[ModelFile, LoadedModel], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mf, m = model
    store = tmp_path / "prefix_kv"
    q1, n = chat_tokens(m, "P2 vibration is 9.3 mm/s RMS. Is it a fault?")
    q2, _ = chat_tokens(m, "P4 bearing temperature is 85 C. What now?")
    plain = start(m, mf.sha256, None)
    try:
        want1, u = generate(plain, q1, n)
        want2, _ = generate(plain, q2, n)
        assert u.cached_prompt_tokens == 0
    finally:
        plain.stop()

    first = start(m, mf.sha256, store)
    try:
        got, u = generate(first, q1, n)
        assert got == want1 and u.cached_prompt_tokens == 0, "saving the prefix changes nothing"
    finally:
        first.stop()
    assert len(list(store.glob("*.kv"))) == 1, "the writes finish when the engine stops"

    for restart in range(2):  # preloaded at startup; then restored on first use after another prefix
        again = start(m, mf.sha256, store)
        try:
            if restart:
                other, k = chat_tokens(m, "x")
                generate(again, [*other[:5], *reversed(other[5:k]), *other[k:]], k)  # another prefix takes the slot
            got, u = generate(again, q2, n)
            assert got == want2, "greedy text with a restored prefix is the text without"
            assert u.cached_prompt_tokens == n
            assert again.prefixes is not None and (again.prefixes.restored >= 1 or not restart)
        finally:
            again.stop()

    damaged = store / f"{PrefixKey(mf.sha256, '', 'f16', tuple(q1[:n])).digest()}.kv"
    blob = bytearray(damaged.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    for sha, kv in ((mf.sha256, "f16"), ("0" * 64, "f16"), (mf.sha256, "q8_0")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, "edgefleet.prefix_store"):
            stale = start(m, sha, store, kv_type=kv)
            try:
                got, u = generate(stale, q1, n)
                assert u.cached_prompt_tokens == 0 or stale.kv_type != kv, "a stale entry is never used"
                assert got == want1 or kv != "f16"
            finally:
                stale.stop()
        assert "prefix store entry dropped" in caplog.text, (sha, kv)
