"""Cite or abstain (node/knowledge/grounding.py): the pure rules, on sections of the project's own corpus."""

from __future__ import annotations

import pytest

from edgefleet.node.knowledge.grounding import (
    ABSTAIN_TEXT,
    Source,
    check,
    extract,
    identifiers,
    relevance,
    source_block,
    terms,
)

INTRO = Source(
    1,
    "manual/tc5-alarm-codes#0",
    "tc5-alarm-codes",
    "Open the alarm list with the bell key. Active alarms blink; press SET on an alarm to see when it started.",
    "TC-5 alarm codes",
)
A08 = Source(
    2,
    "manual/tc5-alarm-codes#8",
    "tc5-alarm-codes",
    "The building management system has not polled the controller within the Modbus timeout. The unit keeps "
    "running on its local setpoint.",
    "TC-5 alarm codes > A08 Communication lost",
)
A03 = Source(
    3,
    "manual/tc5-alarm-codes#3",
    "tc5-alarm-codes",
    "The flow switch opened while the pump was commanded on. Check that the valves are open, the\nstrainer is "
    "clean and the loop has no air. The compressor is stopped immediately to protect the evaporator from freezing.",
    "TC-5 alarm codes > A03 No glycol flow",
    page=7,
)
MODBUS = Source(
    4,
    "manual/tc5-modbus#2",
    "tc5-modbus",
    "Input registers (read only), values in tenths:\n30001 leaving glycol temperature, 30002 entering glycol "
    "temperature, 30003 outdoor air,\n30005 high pressure, 30006 low pressure, 30010 active alarm code (0 = none).",
    "TC-5 Modbus interface > Register map",
)
SOURCES = [INTRO, A08, A03, MODBUS]
A03_Q = "What does alarm A03 on the TC-5 mean?"


def test_words_identifiers_and_the_prompt_block() -> None:
    assert {"tc5", "a03", "alarm"} <= terms(A03_Q) and "what" not in terms(A03_Q)
    assert identifiers("Fit kit KR9-SP-114 on the TC-5, 28 bar") == {"kr9sp114", "tc5"}
    block = source_block([A03])
    assert block.count("[3] tc5-alarm-codes — TC-5 alarm codes > A03 No glycol flow (page 7)") == 1
    assert ABSTAIN_TEXT in block and "cite" in block


def test_relevance_covers_the_question_and_an_unknown_code_is_zero() -> None:
    assert relevance(A03_Q, SOURCES).score == 1.0
    r = relevance("What does alarm A12 on the TC-5 mean?", SOURCES)
    assert r.score == 0.0 and r.missing == ("a12",)
    assert relevance("How do I bake sourdough bread?", SOURCES).score < 0.4
    assert relevance(A03_Q, []).score == 0.0


def test_a_supported_answer_cites_the_source_that_holds_it() -> None:
    v = check(A03_Q, "A03 means no glycol flow: the flow switch opened while the pump was commanded on [3].", SOURCES)
    assert (v.supported, v.abstained, v.appendix, v.reason) == (True, False, "", "supported")
    (c,) = v.citations
    assert (c.n, c.chunk_id, c.doc_id, c.page) == (3, "manual/tc5-alarm-codes#3", "tc5-alarm-codes", 7)
    assert c.quote == "The flow switch opened while the pump was commanded on."


def test_an_unsupported_answer_gets_the_sources_own_sentence_quoted() -> None:
    v = check(A03_Q, "The alarm A03 on the TC-5 indicates that the pump is not functioning properly.", SOURCES)
    assert (v.supported, v.abstained, v.reason) == (False, False, "extracted")
    assert "A03 No glycol flow: The flow switch opened while the pump was commanded on." in v.appendix
    assert v.appendix.endswith("[3]") and [c.chunk_id for c in v.citations] == ["manual/tc5-alarm-codes#3"]


def test_a_number_must_stand_beside_the_claim_in_the_source() -> None:
    q = "Which Modbus register holds the active alarm code?"
    assert check(q, "The active alarm code is in register 30010.", SOURCES).supported
    wrong = check(q, "The active alarm code is in register 30005.", SOURCES)  # 30005 is high pressure
    assert not wrong.supported and "30010 active alarm code" in wrong.appendix
    assert not check(q, "The active alarm code is in register 40099.", SOURCES).supported  # in no source


@pytest.mark.parametrize(
    "answer", [ABSTAIN_TEXT, "The documents don't mention alarm A12.", "The sources do not cover this alarm."]
)
def test_the_model_saying_the_documents_do_not_cover_it_is_an_abstention(answer: str) -> None:
    v = check("What does alarm A12 mean?", answer, SOURCES)
    assert (v.abstained, v.citations, v.appendix, v.reason) == (True, (), "", "model_abstained")


def test_an_unsupported_answer_with_no_source_sentence_for_the_question_abstains() -> None:
    q = "How long is the warranty on the compressor?"
    v = check(q, "The warranty is five years from delivery.", SOURCES)
    assert (v.supported, v.abstained, v.citations) == (False, True, ())
    assert v.appendix == f"\n\n{ABSTAIN_TEXT}"
    assert extract(q, SOURCES) is None
    off = check(A03_Q, "The pump is not working.", SOURCES, extractive=False)  # extract off: abstain
    assert off.abstained and not off.citations


def test_the_verdict_is_deterministic() -> None:
    answer = "The flow switch opened. The loop has air."
    assert check(A03_Q, answer, SOURCES) == check(A03_Q, answer, list(SOURCES))


def test_a_copied_source_label_is_a_citation_and_a_unit_does_not_tie_a_number() -> None:
    copied = "[3] tc5-alarm-codes — TC-5 alarm codes > A03 No glycol flow\nThe flow switch opened while the pump ran."
    v = check(A03_Q, copied, SOURCES)
    assert v.supported and [c.n for c in v.citations] == [3]
    spec = Source(
        1,
        "manual/kr9-specifications#2",
        "kr9-specifications",
        "Refrigerant R-449A, factory charge 9.2 kg. Compressor oil is polyolester (POE), 1.9 litres.",
        "KR-9 technical specifications > Refrigerant circuit",
    )
    q = "How much refrigerant does the KR-9 hold?"
    assert not check(q, "The KR-9 holds 1.9 litres of refrigerant.", [spec]).supported  # 1.9 litres is the oil
    assert check(q, "The factory charge is 9.2 kg of R-449A refrigerant [1].", [spec]).supported
