"""Upload throughput of `edgefleet fleet model push` against a real site (TLS Mosquitto + orchestrator).

Starts the test harness's broker and orchestrator (tests/mqtt_support.py), then times
  1. the CLI: `edgefleet fleet model push <smollm2> --no-wait` (hash, header read, upload, push-model), and
  2. the upload alone: fleet/uploads.upload_file through an OrchestratorSession (signed commands),
each to a fresh orchestrator store, and prints MB/s (10**6 bytes per second of the file's size).

    .venv/bin/python -m bench.upload_speed [--model PATH] [--runs N] [--window N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from edgefleet.fleet.control import OrchestratorSession
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.uploads import UPLOAD_WINDOW, upload_file
from edgefleet.node.model_catalog import resolve_model
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, fleet, init_site_keys
from tests.orchestrator.test_model_push import TOPICS


def _online(broker: Mosquitto) -> None:
    w = Watcher(broker, TOPICS.orchestrator_status())
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if w.json() and w.json()[-1].get("state") == "online":
                return
            time.sleep(0.1)
    finally:
        w.close()
    raise RuntimeError("the orchestrator did not come online")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="a GGUF file (default: the smollm2 catalog model)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--window", type=int, default=UPLOAD_WINDOW, help="pieces in flight for the upload alone")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-upload-bench-"))
    path = args.model or resolve_model(None, tmp / "models").path
    size = path.stat().st_size
    print(f"file {path} {size / 1e6:.1f} MB")
    broker = Mosquitto(tmp / "broker")
    site = init_site_keys(tmp / "site")
    for d in [f"orch-{k}-{run}" for run in range(args.runs) for k in ("cli", "up")]:
        (tmp / d).mkdir()
    try:
        for run in range(args.runs):
            o = Orchestrator(tmp / f"orch-cli-{run}", broker, env={"EDGEFLEET_SITE_KEY": str(site["key"])})
            _online(broker)
            t0 = time.monotonic()
            r = fleet(broker, "fleet", "model", "push", str(path), "--name", "tiny", "--version", f"1.{run}",
                      "--target", "group:line", "--new-group", "--no-wait", timeout=900)  # fmt: skip
            dt = time.monotonic() - t0
            o.stop()
            assert r.returncode == 0, r.stderr
            print(f"cli push: {dt:.1f} s, {size / 1e6 / dt:.1f} MB/s")

            o = Orchestrator(tmp / f"orch-up-{run}", broker, env={"EDGEFLEET_SITE_KEY": str(site["key"])})
            _online(broker)
            os.environ.update({"EDGEFLEET_MQTT_URL": broker.url, "EDGEFLEET_SITE": "lab"})
            with OrchestratorSession(FleetSettings()) as s:
                t0 = time.monotonic()
                _, res = upload_file(lambda c: s.call(c, 60), path, window=args.window)
                dt = time.monotonic() - t0
            o.stop()
            assert res.ok, res
            print(f"upload_file (window {args.window}): {dt:.1f} s, {size / 1e6 / dt:.1f} MB/s")
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
