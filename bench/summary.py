"""The summary block: issue 26's figures as ratios side by side, each against its target.

Every line is a ratio (or, for the KV type, the figures), its target, and "met" or "MISSED by"
how much (absolute and as a share of the target). A figure whose backend or section did not
run says n/a and why. The checks go into the results JSON ("summary") and count for --check.
"""

from __future__ import annotations

from typing import Any

from bench.cpu_load import FOREIGN_SHARE_WARN
from bench.report import foreign, tps
from bench.settings import (
    TARGET_MIXED_ADAPTERS,
    TARGET_NODE_VS_INPROCESS_C1,
    TARGET_NODE_VS_LLAMA_SERVER,
    TARGET_NODE_VS_LLAMA_SERVER_C1,
    TARGET_NODE_VS_RAW,
    TARGET_PREFIX_RESTART,
    TARGET_SPECULATION_C1,
    TARGET_TTFT_VS_INPROCESS_C1,
)

W = 50
SHORT = {"inprocess": "in-process", "llama-server": "llama-server", "raw": "raw batched"}


def _line(
    checks: list[dict[str, Any]],
    name: str,
    a: float | None,
    b: float | None,
    target: float,
    at_most: bool = False,
    unit: str = "tok/s",
    why_na: str = "",
    suspect: bool = False,
) -> None:
    op = "<=" if at_most else ">="
    if a is None or b is None or b <= 0:
        print(f"{name:{W}} {'n/a':>6}   target {op} {target:.2f}   {why_na}")
        checks.append({"check": name, "ratio": None, "target": target, "op": op, "result": "n/a", "why": why_na})
        return
    r = a / b
    met = r <= target if at_most else r >= target
    gap = r - target if at_most else target - r
    verdict = "met" if met else f"MISSED by {gap:.2f} ({gap / target:.0%})"
    note = "  * under load: suspect" if suspect else ""
    print(f"{name:{W}} {r:5.2f}x   target {op} {target:.2f}   {verdict:24} [{a:.1f} / {b:.1f} {unit}]{note}")
    checks.append(
        {
            "check": name,
            "ratio": round(r, 3),
            "target": target,
            "op": op,
            "result": "PASS" if met else "FAIL",
            "missed_by": None if met else round(gap, 3),
            "numerator": a,
            "denominator": b,
            "unit": unit,
            "under_load": suspect,
        }
    )


def _why(results: dict[str, Any], backend: str, n: int) -> str:
    b = results.get(backend)
    if b is None:
        return f"({backend} not run: --only)"
    if "levels" not in b:
        return f"({backend}: {(b.get('skipped') or b.get('error') or '')[:70]})"
    return f"(no c={n} level: --concurrency)" if str(n) not in b["levels"] else ""


def summary(results: dict[str, Any], sections: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    print("\n=== summary: issue 26's figures (node / other; met or missed) ===")

    def node_vs(other: str, n: int, target: float) -> None:
        suspect = max(foreign(results, "node", n), foreign(results, other, n)) >= FOREIGN_SHARE_WARN
        why = _why(results, "node", n) or _why(results, other, n)
        _line(
            checks,
            f"node / {SHORT[other]} c={n}",
            tps(results, "node", n),
            tps(results, other, n),
            target,
            why_na=why,
            suspect=suspect,
        )

    node_vs("inprocess", 1, TARGET_NODE_VS_INPROCESS_C1)
    node_vs("llama-server", 1, TARGET_NODE_VS_LLAMA_SERVER_C1)
    for n in (4, 8):
        node_vs("llama-server", n, TARGET_NODE_VS_LLAMA_SERVER)
    for n in (4, 8):
        node_vs("raw", n, TARGET_NODE_VS_RAW)

    def ttft(backend: str, n: int) -> float | None:
        lv = (results.get(backend) or {}).get("levels", {}).get(str(n))
        return None if lv is None else float(lv["ttft_ms_mean"])

    _line(
        checks,
        "node TTFT / in-process TTFT c=1",
        ttft("node", 1),
        ttft("inprocess", 1),
        TARGET_TTFT_VS_INPROCESS_C1,
        at_most=True,
        unit="ms",
        why_na=_why(results, "node", 1) or _why(results, "inprocess", 1),
    )

    ad = sections.get("adapters")
    if ad and "error" not in ad:
        t = ad["tokens_per_s"]
        _line(checks, "mixed adapters / one adapter (4 streams)", t["two"], t["one"], TARGET_MIXED_ADAPTERS)
    else:
        _line(
            checks,
            "mixed adapters / one adapter (4 streams)",
            None,
            None,
            TARGET_MIXED_ADAPTERS,
            why_na=_section_na(ad, "adapters"),
        )

    pr = sections.get("prefix")
    if pr and "error" not in pr:
        _line(
            checks,
            "first answer after restart / warm (TTFT)",
            pr["restored_ms"],
            pr["warm_ms"],
            TARGET_PREFIX_RESTART,
            at_most=True,
            unit="ms",
        )
    else:
        _line(
            checks,
            "first answer after restart / warm (TTFT)",
            None,
            None,
            TARGET_PREFIX_RESTART,
            at_most=True,
            why_na=_section_na(pr, "prefix"),
        )

    sp = sections.get("speculation")
    name = "speculation on / off, c=1, grounded answers"
    if sp and "error" not in sp and "c1" in sp:
        c1 = sp["c1"]
        _line(checks, name, c1["tokens_per_s_on"], c1["tokens_per_s_off"], TARGET_SPECULATION_C1)
        checks[-1]["detail"] = (
            f"greedy text identical {c1['same_text']}, acceptance {c1['acceptance']}, "
            f"tokens/step {c1['tokens_per_step_off']} -> {c1['tokens_per_step_on']}"
        )
        print(f"  ({checks[-1]['detail']}" + (f"; c=8: {sp['c8']['ratio']}x)" if "c8" in sp else ")"))
    else:
        _line(checks, name, None, None, TARGET_SPECULATION_C1, why_na=_section_na(sp, "speculation"))

    kv = sections.get("kv")
    name = "q8_0 KV against f16 (figures, no target)"
    if kv and "error" not in kv:
        c = kv["compare"]
        pi4 = kv.get("pi4") or {}
        slots = f", Pi 4 slots {pi4.get('max_slots_f16')} -> {pi4.get('max_slots_q8_0')}" if pi4 else ""
        print(
            f"{name:{W}} saves {kv['saved_mib']:.1f} of {kv['llama_kv_mib']['f16']:.1f} MiB{slots}; greedy "
            f"identical {c['greedy_same']}/{c['greedy_n']}, tool calls identical {c['tool_calls_same']}/{c['tool_n']}, "
            f"valid {c['tools_other']['valid']:.0%} (f16 {c['tools_base']['valid']:.0%}); served as "
            f"{kv['served']['q8_0']}"
        )
        checks.append(
            {
                "check": name,
                "result": "figures",
                "saved_mib": kv["saved_mib"],
                "pi4_slots": [pi4.get("max_slots_f16"), pi4.get("max_slots_q8_0")],
                "greedy_same": [c["greedy_same"], c["greedy_n"]],
                "tool_calls_same": [c["tool_calls_same"], c["tool_n"]],
            }
        )
    else:
        print(f"{name:{W}} {'n/a':>6}   {_section_na(kv, 'kv')}")
        checks.append({"check": name, "result": "n/a", "why": _section_na(kv, "kv")})
    return checks


def _section_na(sec: dict[str, Any] | None, name: str) -> str:
    if sec is None:
        return f"(section not run: --sections {name})"
    return f"(section {name} failed: {str(sec.get('error', ''))[:70]})"
