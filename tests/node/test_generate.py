"""Generate over real gRPC against a real node process and the bundled model."""

from __future__ import annotations

import json
import threading

import grpc
import jsonschema
import pytest

from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import NodeProcess, collect, wait_for

COUNTING = pb.GenerateRequest(prompt="Count: 1, 2, 3, 4, 5, 6, 7,", max_tokens=1500, temperature=0)
SENSOR_Q = "Sensor pump-3 reports vibration 7.1 mm/s RMS. Is that a bearing fault? Answer in one sentence."


def chat(content: str, **kw: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=content)], **kw)


def test_streams_text_in_chunks_and_ends_with_usage(stub) -> None:
    text, last, n = collect(stub.Generate(chat(SENSOR_Q, max_tokens=16, temperature=0)))
    assert n >= 4, "tokens should arrive as separate chunks"
    assert text.strip()
    assert last.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    u = last.usage
    assert u.prompt_tokens > 10
    assert 1 <= u.completion_tokens <= 16
    assert u.time_to_first_token_ms > 0
    assert u.total_ms >= u.time_to_first_token_ms


def test_max_tokens_gives_finish_reason_length(stub) -> None:
    _, last, _ = collect(stub.Generate(pb.GenerateRequest(prompt="Once upon a time", max_tokens=5, temperature=0)))
    assert last.finish_reason == pb.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 5


def test_messages_are_rendered_with_the_models_chat_template(stub) -> None:
    """SmolLM2's template is ChatML with a default system prompt: the same text as a raw prompt
    must give the same prompt tokens and the same greedy answer."""
    raw = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{SENSOR_Q}<|im_end|>\n<|im_start|>assistant\n"
    )
    via_chat, last_chat, _ = collect(stub.Generate(chat(SENSOR_Q, max_tokens=12, temperature=0)))
    # A raw prompt does not parse special tokens, so the markers would be plain text: different tokens.
    _, last_raw, _ = collect(stub.Generate(pb.GenerateRequest(prompt=raw, max_tokens=12, temperature=0)))
    assert last_raw.usage.prompt_tokens > last_chat.usage.prompt_tokens
    with_system, _, _ = collect(
        stub.Generate(
            pb.GenerateRequest(
                messages=[
                    pb.ChatMessage(
                        role="system", content="You are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    ),
                    pb.ChatMessage(role="user", content=SENSOR_Q),
                ],
                max_tokens=12,
                temperature=0,
            )
        )
    )
    assert via_chat == with_system, "the template's default system prompt is applied"


def test_json_schema_output_parses_and_validates(stub) -> None:
    schema = {
        "type": "object",
        "properties": {
            "fault": {"type": "boolean"},
            "severity": {"type": "string", "enum": ["low", "medium", "high"]},
        },
        "required": ["fault", "severity"],
        "additionalProperties": False,
    }
    text, last, _ = collect(
        stub.Generate(chat(SENSOR_Q + " Answer as JSON.", max_tokens=60, temperature=0, json_schema=json.dumps(schema)))
    )
    assert last.finish_reason == pb.FINISH_REASON_STOP
    jsonschema.validate(json.loads(text), schema)


def test_stop_string_ends_generation_and_is_not_returned(stub) -> None:
    req = dict(prompt="The numbers from one to twenty: one, two, three,", max_tokens=40, temperature=0)
    full, _, _ = collect(stub.Generate(pb.GenerateRequest(**req)))
    assert " six" in full, full
    text, last, _ = collect(stub.Generate(pb.GenerateRequest(**req, stop=[" six"])))
    assert text == full[: full.index(" six")]
    assert last.finish_reason == pb.FINISH_REASON_STOP


def test_four_concurrent_greedy_requests_equal_their_solo_outputs(start_node) -> None:
    """Batching does not change greedy output. On a node of its own with the prefix cache off: a
    prefix reused from a slot was computed in another batch, and (as llama-server's docs say of its
    cache_prompt) logits are not bit-identical across batch sizes, so which earlier request left
    which prefix in which slot could flip a near-tie token and hide what this test is about."""
    stub = pb_grpc.InferenceStub(start_node(env={"EDGEFLEET_PREFIX_CACHE": "0"}).open_channel())
    prompts = [
        "Sensor boiler-1 reads 97 C. Is it overheating?",
        "List three causes of motor vibration.",
        "Translate 'pump failure' to French.",
        "What does a pressure drop in a pipe indicate?",
    ]
    solo = [collect(stub.Generate(chat(p, max_tokens=24, temperature=0)))[0] for p in prompts]
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = collect(stub.Generate(chat(prompts[i], max_tokens=24, temperature=0)))[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results[i] for i in range(len(prompts))] == solo


def test_seeded_sampling_is_reproducible(stub) -> None:
    req = chat("Name a colour.", max_tokens=12, temperature=1.0, seed=1234)
    assert collect(stub.Generate(req))[0] == collect(stub.Generate(req))[0]


def test_client_cancel_frees_the_slot(node: NodeProcess) -> None:
    stream = node.stub.Generate(COUNTING)
    next(stream)
    next(stream)
    assert node.info().slots_busy >= 1
    stream.cancel()
    assert wait_for(lambda: node.info().slots_busy == 0, timeout=3), "slot still busy after cancel"
    assert node.info().queue_depth == 0


def test_deadline_frees_the_slot(node: NodeProcess) -> None:
    with pytest.raises(grpc.RpcError) as err:
        collect(node.stub.Generate(COUNTING, timeout=0.5))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for(lambda: node.info().slots_busy == 0, timeout=3), "slot still busy after the deadline"


def test_request_id_is_echoed_or_generated(stub) -> None:
    stream = stub.Generate(chat("Hi", max_tokens=2), metadata=(("x-request-id", "abc-123"),))
    assert dict(stream.initial_metadata())["x-request-id"] == "abc-123"
    _, last, _ = collect(stream)
    assert last.request_id == "abc-123"
    _, call = stub.GetNodeInfo.with_call(pb.GetNodeInfoRequest())
    generated = dict(call.initial_metadata())["x-request-id"]
    assert len(generated) >= 16


def test_initial_metadata_tells_the_prompt_size_before_the_first_token(stub) -> None:
    """A client can show that a long prompt is being read before the answer streams."""
    long_prompt = "The pump log. " * 200
    call = stub.Generate(pb.GenerateRequest(prompt=long_prompt, max_tokens=2, temperature=0))
    metadata = dict(call.initial_metadata())
    prompt_tokens = int(metadata["x-edgefleet-prompt-tokens"])
    _, last, _ = collect(call)
    assert prompt_tokens == last.usage.prompt_tokens and prompt_tokens > 600


def test_the_final_chunk_names_the_node(node: NodeProcess) -> None:
    _, last, _ = collect(node.stub.Generate(pb.GenerateRequest(prompt="Hi", max_tokens=2)))
    assert last.node_id == node.node_id
