"""Load generators: a pipelining stdio client (the floor) and wrk for HTTP targets.

Both keep a fixed number of ``tools/call echo`` requests in flight for a fixed wall-clock window
and validate every answer. Any error makes the whole measurement invalid.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.wire import HttpSession, StdioSession, echo_text, is_echo_result

LUA_SCRIPT = Path(__file__).with_name("echo_load.lua")
# Ids 0 and 1 are taken by initialize and tools/list.
FIRST_LOAD_ID = 1000


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def _percentile(sorted_values: list[int], fraction: float) -> int:
    # Nearest-rank, the same definition wrk's histogram uses.
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def run_stdio_load(
    session: StdioSession, *, concurrency: int, duration_s: float, message: str
) -> LoadResult:
    """Keep ``concurrency`` echo calls in flight on the child's stdin until the window closes,
    then drain the calls still outstanding (they count, their latency too)."""
    # Pre-encoded once: the client must spend as little CPU per call as it can.
    template = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": message}},
        },
        separators=(",", ":"),
    ).replace('"id":0', '"id":%d')
    line_template = template.encode() + b"\n"
    expected = echo_text(message)
    pending: dict[int, int] = {}
    latencies: list[int] = []
    errors = {"bad_answer": 0, "unknown_id": 0}
    next_id = FIRST_LOAD_ID

    def send() -> None:
        nonlocal next_id
        pending[next_id] = time.perf_counter_ns()
        session.send_raw(line_template % next_id)
        next_id += 1

    start = time.perf_counter_ns()
    deadline = start + int(duration_s * 1e9)
    for _ in range(concurrency):
        send()
    while pending:
        answer = session.receive()
        received = time.perf_counter_ns()
        answer_id = answer.get("id")
        sent_at = pending.pop(answer_id, None) if isinstance(answer_id, int) else None
        if sent_at is None:
            errors["unknown_id"] += 1
            continue
        latencies.append(received - sent_at)
        if not is_echo_result(answer, answer_id, expected):
            errors["bad_answer"] += 1
        if received < deadline:
            send()
    elapsed = time.perf_counter_ns() - start
    latencies.sort()
    return LoadResult(
        concurrency=concurrency,
        requests=len(latencies),
        duration_s=elapsed / 1e9,
        p50_ms=_percentile(latencies, 0.50) / 1e6,
        p90_ms=_percentile(latencies, 0.90) / 1e6,
        p99_ms=_percentile(latencies, 0.99) / 1e6,
        errors=errors,
    )


def find_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk (Debian package 'wrk')")
    return wrk


def run_wrk(
    session: HttpSession,
    *,
    concurrency: int,
    duration_s: float,
    message: str,
    threads: int,
) -> LoadResult:
    """Run wrk with ``concurrency`` keep-alive connections, all posting into ``session``."""
    env = {
        **os.environ,
        "BENCH_SESSION_ID": session.session_id or "",
        "BENCH_PROTOCOL_VERSION": session.protocol_version,
        "BENCH_MESSAGE": message,
        "BENCH_EXTRA_HEADERS": "".join(f"{k}: {v}\n" for k, v in session.extra_headers.items()),
    }
    argv = [
        find_wrk(),
        f"--threads={min(threads, concurrency)}",
        f"--connections={concurrency}",
        f"--duration={max(1, round(duration_s))}s",
        "--timeout=10s",
        f"--script={LUA_SCRIPT}",
        session.url,
    ]
    completed = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    result_lines = [
        line for line in completed.stdout.splitlines() if line.startswith("BENCH_RESULT ")
    ]
    if completed.returncode != 0 or len(result_lines) != 1:
        raise RuntimeError(
            f"wrk failed (exit {completed.returncode}): {completed.stderr or completed.stdout}"
        )
    data = json.loads(result_lines[0].removeprefix("BENCH_RESULT "))
    return LoadResult(
        concurrency=concurrency,
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1e3,
        p90_ms=data["p90_us"] / 1e3,
        p99_ms=data["p99_us"] / 1e3,
        errors=data["errors"],
    )
