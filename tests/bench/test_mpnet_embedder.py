"""The numpy MPNet embedder (a measurement option in bench/rag_eval.py): its pure parts.

The model itself (438 MB, not installed by setup) is checked by rag_eval's own figures when it is
reassembled (bench/mpnet_embedder.py says how); it is not part of the suite."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bench.mpnet_embedder import MPNetEmbedder, _erf, relative_position_buckets
from edgefleet.node.knowledge.errors import KnowledgeError


def test_relative_position_buckets_follow_mpnet() -> None:
    b = relative_position_buckets(200)
    assert b[5, 5] == 0  # same position
    assert b[5, 4] == 1 and b[5, 0] == 5  # keys before the query: buckets 0..15
    assert b[0, 1] == 17 and b[0, 7] == 23  # keys after it: 16 + distance while exact (< 8)
    assert b[0, 199] == 31 and b[199, 0] == 15  # far away: the last bucket of each side
    assert b.shape == (200, 200) and b.min() >= 0 and b.max() <= 31


def test_erf_approximation() -> None:
    xs = np.linspace(-4, 4, 81, dtype=np.float32)
    expected = np.array([math.erf(float(x)) for x in xs], dtype=np.float32)
    assert np.max(np.abs(_erf(xs) - expected)) < 1e-6


def test_missing_model_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match=r"model\.safetensors"):
        MPNetEmbedder(tmp_path)
