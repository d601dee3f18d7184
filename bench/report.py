"""The Markdown report: results table plus the context needed to reproduce it."""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import statistics
import subprocess
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import peers

if TYPE_CHECKING:
    from bench.harness import LoadRun, Settings, TargetResult

REPO = peers.BENCH_DIR.parent
BEGIN_MARKER = "<!-- bench:results:begin -->"
END_MARKER = "<!-- bench:results:end -->"
MIB = 1024 * 1024


def _command_output(argv: list[str], *, failed: str = "unknown") -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    output = (completed.stdout or completed.stderr).strip().splitlines()
    # wrk --version exits 1 after printing its version; anything else failing is unknown.
    return output[0] if output and (completed.returncode == 0 or argv[0] == "wrk") else failed


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass
    return "unknown"


def _optional(version: Any) -> str:
    try:
        return str(version())
    except (OSError, LookupError, ValueError):
        return "not installed"


def collect_context(settings: Settings, *, command: str, started: datetime) -> dict[str, Any]:
    return {
        "command": command,
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": _cpu_model(),
            "memory": _memory_total(),
            "kernel": platform.release(),
        },
        "versions": {
            "python": platform.python_version(),
            "node": _command_output(["node", "--version"]),
            "wrk": _command_output(["wrk", "--version"]).split(" [")[0].removeprefix("wrk "),
            "server-everything": _optional(
                lambda: peers.node_package_version("@modelcontextprotocol/server-everything")
            ),
            "supergateway": _optional(lambda: peers.node_package_version("supergateway")),
            "mcp-proxy": _optional(lambda: peers.python_package_version("mcp-proxy")),
            "catwalk": _command_output(
                ["git", "-C", str(peers.BENCH_DIR), "describe", "--always", "--dirty"],
                failed="uncommitted",
            ),
        },
        "settings": {
            "duration_s": settings.duration_s,
            "concurrency": list(settings.concurrency),
            "cold_starts": settings.cold_starts,
            "idle_s": settings.idle_s,
            "wrk_threads": settings.wrk_threads,
            "quiet_percent": settings.quiet_percent,
            "quiet_wait_s": settings.quiet_wait_s,
            # Paths inside the checkout are shown relative to it, so the docs do not name a machine.
            "server_command": shlex.join(settings.server_command).replace(f"{REPO}/", ""),
        },
    }


def describe_run(run: LoadRun) -> str:
    load = run.load
    errors = f", {load.error_count} ERRORS {load.errors}" if load.error_count else ""
    return (
        f"{load.requests} calls in {load.duration_s:.1f} s = {load.requests_per_second:,.0f}/s, "
        f"p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, "
        f"server CPU {run.cpu_us_per_request:.0f} µs/call, "
        f"load generator CPU {run.generator_cpu_us_per_request:.0f} µs/call, "
        f"other processes {run.background_load_percent:.0f}% of the machine{errors}"
    )


def _floor_cold_start(results: list[TargetResult]) -> float | None:
    for result in results:
        if result.name == "direct-stdio" and result.cold_start_ms:
            return statistics.median(result.cold_start_ms)
    return None


def _cold_start_cell(result: TargetResult, floor_ms: float | None) -> str:
    if not result.cold_start_ms:
        return "n/a (whole stack)"
    median = statistics.median(result.cold_start_ms)
    cell = f"{median:.0f}"
    if floor_ms is not None and result.name != "direct-stdio":
        cell += f" ({median - floor_ms:+.0f})"
    return cell


def render(results: list[TargetResult], context: dict[str, Any]) -> str:
    concurrency = context["settings"]["concurrency"]
    header = ["Target"]
    for c in concurrency:
        header += [f"c={c} req/s", f"c={c} p50 / p90 / p99 ms", f"c={c} server CPU µs/call"]
    header += ["Errors", "Idle RSS / PSS MiB", "Cold start ms", "Other load %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    floor_ms = _floor_cold_start(results)
    for result in results:
        name = f"{result.description}" + (f" {result.version}" if result.version else "")
        if result.skipped or result.failure or len(result.runs) != len(concurrency):
            why = result.skipped and f"skipped: {result.skipped}"
            why = why or f"FAILED: {(result.failure or 'incomplete').splitlines()[0]}"
            lines.append(f"| {name} | {why} |" + " |" * (len(header) - 2))
            continue
        row = [name]
        for run in result.runs:
            load = run.load
            row += [
                f"{load.requests_per_second:,.0f}",
                f"{load.p50_ms:.2f} / {load.p90_ms:.2f} / {load.p99_ms:.2f}",
                f"{run.cpu_us_per_request:.0f}",
            ]
        memory = result.idle_memory
        assert memory is not None
        row += [
            str(result.errors) if result.errors else "0",
            f"{memory.rss_bytes / MIB:.0f} / {memory.pss_bytes / MIB:.0f}"
            f" ({memory.processes} proc)",
            _cold_start_cell(result, floor_ms),
            f"{max(run.background_load_percent for run in result.runs):.0f}",
        ]
        lines.append("| " + " | ".join(row) + " |")

    settings, machine, versions = context["settings"], context["machine"], context["versions"]
    invalid = [r.name for r in results if not r.valid]
    notes = [
        "",
        f"- Command: `{context['command']}` — {context['date']}",
        f"- Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} RAM, "
        f"Linux {machine['kernel']}",
        "- Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()),
        f"- Upstream server: `{settings['server_command']}`",
        f"- Windows of {settings['duration_s']:g} s per concurrency, no warm-up; HTTP load by wrk "
        f"with {settings['wrk_threads']} threads; cold start is the median of "
        f"{settings['cold_starts']} spawns, (+N) is the extra over the direct-stdio `node` start; "
        f"each window waits (up to {settings['quiet_wait_s']:g} s) for other processes to use "
        f"less than {settings['quiet_percent']:g}% of the machine.",
    ]
    notes.append(
        "- Other load %: CPU used by processes outside the benchmark during the noisiest window, "
        "as a share of the whole machine; above ~5% the latency and throughput columns of that "
        "row are disturbed (CPU per call much less so)."
    )
    if invalid:
        notes.append(f"- **INVALID RUN**: errors or failures in {', '.join(invalid)}.")
    return "\n".join(lines + notes) + "\n"


def result_json(result: TargetResult) -> dict[str, Any]:
    data = asdict(result)
    data["valid"] = result.valid
    for run_data, run in zip(data["runs"], result.runs, strict=True):
        run_data["requests_per_second"] = run.load.requests_per_second
        run_data["cpu_us_per_request"] = run.cpu_us_per_request
        run_data["generator_cpu_us_per_request"] = run.generator_cpu_us_per_request
        run_data["background_load_percent"] = run.background_load_percent
    return data


def provenance(
    context: dict[str, Any], versions: tuple[str, ...] = ("python", "catwalk")
) -> list[str]:
    """The command, date, machine and the named versions behind a table, as its notes' lines."""
    machine, found = context["machine"], context["versions"]
    listed = ", ".join(f"{name} {found[name]}" for name in versions)
    return [
        f"- Command: `{context['command']}` — {context['date']}",
        f"- Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} RAM, "
        f"Linux {machine['kernel']}; {listed}",
    ]


def update_docs(path: Path, markdown: str) -> None:
    """Replace what lies between the relay result markers of ``path`` with ``markdown``."""
    replace_section(path, BEGIN_MARKER, END_MARKER, markdown, trailing_newline=False)


def replace_section(
    path: Path, begin_marker: str, end_marker: str, markdown: str, *, trailing_newline: bool = True
) -> None:
    """Replace what lies between one section's markers of ``path`` with ``markdown``."""
    text = path.read_text()
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin < 0 or end < begin:
        raise ValueError(f"{path} lacks the {begin_marker} … {end_marker} markers")
    tail = "\n" if trailing_newline else ""
    path.write_text(text[: begin + len(begin_marker)] + "\n" + markdown + tail + text[end:])
