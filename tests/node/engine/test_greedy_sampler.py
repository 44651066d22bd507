"""Plain greedy sampling reads the argmax of the logits in place: the same tokens as llama.cpp's sampler.

Real model (smollm2-135m), one decode context; each step's token is asked of both the fast path and
llama.cpp's own greedy sampler chain, over a whole greedy answer, with batched logits at several indices.
"""

from __future__ import annotations

import llama_cpp
import pytest

from edgefleet.node.engine.llama_backend import DecodeContext, LoadedModel
from edgefleet.node.engine.sampler import Sampler
from edgefleet.node.model_catalog import resolve_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return LoadedModel(resolve_model("smollm2-135m-instruct", tmp_path_factory.mktemp("models")).path)


def chain_greedy(ctx: DecodeContext, idx: int) -> int:
    """llama.cpp's greedy sampler, unabridged."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    try:
        return int(llama_cpp.llama_sampler_sample(chain, ctx.ptr, idx))
    finally:
        llama_cpp.llama_sampler_free(chain)


def test_plain_greedy_picks_llama_cpps_token_at_every_step_and_index(model: LoadedModel) -> None:
    ctx = DecodeContext(model, 512, 64, 1, 1)
    fast = Sampler(model, 0.0, 40, 0.95, 1)
    banned = Sampler(model, 0.0, 40, 0.95, 1, banned_tokens=(0,))  # not plain: llama.cpp's chain samples
    try:
        assert fast._argmax_of == model.n_vocab and not banned._argmax_of
        tokens = model.tokenize("The pump vibration is 9 mm/s. The likely cause is")
        ctx.batch.clear()
        for i, t in enumerate(tokens):
            ctx.batch.add(t, i, 0, True)  # logits everywhere: indices other than the last are checked too
        ctx.decode()
        for idx in range(len(tokens)):
            assert fast.sample(ctx, idx) == chain_greedy(ctx, idx)
        pos = len(tokens)
        for _ in range(24):  # a greedy answer, token by token
            token = fast.sample(ctx, ctx.batch.n - 1)
            assert token == chain_greedy(ctx, ctx.batch.n - 1) == banned.sample(ctx, ctx.batch.n - 1)
            ctx.batch.clear()
            ctx.batch.add(token, pos, 0, True)
            ctx.decode()
            pos += 1
    finally:
        fast.free()
        banned.free()
        ctx.close()
