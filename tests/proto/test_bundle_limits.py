"""Knowledge bundles are read with a decompressed-size limit, counted while streaming (issue 22).

A gzip file of a couple of MB can hold gigabytes: before, `iter_bundle` read lines of any length
(a bomb with no newline was decompressed whole into one line) and bundles of any total size. The
bombs here are real gzip files (valid header, CRC and length), written without compressing
gigabytes: one deflate block that ends in a full flush decompresses the same wherever it
stands, so it is compressed once and written many times.
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest

from edgefleet.orchestrator.adapter_commands import check_bundle
from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.knowledge_bundle import (
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_LINE_BYTES,
    BundleDocument,
    BundleError,
    iter_bundle,
    read_bundle,
    write_bundle,
)

MIB = 1024 * 1024


def gzip_bomb(path: Path, block: bytes, copies: int, tail: bytes = b"") -> Path:
    """A valid gzip file of `block` repeated `copies` times and then `tail`; a few KB per GB of zeros."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the gzip framing is written here
    once = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)  # no history: the same bytes each time
    rest = deflate.compress(tail) + deflate.flush()
    crc = 0
    with path.open("wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # magic, deflate, no name, mtime 0, best, unknown OS
        for _ in range(copies):
            f.write(once)
            crc = zlib.crc32(block, crc)
        crc = zlib.crc32(tail, crc)
        f.write(rest + struct.pack("<II", crc, (len(block) * copies + len(tail)) & 0xFFFFFFFF))
    return path


def peak_while(read: object) -> tuple[BaseException, int]:
    """The error `read()` raises and the peak memory (bytes) Python allocated meanwhile."""
    tracemalloc.start()
    try:
        try:
            read()  # type: ignore[operator]
        except Exception as e:
            error = e
        else:
            raise AssertionError("the bomb was read without an error")
        return error, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_bomb_helper_writes_real_gzip(tmp_path: Path) -> None:
    path = gzip_bomb(tmp_path / "small.jsonl.gz", b"\n" * 1000, 5, b'{"id": "a", "text": "t"}\n')
    assert gzip.decompress(path.read_bytes()) == b"\n" * 5000 + b'{"id": "a", "text": "t"}\n'  # CRC and size checked
    assert read_bundle(path) == [BundleDocument("a", "t")]


def test_one_endless_line_is_refused_after_the_line_limit(tmp_path: Path) -> None:
    """1 GiB of zeros and no newline, ~1 MB of gzip: refused once one line passes MAX_BUNDLE_LINE_BYTES."""
    path = gzip_bomb(tmp_path / "zeros.jsonl.gz", b"\0" * MIB, 1024)
    assert path.stat().st_size < 2 * MIB
    error, peak = peak_while(lambda: read_bundle(path))
    assert isinstance(error, BundleError)
    assert f"line 1 decompresses to over MAX_BUNDLE_LINE_BYTES={MAX_BUNDLE_LINE_BYTES} bytes" in str(error)
    assert peak < 2 * MAX_BUNDLE_LINE_BYTES + 8 * MIB, f"{peak / MIB:.0f} MiB held while reading"


def test_a_bundle_decompressing_past_the_total_limit_is_refused(tmp_path: Path) -> None:
    """Short lines (blank ones, which cost nothing to parse) past MAX_BUNDLE_BYTES: refused while streaming."""
    path = gzip_bomb(tmp_path / "blanks.jsonl.gz", b" " * (MIB - 1) + b"\n", MAX_BUNDLE_BYTES // MIB + 64)
    assert path.stat().st_size < 4 * MIB
    error, peak = peak_while(lambda: read_bundle(path))
    assert isinstance(error, BundleError)
    assert f"decompresses to over MAX_BUNDLE_BYTES={MAX_BUNDLE_BYTES} bytes" in str(error)
    assert f"at line {MAX_BUNDLE_BYTES // MIB + 1}" in str(error)  # the first line past the limit, not the end
    assert peak < 8 * MIB, f"{peak / MIB:.0f} MiB held while reading"


def test_documents_up_to_the_limits_still_read(tmp_path: Path) -> None:
    text = "ü" * (MIB // 2)  # 1 MiB of UTF-8 in one document, as a node's default document limit allows
    path = tmp_path / "big.jsonl.gz"
    path.write_bytes(write_bundle([BundleDocument("a", text), BundleDocument("b", "short")]))
    assert [d.id for d in iter_bundle(path)] == ["a", "b"]


def test_the_orchestrator_refuses_an_uploaded_bomb_with_the_limit_named(tmp_path: Path) -> None:
    """The orchestrator checks an upload with `iter_bundle` before it signs a manifest (a node installs with it)."""
    path = gzip_bomb(tmp_path / "zeros.jsonl.gz", b"\0" * MIB, 1024)
    with pytest.raises(CommandError, match="MAX_BUNDLE_LINE_BYTES") as refused:
        check_bundle(path)
    assert refused.value.code == ErrorCode.KNOWLEDGE_REFUSED
