"""Measurement records: one request, one level, and the median of a level's repeats."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    client: int
    round: int
    prompt_tokens: int  # as the backend reports it (or as rendered, where it reports none)
    completion_tokens: int
    finish: str
    t_send: float  # seconds since the level start
    t_first: float
    t_end: float
    server_ttft_ms: float | None = None
    tokens_exact: bool = True  # False: counted from the stream (the backend reports no usage)
    retries: int = 0  # HTTP keep-alive races: the server closed the idle connection before reading
    expected_prompt_tokens: int = 0  # the rendered prompt's tokens, as the bench counts them

    @property
    def ttft_ms(self) -> float:
        return (self.t_first - self.t_send) * 1000.0


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_ms_mean: float
    ttft_ms_p50: float
    ttft_ms_max: float
    prompt_tokens_mean: float
    completion_tokens_mean: float
    finished_by_length: int
    cpu: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)


def summarize(concurrency: int, records: list[RequestRecord]) -> LevelResult:
    if not records:
        raise RuntimeError(f"no request completed at concurrency {concurrency}")
    t0 = min(r.t_send for r in records)
    t1 = max(r.t_end for r in records)
    wall = max(t1 - t0, 1e-9)
    toks = sum(r.completion_tokens for r in records)
    ttfts = sorted(r.ttft_ms for r in records)
    return LevelResult(
        concurrency=concurrency,
        requests=len(records),
        completion_tokens=toks,
        wall_s=round(wall, 4),
        tokens_per_s=round(toks / wall, 2),
        ttft_ms_mean=round(sum(ttfts) / len(ttfts), 1),
        ttft_ms_p50=round(ttfts[len(ttfts) // 2], 1),
        ttft_ms_max=round(ttfts[-1], 1),
        prompt_tokens_mean=round(sum(r.prompt_tokens for r in records) / len(records), 1),
        completion_tokens_mean=round(toks / len(records), 1),
        finished_by_length=sum(1 for r in records if r.finish == "length"),
        records=[{**asdict(r), "ttft_ms": round(r.ttft_ms, 1)} for r in records],
    )


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def combine(reps: list[LevelResult]) -> dict[str, Any]:
    """The figures of a level: medians over the repeats (each repeat kept in full)."""
    out: dict[str, Any] = {
        "concurrency": reps[0].concurrency,
        "tokens_per_s": round(_median([r.tokens_per_s for r in reps]), 2),
        "ttft_ms_mean": round(_median([r.ttft_ms_mean for r in reps]), 1),
        "tokens_per_s_repeats": [r.tokens_per_s for r in reps],
        "ttft_ms_repeats": [r.ttft_ms_mean for r in reps],
        "requests": sum(r.requests for r in reps),
        "completion_tokens_mean": round(sum(r.completion_tokens for r in reps) / sum(r.requests for r in reps), 1),
        "finished_by_length": sum(r.finished_by_length for r in reps),
        "cpu": {"foreign_share": round(_median([r.cpu["foreign_share"] for r in reps]), 3)},
        "repeats": [asdict(r) for r in reps],
    }
    return out
