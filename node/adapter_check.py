"""Checks that a LoRA adapter GGUF fits the base model before llama.cpp is asked to load it.

The file contract and the checks are `edgefleet.proto.lora_gguf` (the orchestrator reads the
same file the same way); here its refusals become the node's InvalidRequest, so the caller and
the errors topic get a reason a person can act on.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.node.errors import InvalidRequest
from edgefleet.proto import lora_gguf


def base_tensor_shapes(base: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    return lora_gguf.base_tensor_shapes(base)


def check_adapter(path: Path, base_arch: str, base_shapes: dict[str, tuple[int, ...]]) -> int:
    """Raise InvalidRequest naming the mismatch; returns the adapter's rank."""
    try:
        adapter = lora_gguf.read_lora(path)
        adapter.check_fit(base_arch, base_shapes)
    except lora_gguf.LoraFileError as e:
        raise InvalidRequest(str(e)) from e
    return adapter.rank
