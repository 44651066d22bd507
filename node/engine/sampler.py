"""llama.cpp's sampler chain for one sequence (through llama_cpp's ctypes bindings), as the engine samples.

Only the engine thread samples: a sampler reads its context's logits (llama_backend.py's module doc).
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import numpy as np

from edgefleet.node.engine.llama_backend import DecodeContext, LoadedModel
from edgefleet.node.engine.types import SamplingParams
from edgefleet.node.errors import EngineFailure


class Sampler:
    """llama.cpp's sampler chain for one sequence: banned tokens, grammar, top-k, top-p, temperature, seed.

    A lazy grammar (tool calls with tool_choice auto) lets text through until a trigger token is
    sampled or the text matches a trigger pattern, and constrains every token from there on.
    """

    def __init__(
        self,
        model: LoadedModel,
        temperature: float,
        top_k: int,
        top_p: float,
        seed: int,
        grammar: str | None = None,
        *,
        lazy: bool = False,
        trigger_tokens: tuple[int, ...] = (),
        trigger_patterns: tuple[str, ...] = (),
        banned_tokens: tuple[int, ...] = (),
    ) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.ptr: Any = chain
        # Plain greedy (no grammar, no banned tokens): the argmax of the logits, read in place. llama.cpp's
        # sampler copies all n_vocab logits into a candidate array first, which costs more than the argmax
        # (bench/c1_profile.py); it is the same token (the first of equal maxima, as llama.cpp's greedy).
        self._argmax_of = model.n_vocab if temperature <= 0.0 and not grammar and not banned_tokens else 0
        if banned_tokens:
            bias = (llama_cpp.llama_logit_bias * len(banned_tokens))(
                *(llama_cpp.llama_logit_bias(token, float("-inf")) for token in banned_tokens)
            )
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_logit_bias(model.n_vocab, len(banned_tokens), bias)
            )
        if grammar:
            g = self._grammar(model, grammar, lazy, trigger_tokens, trigger_patterns)
            if not g:
                llama_cpp.llama_sampler_free(chain)
                self.ptr = None
                raise EngineFailure("llama.cpp rejected the grammar built from the JSON schema")
            llama_cpp.llama_sampler_chain_add(chain, g)
        if temperature <= 0.0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if top_k > 0:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
            if 0.0 < top_p < 1.0:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    @classmethod
    def for_params(cls, model: LoadedModel, params: SamplingParams) -> Sampler:
        return cls(
            model,
            params.temperature,
            params.top_k,
            params.top_p,
            params.seed,
            params.grammar,
            lazy=params.grammar_lazy,
            trigger_tokens=params.trigger_tokens,
            trigger_patterns=params.trigger_patterns,
            banned_tokens=params.banned_tokens,
        )

    @staticmethod
    def _grammar(
        model: LoadedModel, grammar: str, lazy: bool, tokens: tuple[int, ...], patterns: tuple[str, ...]
    ) -> Any:
        if not lazy:
            return llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
        words = (ctypes.c_char_p * max(len(patterns), 1))(*[p.encode() for p in patterns])
        ids = (llama_cpp.llama_token * max(len(tokens), 1))(*tokens)
        return llama_cpp.llama_sampler_init_grammar_lazy_patterns(
            model.vocab, grammar.encode(), b"root", words, len(patterns), ids, len(tokens)
        )

    def sample(self, ctx: DecodeContext, batch_index: int) -> int:
        """Sample from the logits at batch_index; the chain accepts the token itself."""
        if self._argmax_of:
            logits = llama_cpp.llama_get_logits_ith(ctx.ptr, batch_index)
            if logits:
                return int(np.ctypeslib.as_array(logits, shape=(self._argmax_of,)).argmax())
        return int(llama_cpp.llama_sampler_sample(self.ptr, ctx.ptr, batch_index))

    def free(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None
