"""Writes a synthetic LoRA adapter GGUF for a base model: deterministic from a seed, of a chosen rank.

    python -m tools.make_lora BASE.gguf OUT.gguf [--rank 16] [--seed 1] [--alpha 16] [--std 0.05]

For every block it writes `lora_a`/`lora_b` tensors for `attn_q` and `attn_v`, shaped from the
base model's own tensors, and the metadata llama.cpp checks (`general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha`, the base architecture). Used by the tests and the
benchmark: a real adapter changes the greedy output; these change it measurably too.
Tensors are f16, as llama.cpp's own LoRA converter writes them: with f32 LoRA tensors the
greedy output of a sequence decoded in a batch differed from its solo run (measured here),
since llama.cpp multiplies f32 matrices with another kernel once a batch has several rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np

TARGETS = ("attn_q", "attn_v")


def base_shapes(base: Path, targets: tuple[str, ...] = TARGETS) -> tuple[str, dict[str, tuple[int, int]]]:
    """The architecture and, per target tensor name, its (n_in, n_out) in ggml order."""
    reader = gguf.GGUFReader(str(base))
    field = reader.fields["general.architecture"]
    arch = bytes(field.parts[field.data[0]]).decode()
    shapes = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in targets and parts[3] == "weight":
            shapes[t.name.removesuffix(".weight")] = (int(t.shape[0]), int(t.shape[1]))
    if not shapes:
        raise ValueError(f"{base} has none of the tensors {targets}")
    return arch, shapes


def write_lora(
    base: Path,
    out: Path,
    rank: int = 16,
    seed: int = 1,
    alpha: float = 16.0,
    std: float = 0.05,
    architecture: str | None = None,
    dtype: type = np.float16,
) -> Path:
    """Write the adapter; `architecture` overrides the base's (to make a mismatched one on purpose)."""
    arch, shapes = base_shapes(base)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(out), architecture or arch)
    w.add_string("general.type", "adapter")
    w.add_string("general.name", f"synthetic-lora-r{rank}-s{seed}")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(alpha))
    for name in sorted(shapes):
        n_in, n_out = shapes[name]
        a = rng.normal(0.0, std, size=(rank, n_in)).astype(dtype)  # ggml ne = [n_in, rank]
        b = rng.normal(0.0, std, size=(n_out, rank)).astype(dtype)  # ggml ne = [rank, n_out]
        w.add_tensor(f"{name}.weight.lora_a", a)
        w.add_tensor(f"{name}.weight.lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("base", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--std", type=float, default=0.05)
    p.add_argument("--architecture", help="write another architecture (a deliberately mismatched adapter)")
    a = p.parse_args(argv)
    out = write_lora(a.base, a.out, a.rank, a.seed, a.alpha, a.std, a.architecture)
    sys.stdout.write(f"wrote {out} ({out.stat().st_size} bytes)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
