"""A fixed system prompt's KV cells survive a node restart (prefix store, EDGEFLEET_PREFIX_STORE_MB):
the first answer after the restart reads only the question, and says what it said before."""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import NodeProcess, collect

SYSTEM = (
    "You watch the pumps of a water treatment plant. Pumps P1 to P4 feed the sand filters. A vibration above "
    "7.1 mm/s RMS or a bearing temperature above 80 C is a fault; name the pump, the reading and what to check. "
) * 3


def ask(node: NodeProcess, question: str) -> tuple[str, pb.Usage]:
    req = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="system", content=SYSTEM), pb.ChatMessage(role="user", content=question)],
        max_tokens=10,
        temperature=0,
    )
    text, last, _ = collect(node.stub.Generate(req, timeout=120))
    return text, last.usage


def test_the_first_answer_after_a_restart_reads_only_the_question(start_node: Callable[..., NodeProcess]) -> None:
    node = start_node()
    before, u = ask(node, "P3 vibration is 8.2 mm/s RMS.")
    assert u.cached_prompt_tokens == 0 and u.prompt_tokens > 100
    node.stop()
    again = node.restarted()
    try:
        again.wait_serving()
        after, u2 = ask(again, "P3 vibration is 8.2 mm/s RMS.")
        assert after == before, "greedy text with the restored prefix is the text without"
        assert u2.cached_prompt_tokens > 100, "the system prompt came from the prefix store"
        assert u2.prompt_tokens - u2.cached_prompt_tokens < 30
        assert "prefix KV saved" in node.log() and "prefix store opened" in again.log()
    finally:
        again.stop()
