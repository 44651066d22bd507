"""The knowledge bundle format: written once, read once, refused with the line that is wrong."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from edgefleet.proto import knowledge_bundle
from edgefleet.proto.knowledge_bundle import BundleDocument, BundleError, read_bundle, write_bundle

DOCS = [
    BundleDocument("pump-manual", "Vibration above 7.1 mm/s: stop the pump.", {"source": "pump.md"}),
    BundleDocument("ünïcode", "Ölstand prüfen", {}),
]


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode("utf-8"), mtime=0)


def test_a_written_bundle_reads_back_the_same_documents(tmp_path: Path) -> None:
    path = tmp_path / f"b{knowledge_bundle.SUFFIX}"
    path.write_bytes(write_bundle(DOCS))
    assert read_bundle(path) == DOCS
    assert read_bundle(io.BytesIO(write_bundle(DOCS))) == DOCS


def test_the_same_documents_give_the_same_bytes() -> None:
    assert write_bundle(DOCS) == write_bundle(list(DOCS))
    assert write_bundle(DOCS) != write_bundle(DOCS[:1])
    lines = gzip.decompress(write_bundle(DOCS)).decode().splitlines()
    first = '{"id": "pump-manual", "metadata": {"source": "pump.md"}, '
    assert lines[0] == first + '"text": "Vibration above 7.1 mm/s: stop the pump."}'


def test_text_and_metadata_may_be_left_out_and_blank_lines_are_skipped() -> None:
    data = _gz('{"id": "a"}\n\n   \n{"id": "b", "text": "t"}\n')
    assert read_bundle(io.BytesIO(data)) == [BundleDocument("a"), BundleDocument("b", "t")]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"id": "a"}\n{"text": "no id"}\n', "line 2: an object with a string id"),
        ('{"id": 5}\n', "line 1: an object with a string id"),
        ('["a"]\n', "line 1: an object with a string id"),
        ('{"id": "a"}\nnot json\n', "line 2 is not JSON"),
        ('{"id": "a", "metadata": {"n": 1}}\n', "line 1: metadata must map names to strings"),
        ('{"id": "a", "metadata": ["x"]}\n', "line 1: metadata must map names to strings"),
        ('{"id": "a", "text": 3}\n', "line 1: text must be a string"),
    ],
)
def test_a_wrong_line_is_named(content: str, words: str) -> None:
    with pytest.raises(BundleError, match=words):
        read_bundle(io.BytesIO(_gz(content)))


def test_what_is_not_gzip_or_utf8_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_bytes(b'{"id": "a"}\n')
    with pytest.raises(BundleError, match=r"plain\.jsonl\.gz is not gzip'd UTF-8 JSON lines"):
        read_bundle(plain)
    with pytest.raises(BundleError, match="not gzip'd UTF-8"):
        read_bundle(io.BytesIO(gzip.compress(b'{"id": "\xff"}\n')))
    cut = write_bundle(DOCS)[:-12]
    with pytest.raises(BundleError, match="not gzip'd UTF-8"):
        read_bundle(io.BytesIO(cut))


def test_too_many_documents_are_refused() -> None:
    n = knowledge_bundle.MAX_BUNDLE_DOCUMENTS
    assert len(read_bundle(io.BytesIO(write_bundle([BundleDocument(str(i)) for i in range(n)])))) == n
    with pytest.raises(BundleError, match=f"more than {n} documents"):
        read_bundle(io.BytesIO(write_bundle([BundleDocument(str(i)) for i in range(n + 1)])))
