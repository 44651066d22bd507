"""Regenerate the committed gRPC stubs in proto/v1 from proto/v1/*.proto.

Usage: python scripts/gen_proto.py [--check]

The .proto files are compiled as if they lived at edgefleet/proto/v1/, so the generated
modules import each other as `edgefleet.proto.v1.…`, the package they install into.
`--check` regenerates into a temporary folder and exits 1 if the committed stubs differ.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "proto" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto in proto/v1 into out_dir and return the generated files."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "edgefleet" / "proto" / "v1"
        tree.mkdir(parents=True)
        protos = sorted(SRC.glob("*.proto"))
        for p in protos:
            shutil.copy(p, tree / p.name)
        args = [
            "grpc_tools.protoc",
            f"-I{tmp}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[f"edgefleet/proto/v1/{p.name}" for p in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out = []
        for f in sorted(tree.iterdir()):
            if f.name.endswith(GENERATED_SUFFIXES):
                target = out_dir / f.name
                shutil.copy(f, target)
                out.append(target)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    if not args.check:
        for f in generate(SRC):
            print(f"wrote {f.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = []
        for f in generate(Path(tmp)):
            committed = SRC / f.name
            if not committed.exists() or committed.read_bytes() != f.read_bytes():
                stale.append(committed.name)
        if stale:
            print(f"stale generated stubs: {', '.join(stale)}; run python scripts/gen_proto.py")
            return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
