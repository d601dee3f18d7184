"""The deployment page's latency chart, computed here and drawn as inline SVG by the template
(no script; presentation attributes only, which the page's CSP allows)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from deployments.models import CallOutcome, ToolCall

WIDTH, HEIGHT = 600, 120
BAR_GAP = 2


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    failed: bool


@dataclass(frozen=True)
class LatencyChart:
    bars: list[Bar]
    median_ms: float
    p95_ms: float
    max_ms: float
    failed: int
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def summary(self) -> str:
        """What the chart shows, in words, for screen readers and as its caption."""
        calls = len(self.bars)
        text = (
            f"Last {calls} call{'s' if calls != 1 else ''}: median {self.median_ms:.1f} ms, "
            f"95th percentile {self.p95_ms:.1f} ms, slowest {self.max_ms:.1f} ms"
        )
        return text + (f"; {self.failed} failed." if self.failed else ".")


def latency_chart(calls: Sequence[ToolCall]) -> LatencyChart | None:
    """One bar per call, oldest on the left, height proportional to its duration."""
    if not calls:
        return None
    ordered = list(reversed(calls))  # the page lists the newest first
    durations = [call.duration_ms for call in ordered]
    tallest = max(durations) or 1.0
    slot = WIDTH / len(ordered)
    bars = []
    for index, call in enumerate(ordered):
        height = max(1.0, call.duration_ms / tallest * (HEIGHT - 1))
        failed = call.outcome != CallOutcome.OK
        bars.append(
            Bar(
                x=round(index * slot, 2),
                y=round(HEIGHT - height, 2),
                width=round(max(1.0, slot - BAR_GAP), 2),
                height=round(height, 2),
                label=(
                    f"{call.started_at:%H:%M:%S} {call.method} {call.target} "
                    f"{call.duration_ms:.1f} ms {call.get_outcome_display()}"
                ).replace("  ", " "),
                failed=failed,
            )
        )
    ranked = sorted(durations)
    return LatencyChart(
        bars=bars,
        median_ms=statistics.median(ranked),
        p95_ms=ranked[min(len(ranked) - 1, round(0.95 * (len(ranked) - 1)))],
        max_ms=ranked[-1],
        failed=sum(bar.failed for bar in bars),
    )
