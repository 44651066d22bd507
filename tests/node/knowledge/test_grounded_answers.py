"""Cite or abstain through a real node's Generate: a knowledge answer names its sources, and a question
the documents cannot answer gets "The documents do not cover this." without the model.

The corpus is the project's own (bench/rag_corpus); the model the default small one, greedy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.node.knowledge.grounding import ABSTAIN_TEXT
from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import NodeProcess, collect

CORPUS = Path(__file__).resolve().parents[3] / "bench" / "rag_corpus"
DOCS = ("tc5-alarm-codes", "kr9-specifications", "maint-glycol-pump", "tc5-modbus")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path_factory.mktemp("grounded"), node_id="grounded", env={"EDGEFLEET_RESPONSE_CACHE": "true"})
    try:
        n.wait_serving()
        docs = [pb.Document(id=d, text=(CORPUS / f"{d}.md").read_text()) for d in DOCS]
        n.stub.Ingest(pb.IngestRequest(collection="manual", version="1", documents=docs), timeout=60)
        yield n
    finally:
        n.stop()


def ask(node: NodeProcess, question: str) -> tuple[str, pb.GenerateChunk]:
    req = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content=question)],
        retrieval=pb.Retrieval(collection="manual"),
        max_tokens=32,
        temperature=0,
    )
    text, final, _ = collect(node.stub.Generate(req, timeout=120))
    return text, final


def test_the_a03_answer_says_no_glycol_flow_and_cites_the_alarm_section(node: NodeProcess) -> None:
    text, final = ask(node, "What does alarm A03 on the TC-5 mean?")
    assert "no glycol flow" in text.lower(), text
    assert "manual/tc5-alarm-codes#3" in final.source_chunk_ids and not final.abstained
    cited = {c.chunk_id: c for c in final.citations}
    assert "manual/tc5-alarm-codes#3" in cited, (text, final.citations)
    c = cited["manual/tc5-alarm-codes#3"]
    assert c.document_id == "tc5-alarm-codes" and c.page == 0 and c.quote in (CORPUS / "tc5-alarm-codes.md").read_text()
    if final.unsupported:  # the model's own words were not in the sources: the node quoted the source
        assert f"[{c.n}]" in text and c.quote in text
    again, cached = ask(node, "What does alarm A03 on the TC-5 mean?")  # the response cache keeps the grounding
    assert cached.cached and again == text and list(cached.citations) == list(final.citations)
    assert (cached.abstained, cached.unsupported) == (final.abstained, final.unsupported)


def test_a_question_the_documents_cannot_answer_abstains_without_the_model(node: NodeProcess) -> None:
    text, final = ask(node, "What does alarm A12 on the TC-5 mean?")
    assert text == ABSTAIN_TEXT and final.abstained and not final.citations
    assert final.usage.completion_tokens == 0 and final.finish_reason == pb.FINISH_REASON_STOP
    assert list(final.source_chunk_ids)  # what was retrieved is still named
