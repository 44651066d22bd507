"""The LoRA GGUF contract on small real GGUF files written with the gguf package."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from edgefleet.proto.lora_gguf import LoraFileError, base_tensor_shapes, read_lora

N_IN, N_OUT = 16, 24  # GGUF shape of the base tensors: [N_IN, N_OUT]


def _base(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    for name in ("blk.0.attn_q.weight", "blk.0.attn_v.weight"):
        w.add_tensor(name, np.zeros((N_OUT, N_IN), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _lora(
    path: Path,
    tensors: dict[str, tuple[int, int]],
    arch: str = "llama",
    general_type: str = "adapter",
) -> Path:
    """`tensors`: name → numpy shape (rows, cols); GGUF reports it reversed."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("general.type", general_type)
    w.add_string("adapter.type", "lora")
    for name, shape in tensors.items():
        w.add_tensor(name, np.zeros(shape, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _good(rank: int = 4) -> dict[str, tuple[int, int]]:
    out = {}
    for t in ("blk.0.attn_q.weight", "blk.0.attn_v.weight"):
        out[f"{t}.lora_a"] = (rank, N_IN)  # GGUF [N_IN, rank]
        out[f"{t}.lora_b"] = (N_OUT, rank)  # GGUF [rank, N_OUT]
    return out


def test_a_lora_describes_its_architecture_rank_and_the_shapes_it_fits(tmp_path: Path) -> None:
    arch, shapes = base_tensor_shapes(_base(tmp_path / "base.gguf"))
    adapter = read_lora(_lora(tmp_path / "a.gguf", _good(rank=4)))
    assert adapter.architecture == arch == "llama"
    assert adapter.rank == 4
    assert adapter.fits() == {"blk.0.attn_q.weight": [N_IN, N_OUT], "blk.0.attn_v.weight": [N_IN, N_OUT]}
    assert {n: list(s) for n, s in shapes.items()} == adapter.fits()
    adapter.check_fit(arch, shapes)


def test_a_lora_for_another_model_is_refused_with_the_reason(tmp_path: Path) -> None:
    arch, shapes = base_tensor_shapes(_base(tmp_path / "base.gguf"))
    with pytest.raises(LoraFileError, match="architecture 'qwen2'; this node's model is 'llama'"):
        read_lora(_lora(tmp_path / "q.gguf", _good(), arch="qwen2")).check_fit(arch, shapes)
    other = {"blk.9.ffn_up.weight.lora_a": (4, N_IN), "blk.9.ffn_up.weight.lora_b": (N_OUT, 4)}
    with pytest.raises(LoraFileError, match=r"blk\.9\.ffn_up\.weight has no counterpart"):
        read_lora(_lora(tmp_path / "o.gguf", other)).check_fit(arch, shapes)
    wide = {"blk.0.attn_q.weight.lora_a": (4, N_IN + 1), "blk.0.attn_q.weight.lora_b": (N_OUT, 4)}
    with pytest.raises(LoraFileError, match="does not fit the base"):
        read_lora(_lora(tmp_path / "w.gguf", wide)).check_fit(arch, shapes)


@pytest.mark.parametrize(
    ("tensors", "general_type", "words"),
    [
        (_good(), "model", "is not a LoRA adapter"),
        ({}, "adapter", "has no tensors"),
        ({"blk.0.attn_q.weight": (4, 4)}, "adapter", "neither lora_a nor lora_b"),
        ({"blk.0.attn_q.weight.lora_a": (4, N_IN)}, "adapter", "lacks its lora_a or lora_b half"),
        (
            {"blk.0.attn_q.weight.lora_a": (4, N_IN), "blk.0.attn_q.weight.lora_b": (N_OUT, 8)},
            "adapter",
            "differ in rank",
        ),
    ],
)
def test_what_is_not_a_usable_lora(
    tmp_path: Path, tensors: dict[str, tuple[int, int]], general_type: str, words: str
) -> None:
    with pytest.raises(LoraFileError, match=words):
        read_lora(_lora(tmp_path / "x.gguf", tensors, general_type=general_type))


def test_a_cut_or_foreign_file_is_refused(tmp_path: Path) -> None:
    good = _lora(tmp_path / "a.gguf", _good()).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(LoraFileError, match=r"cut\.gguf is not a readable GGUF file"):
        read_lora(cut)
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(LoraFileError, match="not a readable GGUF"):
        read_lora(text)
