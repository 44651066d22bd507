"""The PNG: tokens/s and mean TTFT against concurrency, one line per backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.settings import BACKENDS, LABELS


def plot(results: dict[str, Any], levels: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    markers = {"node": "o", "inprocess": "s", "llama_cpp.server": "^", "llama-server": "D", "raw": "x"}
    for b in BACKENDS:
        if b not in results or "levels" not in results[b]:
            continue
        xs = [n for n in levels if str(n) in results[b]["levels"]]
        ax1.plot(
            xs,
            [results[b]["levels"][str(n)]["tokens_per_s"] for n in xs],
            marker=markers[b],
            label=LABELS[b],
            linewidth=2.5 if b == "node" else 1.5,
        )
        ax2.plot(
            xs,
            [results[b]["levels"][str(n)]["ttft_ms_mean"] for n in xs],
            marker=markers[b],
            label=LABELS[b],
            linewidth=2.5 if b == "node" else 1.5,
        )
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels)
        ax.set_xticklabels([str(n) for n in levels])
        ax.set_xlabel("concurrent clients")
        ax.grid(True, alpha=0.3)
    ax1.set_ylabel("total completion tokens/s")
    ax1.set_ylim(bottom=0)
    ax1.set_title("Throughput")
    ax2.set_ylabel("mean time to first token (ms)")
    ax2.set_ylim(bottom=0)
    ax2.set_title("Time to first token")
    ax1.legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
