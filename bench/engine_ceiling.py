"""The node's engine with no gRPC in front: what the serving path could reach at most.

Builds the node in this process (`build_node`, the bench's node profile: 8 slots, no broker) and
runs the same closed loop as `run_bench.py`: C clients, each sending the bench's sensor
prompts (`messages=[user]`, greedy, `--max-tokens` tokens, EOS ignored the same way by asking
for exactly that many) one after another. Prints total tokens/s per concurrency level: the
ceiling for `node (gRPC)` in `run_bench.py` on the same machine.

    .venv/bin/python bench/engine_ceiling.py [--concurrency 1,4,8] [--rounds 4] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.prompts import sensor_prompt  # noqa: E402
from bench.servers import node_profile  # noqa: E402
from bench.settings import THREADS  # noqa: E402
from edgefleet.node.engine.types import Failed, Finished, TextDelta  # noqa: E402
from edgefleet.node.runtime import build_node  # noqa: E402
from edgefleet.node.service_types import ChatTurn, GenerateInput  # noqa: E402
from edgefleet.node.settings import NodeSettings  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--rounds", type=int, default=4, help="requests per client (default 4)")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EDGEFLEET_RESPONSE_CACHE"] = "false"
        settings = NodeSettings(
            profile=str(node_profile(Path(tmp))), data_dir=Path(tmp) / "data", threads=THREADS, knowledge=False
        )
        node = build_node(settings)
        service = node.service
        try:
            for c in (int(x) for x in args.concurrency.split(",")):
                done = [0] * c

                def client(k: int, c: int = c, done: list[int] = done) -> None:
                    for r in range(args.rounds):
                        finished = threading.Event()

                        def sink(ev: TextDelta | Finished | Failed, k: int = k, finished: threading.Event = finished):
                            if isinstance(ev, Finished):
                                done[k] += ev.usage.completion_tokens
                                finished.set()
                            elif isinstance(ev, Failed):
                                finished.set()

                        inp = GenerateInput(
                            messages=(ChatTurn("user", sensor_prompt(k * args.rounds + r)),),
                            max_tokens=args.max_tokens,
                            temperature=0.0,
                        )
                        service.generate(inp, f"ceiling-{c}-{k}-{r}", sink, time.monotonic())
                        finished.wait(600)

                client(0)  # warm-up: graphs, caches
                done[0] = 0
                threads = [threading.Thread(target=client, args=(k,)) for k in range(c)]
                start = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                tps = sum(done) / (time.perf_counter() - start)
                print(f"engine in-process c={c}: {tps:.1f} tokens/s ({sum(done)} tokens)", flush=True)
        finally:
            node.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
