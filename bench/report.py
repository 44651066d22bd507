"""The report on stdout: tables, ratios and PASS/FAIL lines against the targets."""

from __future__ import annotations

from typing import Any

from bench.cpu_load import FOREIGN_SHARE_WARN
from bench.prompts import ModelFacts
from bench.settings import (
    BACKENDS,
    LABELS,
    N_CTX_SLOT,
    OVERHEAD_BYTES,
    SLOTS,
    TARGET_COLD_START_S,
    TARGET_NODE_VS_LLAMA_CPP_SERVER_C4,
)


def fmt_mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1024 / 1024:.1f} MiB"


def tps(results: dict[str, Any], backend: str, n: int) -> float | None:
    b = results.get(backend)
    if not b or "levels" not in b:
        return None
    lv = b["levels"].get(str(n))
    return None if lv is None else float(lv["tokens_per_s"])


def foreign(results: dict[str, Any], backend: str, n: int) -> float:
    lv = (results.get(backend) or {}).get("levels", {}).get(str(n)) or {}
    return float((lv.get("cpu") or {}).get("foreign_share", 0.0))


def report(results: dict[str, Any], levels: list[int], facts: ModelFacts, max_tokens: int) -> list[dict[str, Any]]:
    names = [b for b in BACKENDS if b in results]
    w = 20
    print("\n=== tokens/s (all requests of a level / level wall time) ===")
    print(f"{'backend':{w}}" + "".join(f"{'c=' + str(n):>11}" for n in levels))
    for b in names:
        row = f"{LABELS[b]:{w}}"
        for n in levels:
            v = tps(results, b, n)
            cell = "n/a" if v is None else f"{v:.1f}"
            if v is not None and foreign(results, b, n) >= FOREIGN_SHARE_WARN:
                cell += "*"
            row += f"{cell:>11}"
        if "levels" not in results[b]:
            row += f"   ({results[b].get('skipped') or results[b].get('error', '')[:60]})"
        print(row)
    print("(median of the repeats; each repeat's tokens/s:)")
    for b in names:
        if "levels" not in results[b]:
            continue
        cells = []
        for n in levels:
            lv = results[b]["levels"].get(str(n))
            cells.append("n/a" if lv is None else "/".join(f"{x:.0f}" for x in lv["tokens_per_s_repeats"]))
        print(f"{LABELS[b]:{w}}" + "".join(f"{c:>16}" for c in cells))
    loaded = [
        f"{LABELS[b]} c={n} ({foreign(results, b, n):.0%})"
        for b in names
        for n in levels
        if tps(results, b, n) is not None and foreign(results, b, n) >= FOREIGN_SHARE_WARN
    ]
    if loaded:
        print(
            "* WARNING: measured while OTHER processes used part of the CPUs (share of all CPUs): "
            + ", ".join(loaded)
            + ". Those figures are low; rerun on an idle machine."
        )
    print("\n=== mean TTFT ms (client side: request sent -> first text) ===")
    print(f"{'backend':{w}}" + "".join(f"{'c=' + str(n):>11}" for n in levels))
    for b in names:
        if "levels" not in results[b]:
            continue
        row = f"{LABELS[b]:{w}}"
        for n in levels:
            lv = results[b]["levels"].get(str(n))
            cell = "n/a" if lv is None else f"{lv['ttft_ms_mean']:.1f}"
            row += f"{cell:>11}"
        print(row)
    print("\n=== completion tokens per request (mean) / requests that ran to max_tokens ===")
    for b in names:
        if "levels" not in results[b]:
            continue
        parts = []
        for n in levels:
            lv = results[b]["levels"].get(str(n))
            if lv:
                parts.append(f"c={n}: {lv['completion_tokens_mean']:.1f} ({lv['finished_by_length']}/{lv['requests']})")
        print(f"{LABELS[b]:{w}}" + "   ".join(parts))
        short = [lv for lv in results[b]["levels"].values() if lv["completion_tokens_mean"] < max_tokens]
        if short:
            print(f"{'':{w}}note: some requests stopped at EOS before {max_tokens} tokens")

    mismatched = []
    for b in names:
        for lv in (results[b].get("levels") or {}).values():
            bad = [
                r
                for one in lv["repeats"]
                for r in one["records"]
                if r["expected_prompt_tokens"] and r["prompt_tokens"] != r["expected_prompt_tokens"]
            ]
            if bad:
                mismatched.append(
                    f"{LABELS[b]} c={lv['concurrency']}: {len(bad)} request(s), e.g. "
                    f"{bad[0]['prompt_tokens']} vs {bad[0]['expected_prompt_tokens']} tokens"
                )
    if mismatched:
        print("WARNING: prompt token counts differ from the rendered prompts: " + "; ".join(mismatched))
    else:
        print("prompt tokens: every backend that reports them saw the same token counts as rendered")

    print("\n=== ratios (tokens/s; issue 26's targets are in the summary at the end) ===")
    checks: list[dict[str, Any]] = []

    def ratio(name: str, a: float | None, b: float | None, target: float, loaded_pair: bool = False) -> None:
        if a is None or b is None or b <= 0:
            print(f"{name:46} n/a")
            checks.append({"check": name, "ratio": None, "target": target, "result": "n/a"})
            return
        r = a / b
        verdict = "PASS" if r >= target else "FAIL"
        note = "   (* measured under load from other processes: suspect)" if loaded_pair else ""
        print(f"{name:46} {r:5.2f}x  (target >= {target:.2f}x)  {verdict}   [{a:.1f} vs {b:.1f} tok/s]{note}")
        checks.append(
            {
                "check": name,
                "ratio": round(r, 3),
                "target": target,
                "result": verdict,
                "node_tps": a,
                "other_tps": b,
                "under_load": loaded_pair,
            }
        )

    def under_load(other: str, n: int) -> bool:
        return max(foreign(results, "node", n), foreign(results, other, n)) >= FOREIGN_SHARE_WARN

    ratio(
        "node c=4 / llama_cpp.server c=4",
        tps(results, "node", 4),
        tps(results, "llama_cpp.server", 4),
        TARGET_NODE_VS_LLAMA_CPP_SERVER_C4,
        under_load("llama_cpp.server", 4),
    )
    for other in ("inprocess", "llama_cpp.server", "llama-server", "raw"):
        parts = []
        for n in levels:
            mine, theirs = tps(results, "node", n), tps(results, other, n)
            parts.append(f"c={n}: " + ("n/a" if mine is None or not theirs else f"{mine / theirs:.2f}x"))
        print(f"  (node / {other}: " + ", ".join(parts) + ")")

    print("\n=== node start-up and memory ===")
    node = results.get("node") or {}
    cold = node.get("cold_start_s")
    if cold is None:
        print(f"{'node cold start (Popen -> SERVING)':46} n/a")
        checks.append({"check": "node cold start", "value_s": None, "target_s": TARGET_COLD_START_S, "result": "n/a"})
    else:
        verdict = "PASS" if cold <= TARGET_COLD_START_S else "FAIL"
        print(
            f"{'node cold start (Popen -> SERVING)':46} {cold:.3f} s  (target <= {TARGET_COLD_START_S:.1f} s)  "
            f"{verdict}"
        )
        checks.append({"check": "node cold start", "value_s": cold, "target_s": TARGET_COLD_START_S, "result": verdict})
    kv = facts.kv_bytes_per_token * N_CTX_SLOT * SLOTS
    bound = facts.size_bytes + kv + OVERHEAD_BYTES
    peak = node.get("peak_rss_bytes")
    print(
        f"  bound = model file {fmt_mib(facts.size_bytes)} + KV cache {fmt_mib(kv)} "
        f"({facts.kv_bytes_per_token} B/token x {N_CTX_SLOT} x {SLOTS} slots) + {fmt_mib(OVERHEAD_BYTES)} "
        f"= {fmt_mib(bound)}"
    )
    if peak:
        verdict = "PASS" if peak <= bound else "FAIL"
        print(
            f"{'node peak RSS':46} {fmt_mib(peak)}  (bound {fmt_mib(bound)})  {verdict}   "
            f"[VmHWM {fmt_mib(node.get('vm_hwm_bytes'))}, polled {fmt_mib(node.get('peak_rss_polled_bytes'))}]"
        )
        checks.append({"check": "node peak RSS", "value_bytes": peak, "bound_bytes": bound, "result": verdict})
        info = node.get("node_info") or {}
        if info:
            print(
                f"  GetNodeInfo: rss {fmt_mib(float(info.get('rss_bytes', 0)))}, memory_estimate "
                f"{fmt_mib(float(info.get('memory_estimate_bytes', 0)))}, budget "
                f"{fmt_mib(float(info.get('memory_budget_bytes', 0)))}"
            )
    else:
        print(f"{'node peak RSS':46} n/a")
        checks.append({"check": "node peak RSS", "value_bytes": None, "bound_bytes": bound, "result": "n/a"})
    others = [
        f"{LABELS[b]} {fmt_mib(results[b].get('peak_rss_bytes'))}"
        for b in names
        if b != "node" and results[b].get("peak_rss_bytes")
    ]
    if others:
        print("  peak RSS of the others (for context): " + ", ".join(others))
    return checks
