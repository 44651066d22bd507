"""Embeddings on the engine thread: one pooled context, created on first use."""

from __future__ import annotations

import math

from edgefleet.node.engine.commands import EmbedTask
from edgefleet.node.engine.llama_backend import DecodeContext, LoadedModel
from edgefleet.node.errors import EdgefleetError, EngineFailure


class Embedder:
    """Owns the embedding context (~100 MiB a node may never need, so made on first use)."""

    def __init__(self, model: LoadedModel, n_ctx: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.ctx: DecodeContext | None = None

    def run(self, task: EmbedTask, threads: int) -> None:
        """Answer one task through its future; llama.cpp's errors fail the task, not the engine."""
        if task.future.done():  # cancelled by the caller
            return
        try:
            if self.ctx is None:
                self.ctx = DecodeContext(self.model, self.n_ctx, self.n_ctx, 1, threads, embeddings=True)
            ctx = self.ctx
            ctx.set_threads(threads)  # embeddings follow the governor's choice
            vectors = []
            n_embd = self.model.meta.n_embd
            for tokens in task.tokens:
                ctx.clear()
                ctx.batch.clear()
                for i, tok in enumerate(tokens):
                    ctx.batch.add(tok, i, 0, True)
                ctx.decode()
                vec = ctx.embedding(0, n_embd)
                if task.normalize:
                    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
                    vec = [v / norm for v in vec]
                vectors.append(vec)
            task.future.set_result(vectors)
        except EdgefleetError as e:
            task.future.set_exception(e)
        except Exception as e:  # keep the engine alive whatever llama.cpp says about one text
            task.future.set_exception(EngineFailure(f"embedding failed: {e}"))

    def close(self) -> None:
        if self.ctx is not None:
            self.ctx.close()
            self.ctx = None
