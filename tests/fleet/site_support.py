"""The `edgefleet` CLI run as an operator would, against a real broker, orchestrator and node."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import BIN


def operator_env(config: Path | None = None, **env: str) -> dict[str, str]:
    """The environment without EDGEFLEET_* (a fresh shell), a config file of the test's own, and `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    return {**clean, "EDGEFLEET_CLI_CONFIG": str(config or "/nonexistent/edgefleet-cli.toml"), **env}


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgefleet"), *args], capture_output=True, text=True, timeout=timeout, env=env or operator_env()
    )
