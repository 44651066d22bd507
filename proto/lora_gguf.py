"""The LoRA adapter file contract: a GGUF file with `general.type = adapter`, `adapter.type = lora`.

Each adapted base tensor `<t>` has two halves, `<t>.lora_a` and `<t>.lora_b`; with the base
tensor's GGUF shape `[n0, n1]`, lora_a is `[n0, r]` and lora_b is `[r, n1]` for the rank `r`.
The orchestrator reads this to describe an upload in its manifest (architecture and the base
tensor shapes it fits); a node reads it again before llama.cpp loads the file, so a mismatch is
named (architecture, a tensor the base lacks, a shape or rank that does not fit, a cut file)
instead of only appearing in llama.cpp's log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf

Shape = tuple[int, ...]


class LoraFileError(ValueError):
    """Not a usable LoRA GGUF, or one that does not fit the base model; the message says why."""


def _string(reader: gguf.GGUFReader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def _reader(path: Path, what: str) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the gguf reader raises assorted errors on a cut or foreign file
        raise LoraFileError(f"{what} {path.name} is not a readable GGUF file (truncated?): {e}") from e


@dataclass(frozen=True)
class LoraAdapter:
    """What a LoRA GGUF says about itself: its architecture and, per base tensor, its halves' shapes."""

    file: str
    architecture: str
    halves: Mapping[str, tuple[Shape, Shape]]
    """Base tensor name → (lora_a shape, lora_b shape)."""

    @property
    def rank(self) -> int:
        return max(a[1] for a, _ in self.halves.values())

    def fits(self) -> dict[str, list[int]]:
        """Base tensor name → the base shape `[lora_a[0], lora_b[1]]` it fits (a manifest's `base_tensors`)."""
        return {name: [a[0], b[1]] for name, (a, b) in self.halves.items()}

    def check_fit(self, base_architecture: str, base_shapes: Mapping[str, Sequence[int]]) -> None:
        """LoraFileError naming the first mismatch with the base model, else None."""
        if self.architecture != base_architecture:
            raise LoraFileError(
                f"adapter {self.file} is for architecture {self.architecture!r}; "
                f"this node's model is {base_architecture!r}"
            )
        for name, (a, b) in self.halves.items():
            shape = base_shapes.get(name)
            if shape is None:
                raise LoraFileError(f"adapter tensor {name} has no counterpart in the base model")
            if len(shape) != 2 or a[0] != shape[0] or b[1] != shape[1]:
                raise LoraFileError(
                    f"adapter tensor {name}: lora_a {list(a)} x lora_b {list(b)} does not fit the base {list(shape)}"
                )


def read_lora(path: Path) -> LoraAdapter:
    """Read and check a LoRA GGUF's header and tensor list (not its data); LoraFileError if it is not one."""
    reader = _reader(path, "adapter")
    if _string(reader, "general.type") != "adapter" or _string(reader, "adapter.type") != "lora":
        raise LoraFileError(f"{path.name} is not a LoRA adapter (general.type must be 'adapter', adapter.type 'lora')")
    pairs: dict[str, dict[str, Shape]] = {}
    for t in reader.tensors:
        base_name, _, kind = t.name.rpartition(".lora_")
        if kind not in ("a", "b") or not base_name:
            raise LoraFileError(f"adapter tensor {t.name} is neither lora_a nor lora_b")
        pairs.setdefault(base_name, {})[kind] = tuple(int(x) for x in t.shape)
    if not pairs:
        raise LoraFileError(f"adapter {path.name} has no tensors")
    halves: dict[str, tuple[Shape, Shape]] = {}
    for base_name, ab in pairs.items():
        if set(ab) != {"a", "b"}:
            raise LoraFileError(f"adapter tensor {base_name} lacks its lora_a or lora_b half")
        a, b = ab["a"], ab["b"]
        if len(a) != 2 or len(b) != 2 or a[1] != b[0]:
            raise LoraFileError(f"adapter tensor {base_name}: lora_a {list(a)} and lora_b {list(b)} differ in rank")
        halves[base_name] = (a, b)
    return LoraAdapter(path.name, _string(reader, "general.architecture") or "", halves)


def base_tensor_shapes(model: Path) -> tuple[str, dict[str, Shape]]:
    """(architecture, tensor name → shape) of a base model GGUF."""
    reader = _reader(model, "model")
    arch = _string(reader, "general.architecture") or ""
    return arch, {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
