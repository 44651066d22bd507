"""What the authorization checks cost per request, in process: the code the node's gRPC server and
the front door run on every call (a site PKI, a key store and a CRL made for the run in a
temporary folder). Prints microseconds per call, the median of `--repeats` timed loops.

    .venv/bin/python bench/auth_checks.py [--calls 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgefleet.fleet.site.pki import SitePki  # noqa: E402
from edgefleet.node.api.access import node_access  # noqa: E402
from edgefleet.orchestrator.api_keys import KeyStore, Verifier  # noqa: E402
from edgefleet.orchestrator.front_door.auth import FrontDoorAuth  # noqa: E402
from edgefleet.orchestrator.front_door.metrics import FrontDoorMetrics  # noqa: E402
from edgefleet.plumbing.site_tls import Revocations, _peer  # noqa: E402
from edgefleet.proto.access import Permission  # noqa: E402


def per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pki = SitePki(d / "pki")
        pki.init("bench", ["localhost"])
        pki.issue("op", "operator")
        for i in range(50):  # a CRL with some entries, as a site that has revoked devices has
            pki.issue(f"old-{i}", "sensor")
            pki.revoke(f"old-{i}")
        peer = _peer((pki.bundle_dir("op") / "client.crt").read_bytes(), der=False)
        store = KeyStore(d / "keys.db")
        secret = store.create("app", collections=["*"])[1]
        auth = FrontDoorAuth(Verifier(store), FrontDoorMetrics(), Revocations(pki.crl_path))
        node_check = node_access("n1", operators_may_write_knowledge=True)
        bearer = f"Bearer {secret}"
        generate, method = Permission.GENERATE, "/edgefleet.v1.Inference/Generate"
        rows: list[tuple[str, Callable[[], object]]] = [
            ("node gRPC: revocation + grant of the caller's certificate", lambda: node_check(peer, method)),
            ("front door: operator certificate (CRL, grant, limits)", lambda: auth.identify(None, peer, generate)),
            ("front door: API key (lookup, grant, rpm window)", lambda: auth.identify(bearer, None, generate)),
            (
                "front door: API key + collection allow-list",
                lambda: auth.may_read(auth.identify(bearer, None, generate), "manuals"),
            ),
        ]
        print(f"{'check':<66} {'µs/call':>8}")
        for label, fn in rows:
            print(f"{label:<66} {per_call_us(fn, args.calls, args.repeats):>8.1f}")
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
