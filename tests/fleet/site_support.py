"""The `edgefleet` CLI run as an operator would, against a real broker, orchestrator and node."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests import site_identity
from tests.conftest import BIN


def operator_env(config: Path | None = None, **env: str) -> dict[str, str]:
    """A fresh operator shell: no EDGEFLEET_* but the operator's enrollment bundle (the harness's
    certificate, as `set -a; . edgefleet.env` gives it), a config file of the test's own, and `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    identity = site_identity.site().identity_env(site_identity.site().harness_dir)
    return {**clean, **identity, "EDGEFLEET_CLI_CONFIG": str(config or "/nonexistent/edgefleet-cli.toml"), **env}


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgefleet"), *args], capture_output=True, text=True, timeout=timeout, env=env or operator_env()
    )
