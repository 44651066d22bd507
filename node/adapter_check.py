"""Checks that a LoRA adapter GGUF fits the base model before llama.cpp is asked to load it.

llama.cpp refuses a mismatched adapter too, but with a message only in its log; this check
names the problem (architecture, a tensor the base lacks, a shape or rank that does not fit,
a truncated file) so the caller and the errors topic get a reason a person can act on.
"""

from __future__ import annotations

from pathlib import Path

import gguf

from edgefleet.node.errors import InvalidRequest


def _string(reader: gguf.GGUFReader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def base_tensor_shapes(base: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    reader = gguf.GGUFReader(str(base))
    arch = _string(reader, "general.architecture") or ""
    return arch, {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}


def check_adapter(path: Path, base_arch: str, base_shapes: dict[str, tuple[int, ...]]) -> int:
    """Raise InvalidRequest naming the mismatch; returns the adapter's rank."""
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the gguf reader raises assorted errors on a cut file
        raise InvalidRequest(f"adapter {path.name} is not a readable GGUF file (truncated?): {e}") from e
    if _string(reader, "general.type") != "adapter" or _string(reader, "adapter.type") != "lora":
        raise InvalidRequest(f"{path.name} is not a LoRA adapter (general.type must be 'adapter', adapter.type 'lora')")
    arch = _string(reader, "general.architecture")
    if arch != base_arch:
        raise InvalidRequest(f"adapter {path.name} is for architecture {arch!r}; this node's model is {base_arch!r}")
    ranks = set()
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in reader.tensors:
        base_name, _, kind = t.name.rpartition(".lora_")
        if kind not in ("a", "b"):
            raise InvalidRequest(f"adapter tensor {t.name} is neither lora_a nor lora_b")
        pairs.setdefault(base_name, {})[kind] = tuple(int(x) for x in t.shape)
    if not pairs:
        raise InvalidRequest(f"adapter {path.name} has no tensors")
    for base_name, ab in pairs.items():
        if set(ab) != {"a", "b"}:
            raise InvalidRequest(f"adapter tensor {base_name} lacks its lora_a or lora_b half")
        shape = base_shapes.get(base_name)
        if shape is None:
            raise InvalidRequest(f"adapter tensor {base_name} has no counterpart in the base model")
        a, b = ab["a"], ab["b"]
        if len(shape) != 2 or a[0] != shape[0] or b[1] != shape[1] or a[1] != b[0]:
            raise InvalidRequest(
                f"adapter tensor {base_name}: lora_a {list(a)} x lora_b {list(b)} does not fit the base {list(shape)}"
            )
        ranks.add(a[1])
    return max(ranks)
