"""The base-model file contract: a GGUF model (not a LoRA adapter) and what a node needs to know of it
before it downloads a byte: its architecture and the KV-cache bytes one token takes.

The orchestrator reads the header when a model is pushed and writes `model_architecture` and
`kv_bytes_per_token` into the signed manifest (proto/artifacts.py); a node multiplies the latter by
its profile's context and slots (node/profiles.py `estimate_memory_bytes`) and refuses a model that
does not fit its budget before asking for any chunk. The CLI reads it too, before it uploads.

Only the header is read, in one pass (the vocabulary's strings are skipped, not decoded), and the
tensor table is checked against the file's size: a cut file is refused here, not when a node loads
it. A 500 MB model costs what a small one does (milliseconds).

KV bytes per token (f16 cache: 2 bytes a value) = n_layer x n_head_kv x (key_length + value_length) x 2,
where key_length and value_length are the header's `<arch>.attention.key_length` / `value_length`
and default to n_embd / n_head: with the defaults this is n_layer*2*(n_embd/n_head)*n_head_kv*2.
A per-layer `head_count_kv` (an array) is summed over the layers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import gguf

KV_BYTES_PER_VALUE = 2  # f16 K and V cache
GGUF_MAGIC = b"GGUF"
MAX_STRING = 1 << 24  # no key or value string of a sane header is longer
MAX_COUNT = 1 << 32
MAX_TENSORS = 1 << 20
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32

# GGUF value types → struct format of a scalar (8: string, 9: array)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_INTEGER = {0, 1, 2, 3, 4, 5, 10, 11}


class ModelFileError(ValueError):
    """Not a usable GGUF base model; the message says why."""


@dataclass(frozen=True)
class ModelHeader:
    """What a GGUF base model says about itself (from its header only)."""

    file: str
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int  # per layer (the largest where the header gives one per layer)
    key_length: int  # per head
    value_length: int
    kv_bytes_per_token: int
    tensors: int
    name: str = ""  # general.name, where the file names itself
    file_type: int = -1  # general.file_type (the quantization), -1 unknown


Value = int | float | bool | str | list[int] | None  # arrays: integers kept, others as None


class _Header:
    """A sequential reader of one GGUF header; ModelFileError on a short read."""

    def __init__(self, f: BinaryIO, name: str) -> None:
        self.f, self.name = f, name

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ModelFileError(f"{self.name} ends inside its GGUF header (truncated?)")
        return data

    def scalar(self, t: int) -> int | float | bool:
        fmt = _SCALAR[t]
        value: int | float | bool = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def u32(self) -> int:
        return int(self.scalar(4))

    def u64(self) -> int:
        return int(self.scalar(10))

    def string(self, keep: bool = True) -> str:
        n = self.u64()
        if n > MAX_STRING:
            raise ModelFileError(f"{self.name}: a header string of {n} bytes (not a GGUF model?)")
        if not keep:
            self.f.seek(n, 1)
            return ""
        return self.take(n).decode("utf-8", "replace")

    def value(self, t: int) -> Value:
        if t in _SCALAR:
            return self.scalar(t)
        if t == _STRING:
            return self.string()
        if t != _ARRAY:
            raise ModelFileError(f"{self.name}: unknown GGUF value type {t} (not a GGUF model?)")
        item, count = self.u32(), self.u64()
        if count > MAX_COUNT:
            raise ModelFileError(f"{self.name}: a header array of {count} items (not a GGUF model?)")
        if item == _STRING:  # the vocabulary: skipped, never decoded
            for _ in range(count):
                self.string(keep=False)
            return None
        if item in _SCALAR:
            size = struct.calcsize(_SCALAR[item])
            if item not in _INTEGER:
                self.f.seek(size * count, 1)
                return None
            data = self.take(size * count)
            return [int(v) for (v,) in struct.iter_unpack(_SCALAR[item], data)]
        raise ModelFileError(f"{self.name}: an array of GGUF value type {item} (not a GGUF model?)")


def _tensor_bytes(name: str, dims: list[int], ggml_type: int, file: str) -> int:
    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError) as e:
        raise ModelFileError(f"{file}: tensor {name} has unknown ggml type {ggml_type}") from e
    elements = 1
    for d in dims:
        elements *= d
    return elements // block * size


def read_header(path: Path) -> tuple[dict[str, Value], int]:
    """(key → value, tensor count) of a GGUF file, after checking that the tensor data the header
    lists lies within the file; ModelFileError when it is no GGUF file, or a cut one."""
    name = path.name
    try:
        f = path.open("rb")
    except OSError as e:
        raise ModelFileError(f"cannot read {name}: {e.strerror}") from e
    with f:
        h = _Header(f, name)
        if f.read(4) != GGUF_MAGIC:
            raise ModelFileError(f"{name} is not a readable GGUF file (no GGUF magic)")
        version = h.u32()
        if version not in (2, 3):
            raise ModelFileError(f"{name} is not a readable GGUF file (GGUF version {version}; 2 and 3 are read)")
        n_tensors, n_kv = h.u64(), h.u64()
        if n_tensors > MAX_TENSORS or n_kv > MAX_TENSORS:
            raise ModelFileError(f"{name} is not a readable GGUF file ({n_tensors} tensors, {n_kv} keys)")
        fields: dict[str, Value] = {}
        for _ in range(n_kv):
            key = h.string()
            fields[key] = h.value(h.u32())
        end = 0
        for _ in range(n_tensors):
            tname = h.string()
            n_dims = h.u32()
            if n_dims > MAX_DIMS:
                raise ModelFileError(f"{name}: tensor {tname} has {n_dims} dimensions")
            dims = [h.u64() for _ in range(n_dims)]
            ggml_type, offset = h.u32(), h.u64()
            end = max(end, offset + _tensor_bytes(tname, dims, ggml_type, name))
        alignment = fields.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise ModelFileError(f"{name}: general.alignment {alignment!r} is not a positive number")
        data_start = -(-f.tell() // alignment) * alignment
        size = path.stat().st_size
    if data_start + end > size:
        raise ModelFileError(
            f"{name} is {size} bytes but its tensors need {data_start + end}: the file is cut short (truncated?)"
        )
    return fields, n_tensors


def _int(fields: dict[str, Value], key: str, file: str) -> int:
    v = fields.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ModelFileError(f"model {file} lacks a positive {key} in its GGUF header (not a complete model?)")
    return v


def read_model(path: Path) -> ModelHeader:
    """Read and check a GGUF base model's header; ModelFileError when it is not one (a LoRA adapter,
    another file type, a truncated file, a header without the attention sizes)."""
    fields, n_tensors = read_header(path)
    file = path.name
    general_type = fields.get("general.type")
    if general_type == "adapter" or "adapter.type" in fields:
        what = "a LoRA adapter" if fields.get("adapter.type") == "lora" else "an adapter"
        raise ModelFileError(
            f"{file} is {what} (general.type 'adapter'), not a base model: push it with `edgefleet fleet push-adapter`"
        )
    if general_type not in (None, "model"):
        raise ModelFileError(f"{file} is a GGUF of general.type {general_type!r}, not a model")
    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelFileError(f"{file} names no general.architecture: not a GGUF model")
    if not n_tensors:
        raise ModelFileError(f"model {file} has no tensors")
    n_layer = _int(fields, f"{arch}.block_count", file)
    n_embd = _int(fields, f"{arch}.embedding_length", file)
    n_head = _int(fields, f"{arch}.attention.head_count", file)
    raw_kv = fields.get(f"{arch}.attention.head_count_kv", n_head)
    kv_heads = raw_kv if isinstance(raw_kv, list) else [raw_kv] if isinstance(raw_kv, int) else []
    if len(kv_heads) not in (1, n_layer) or any(h < 0 for h in kv_heads):
        raise ModelFileError(
            f"model {file}: {arch}.attention.head_count_kv has {len(kv_heads)} values for {n_layer} layers"
        )
    per_layer = kv_heads * n_layer if len(kv_heads) == 1 else kv_heads
    key_length = fields.get(f"{arch}.attention.key_length", n_embd // n_head)
    value_length = fields.get(f"{arch}.attention.value_length", n_embd // n_head)
    if not isinstance(key_length, int) or not isinstance(value_length, int):
        raise ModelFileError(f"model {file}: {arch}.attention.key_length / value_length are not numbers")
    kv = sum(per_layer) * (key_length + value_length) * KV_BYTES_PER_VALUE
    if kv <= 0:
        raise ModelFileError(f"model {file}: its header gives no KV cache size (head_count_kv 0 in every layer)")
    file_type = fields.get("general.file_type")
    model_name = fields.get("general.name")
    return ModelHeader(
        file=file,
        architecture=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=max(per_layer),
        key_length=key_length,
        value_length=value_length,
        kv_bytes_per_token=kv,
        tensors=n_tensors,
        name=model_name if isinstance(model_name, str) else "",
        file_type=file_type if isinstance(file_type, int) else -1,
    )
