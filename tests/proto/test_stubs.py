from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_committed_grpc_stubs_match_the_proto_files() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
