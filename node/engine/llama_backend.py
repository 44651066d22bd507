"""Thin, typed wrappers over llama.cpp's low-level C API (through llama_cpp's ctypes bindings).

Only the engine thread may call decode/sample on a context: llama.cpp contexts are not
thread-safe, and with the OpenMP build, decodes from two OS threads slow every call down.
Tokenization reads only the vocabulary and may run on any thread.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from edgefleet.node.errors import EngineFailure, ModelError

log = logging.getLogger("edgefleet.llama")

# ggml_log_level: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continuation. Info is chatty: debug here.
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR, 5: logging.DEBUG}


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    msg = text.decode("utf-8", "replace").rstrip()
    if msg:
        log.log(_LEVELS.get(level, logging.DEBUG), msg)


_backend_ready = False


def init_backend() -> None:
    """Route llama.cpp's logs into logging and initialise its backends, once per process."""
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _backend_ready = True


@dataclass(frozen=True)
class ModelMeta:
    architecture: str
    description: str
    quantization: str
    n_params: int
    n_ctx_train: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    chat_template: str | None
    bos_text: str
    eos_text: str
    key_length: int = 0  # per-head K width from the GGUF header (`<arch>.attention.key_length`); 0: not given
    value_length: int = 0  # per-head V width (`<arch>.attention.value_length`); 0: not given

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """K and V cells of one token in every layer (f16 cache). The head widths are the header's
        key_length / value_length where it gives them (Gemma 3: 256 per head, while n_embd/n_head is
        160), else n_embd/n_head, as the orchestrator computes it for a manifest (proto/model_gguf.py)."""
        head_dim = self.n_embd // max(self.n_head, 1)
        k = self.key_length or head_dim
        v = self.value_length or head_dim
        return self.n_layer * (k + v) * self.n_head_kv * bytes_per_value


class LoadedModel:
    """The model weights (mmap'd) and vocabulary, shared by every context."""

    def __init__(self, path: Path, gpu_layers: int = 0) -> None:
        init_backend()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        params.use_mmap = True
        ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not ptr:
            raise ModelError(f"llama.cpp could not load {path}: not a valid GGUF model?")
        self.path = path
        self.ptr = ptr
        vocab = llama_cpp.llama_model_get_vocab(ptr)
        if not vocab:
            raise ModelError(f"{path} has no vocabulary")
        self.vocab = vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self._pieces: dict[int, bytes] = {}  # token → bytes, filled as tokens are first seen
        self._special_pieces: dict[int, bytes] = {}  # the same with special tokens as their text
        self._eog: dict[int, bool] = {}
        self.meta = self._read_meta()

    def _meta_str(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256 * 1024)
        n = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", "replace")

    def _read_meta(self) -> ModelMeta:
        buf = ctypes.create_string_buffer(512)
        llama_cpp.llama_model_desc(self.ptr, buf, len(buf))
        desc = buf.value.decode("utf-8", "replace")
        arch = self._meta_str("general.architecture") or desc.split(" ")[0]
        parts = desc.split(" ")
        quant = parts[-1] if len(parts) >= 3 else "unknown"
        bos = llama_cpp.llama_vocab_bos(self.vocab)
        eos = llama_cpp.llama_vocab_eos(self.vocab)
        return ModelMeta(
            architecture=arch,
            description=desc,
            quantization=quant,
            n_params=int(llama_cpp.llama_model_n_params(self.ptr)),
            n_ctx_train=int(llama_cpp.llama_model_n_ctx_train(self.ptr)),
            n_layer=int(llama_cpp.llama_model_n_layer(self.ptr)),
            n_embd=int(llama_cpp.llama_model_n_embd(self.ptr)),
            n_head=int(llama_cpp.llama_model_n_head(self.ptr)),
            n_head_kv=int(llama_cpp.llama_model_n_head_kv(self.ptr)),
            chat_template=self._meta_str("tokenizer.chat_template"),
            bos_text=self.token_text(bos) if bos >= 0 else "",
            eos_text=self.token_text(eos) if eos >= 0 else "",
            key_length=self._meta_int(f"{arch}.attention.key_length"),
            value_length=self._meta_int(f"{arch}.attention.value_length"),
        )

    def _meta_int(self, key: str) -> int:
        """A positive integer of the GGUF header, else 0 (absent or not a number)."""
        raw = self._meta_str(key)
        try:
            return max(int(raw), 0) if raw is not None else 0
        except ValueError:
            return 0

    def token_text(self, token: int) -> str:
        return self.token_to_piece(token, special=True).decode("utf-8", "replace")

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 16
        arr = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), arr, n_max, add_special, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            n_max = -n
            arr = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), arr, n_max, add_special, parse_special)
        return list(arr[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of a generated token (memoized: this runs once per token per step).

        `special`: a special token as its text (tool-call markup such as Qwen's `<tool_call>`);
        otherwise special tokens have no text.
        """
        pieces = self._special_pieces if special else self._pieces
        p = pieces.get(token)
        if p is None:
            p = pieces[token] = self.token_to_piece(token, special=special)
        return p

    def single_token(self, text: str) -> int | None:
        """The token id of `text` when the vocabulary has it as one (special) token, else None."""
        ids = self.tokenize(text, add_special=False, parse_special=True)
        return ids[0] if len(ids) == 1 else None

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def load_lora(self, path: Path) -> Any:
        """Load a LoRA adapter GGUF against this model; raises ModelError when llama.cpp refuses it."""
        ptr = llama_cpp.llama_adapter_lora_init(self.ptr, str(path).encode())
        if not ptr:
            raise ModelError(f"llama.cpp refused the adapter {path.name}: it does not fit {self.meta.description}")
        return ptr

    @staticmethod
    def free_lora(handle: Any) -> None:
        llama_cpp.llama_adapter_lora_free(handle)

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        return eog

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None


class Batch:
    """A reusable llama_batch of up to `capacity` tokens, one sequence id each."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Append one token; returns its index in the batch (for sampling its logits)."""
        i = self.n
        b = self.raw
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits
        self.n = i + 1
        return i

    def free(self) -> None:
        if self.raw is not None:
            llama_cpp.llama_batch_free(self.raw)
            self.raw = None


class DecodeContext:
    """A context with `n_seq` sequences, each with its own KV stream of n_ctx / n_seq cells.

    Not `kv_unified`: with one shared buffer, a sequence's attention runs over cells laid out
    differently when it is batched with others, and greedy output then differs from a solo
    run (measured: 2 of 4 prompts diverged within 24 tokens). Separate streams give the same
    tokens alone and batched, and each slot the full context the profile promises.
    """

    def __init__(
        self,
        model: LoadedModel,
        n_ctx: int,
        n_batch: int,
        n_seq: int,
        threads: int,
        embeddings: bool = False,
        kv_type: str = "f16",
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = threads
        params.n_threads_batch = threads
        params.kv_unified = False
        params.no_perf = True
        if embeddings:
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        self.kv_type = kv_type  # node/engine/kv_type.py; what the context got, after any fallback
        default_flash_attn = params.flash_attn_type
        if kv_type == "q8_0":  # llama.cpp quantizes the V cache only with flash attention on
            params.type_k = params.type_v = llama_cpp.GGML_TYPE_Q8_0
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        ptr = llama_cpp.llama_init_from_model(model.ptr, params)
        if not ptr and kv_type != "f16":
            log.warning(
                "llama.cpp refused a q8_0 KV cache (no flash attention for this model or backend?): f16 instead",
                extra={"kv_type": kv_type, "model": model.meta.description},
            )
            params.type_k = params.type_v = llama_cpp.GGML_TYPE_F16
            params.flash_attn_type = default_flash_attn
            self.kv_type = "f16"
            ptr = llama_cpp.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise ModelError(f"llama.cpp could not create a context of {n_ctx} tokens for {n_seq} sequences")
        self.ptr = ptr
        self.model = model
        self.n_ctx = int(llama_cpp.llama_n_ctx(ptr))
        self.mem = llama_cpp.llama_get_memory(ptr)
        self.batch = Batch(n_batch)

    def decode(self) -> None:
        self.batch.raw.n_tokens = self.batch.n
        rc = llama_cpp.llama_decode(self.ptr, self.batch.raw)
        if rc != 0:
            raise EngineFailure(f"llama_decode failed with code {rc} on a batch of {self.batch.n} tokens")

    def set_threads(self, n: int) -> None:
        """Compute threads for the next decodes (generation and prompt batches alike)."""
        llama_cpp.llama_set_n_threads(self.ptr, n, n)

    def set_lora(self, handle: Any, scale: float) -> None:
        """Apply one adapter to the next decodes, or none (handle None: the base model)."""
        if handle is None:
            rc = llama_cpp.llama_set_adapters_lora(self.ptr, None, 0, None)
        else:
            arr = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
            scales = (ctypes.c_float * 1)(scale)
            rc = llama_cpp.llama_set_adapters_lora(self.ptr, arr, 1, scales)
        if rc != 0:
            raise EngineFailure(f"llama.cpp could not set the adapter (code {rc})")

    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(llama_cpp.llama_memory_seq_rm(self.mem, seq_id, p0, p1))

    def embedding(self, seq_id: int, n_embd: int) -> list[float]:
        ptr = llama_cpp.llama_get_embeddings_seq(self.ptr, seq_id)
        if not ptr:
            raise EngineFailure("llama.cpp returned no pooled embedding")
        return list(ptr[:n_embd])

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self.mem, True)

    def close(self) -> None:
        self.batch.free()
        if self.ptr:
            llama_cpp.llama_free(self.ptr)
            self.ptr = None
