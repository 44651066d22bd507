"""The wordllama embedder: checked at construction, loaded on first use."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgefleet.node.knowledge.embedders import WordLlamaEmbedder
from edgefleet.node.knowledge.errors import KnowledgeError

LAZY = """
import sys
from edgefleet.node.knowledge.embedders import WordLlamaEmbedder
e = WordLlamaEmbedder()
print("wordllama" in sys.modules, e.identity, e.dimensions)
v = e.embed(["pump bearing noise"])
print("wordllama" in sys.modules, v.shape)
"""


def test_wordllama_loads_on_first_embed_not_at_construction() -> None:
    out = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.splitlines() == ["False wordllama:l2_supercat:256 256", "True (1, 256)"]


def test_missing_weights_fail_at_construction_naming_the_file() -> None:
    with pytest.raises(KnowledgeError, match=r"l2_supercat_123\.safetensors"):
        WordLlamaEmbedder(dim=123)


def test_rows_are_unit_length() -> None:
    rows = WordLlamaEmbedder().embed(["oil pressure low", "replace the seal"])
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
