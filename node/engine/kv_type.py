"""The KV cache's cell type: f16 (llama.cpp's default) or q8_0, and what a token of it costs.

q8_0 stores 32 values as 32 int8 and one f16 scale: 34 bytes where f16 takes 64, so a KV cache
of q8_0 is 17/32 of the f16 one (-47 %). llama.cpp quantizes the V cache only with flash attention
on; where a model or backend cannot run it, the node falls back to f16 and says so
(node/engine/llama_backend.py `DecodeContext`). q4_0 is not offered: it hurts tool calls.
"""

from __future__ import annotations

from typing import Literal, get_args

KvType = Literal["f16", "q8_0"]
KV_TYPES: tuple[str, ...] = get_args(KvType)
DEFAULT_KV_TYPE: KvType = "f16"

# bytes of one block of 32 values
_BLOCK_BYTES = {"f16": 64, "q8_0": 34}


def kv_bytes_per_token(f16_bytes_per_token: int, kv_type: str) -> int:
    """The bytes of one token's K and V cells in `kv_type`, from the f16 figure (a GGUF header's or
    a manifest's `kv_bytes_per_token`); rows are whole 32-value blocks in every supported model."""
    try:
        block = _BLOCK_BYTES[kv_type]
    except KeyError:
        raise ValueError(f"kv_type {kv_type!r} is not one of {', '.join(KV_TYPES)}") from None
    return f16_bytes_per_token * block // _BLOCK_BYTES["f16"]
