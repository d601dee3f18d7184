"""``python -m bench``: run every target side by side; report latency, throughput, CPU, memory.

Per target, in one process tree at a time (never two servers competing for the 2 cores):

1. cold start, ``--cold-starts`` times: spawn → initialize → notifications/initialized →
   ``tools/list`` answered. The last spawn stays up and its session is the one measured next.
2. idle memory: RSS and PSS of the whole tree after ``--idle-seconds`` of quiet.
3. for each concurrency: a ``--duration`` window of ``tools/call echo`` with that many requests in
   flight, CPU of the server tree sampled right before and right after the window.

All connections of a run share the one session opened in step 1 (an MCP client multiplexing its
concurrent calls over a connection pool, as the SDK clients do). This measures the relay's per-call
cost, not session creation, and keeps every relay at exactly one upstream child.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from bench import analysis_static, fly_start, pages, peers, report, sandbox_start, source_build
from bench.load import LoadResult, run_stdio_load, run_wrk
from bench.proctree import (
    ServerProcess,
    TreeMemory,
    machine_busy_seconds,
    own_and_reaped_children_cpu_seconds,
    tree_cpu_seconds,
    tree_memory,
)
from bench.targets import (
    REPO,
    TARGETS,
    StdioTarget,
    Target,
    default_server_command,
    default_target_names,
)
from bench.wire import HttpSession, StdioSession, open_http_session

RESULTS_DIR = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
# Parts of a run, each with its own section of the docs page; --only narrows a run to one.
SECTIONS = ("relay", "sandbox", "analysis", "builds", "pages", "fly")
START_TIMEOUT_S = 60.0


def _clamp_percent(value: float) -> float:
    # /proc/stat ticks every 10 ms, so short samples can land a little outside 0 to 100.
    return min(100.0, max(0.0, value))


@dataclass
class LoadRun:
    load: LoadResult
    server_cpu_s: float
    # The harness itself plus wrk: shows the load generator is not what limits the server.
    generator_cpu_s: float
    # Everything else the machine did meanwhile (other users' jobs), as CPU seconds.
    background_cpu_s: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s / self.load.requests * 1e6 if self.load.requests else 0.0

    @property
    def generator_cpu_us_per_request(self) -> float:
        return self.generator_cpu_s / self.load.requests * 1e6 if self.load.requests else 0.0

    @property
    def background_load_percent(self) -> float:
        """Share of the machine's total CPU capacity used by other processes during the window."""
        capacity = self.load.duration_s * (os.cpu_count() or 1)
        return _clamp_percent(self.background_cpu_s / capacity * 100) if capacity else 0.0


@dataclass
class TargetResult:
    name: str
    description: str
    version: str = ""
    skipped: str | None = None
    failure: str | None = None
    tools_listed: int = 0
    cold_start_ms: list[float] = field(default_factory=list)
    idle_memory: TreeMemory | None = None
    runs: list[LoadRun] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(run.load.error_count for run in self.runs)

    @property
    def valid(self) -> bool:
        return self.skipped is not None or (self.failure is None and self.errors == 0)


@dataclass(frozen=True)
class Settings:
    duration_s: float
    concurrency: tuple[int, ...]
    cold_starts: int
    idle_s: float
    wrk_threads: int
    quiet_percent: float
    quiet_wait_s: float
    server_command: tuple[str, ...]
    logs_dir: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _start(
    target: Target, settings: Settings
) -> tuple[ServerProcess, StdioSession | HttpSession, int]:
    """Spawn the target and open its MCP session; cold start ends when tools/list is answered."""
    log_path = settings.logs_dir / f"{target.name}.log"
    if isinstance(target, StdioTarget):
        server = ServerProcess(settings.server_command, log_path=log_path, stdio=True)
    else:
        port = _free_port()
        server = ServerProcess(
            target.command(port, settings.server_command), log_path=log_path, cwd=target.cwd
        )
    try:
        if isinstance(target, StdioTarget):
            assert server.popen.stdin is not None and server.popen.stdout is not None
            session = StdioSession(server.popen.stdin, server.popen.stdout)
            return server, session, session.initialize()
        path, headers = target.path, dict(target.headers)
        if target.announces_endpoint:
            path, token = _announced_endpoint(log_path, server)
            headers["Authorization"] = f"Bearer {token}"
        http_session, tools = open_http_session(
            f"http://127.0.0.1:{port}{path}",
            headers,
            deadline=time.perf_counter() + START_TIMEOUT_S,
            server_alive=lambda: server.popen.poll() is None,
        )
        return server, http_session, tools
    except BaseException:
        server.stop()
        raise


def _announced_endpoint(log_path: Path, server: ServerProcess) -> tuple[str, str]:
    """The path and token a launcher printed as a JSON line once it serves."""
    deadline = time.perf_counter() + START_TIMEOUT_S
    while time.perf_counter() < deadline:
        if server.popen.poll() is not None:
            raise RuntimeError(f"launcher exited early:\n{_log_tail(log_path)}")
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"token"' in line:
                announced = json.loads(line)
                return urlsplit(announced["url"]).path, announced["token"]
        time.sleep(0.2)
    raise TimeoutError(f"launcher announced no endpoint:\n{_log_tail(log_path)}")


def _background_load_percent(server_pid: int, sample_s: float) -> float:
    """CPU share of the machine used over ``sample_s`` by everything but the benchmark."""
    machine_before = machine_busy_seconds()
    ours_before = tree_cpu_seconds(server_pid) + own_and_reaped_children_cpu_seconds()
    started = time.perf_counter()
    time.sleep(sample_s)
    ours = tree_cpu_seconds(server_pid) + own_and_reaped_children_cpu_seconds() - ours_before
    background = machine_busy_seconds() - machine_before - ours
    capacity = (time.perf_counter() - started) * (os.cpu_count() or 1)
    return _clamp_percent(background / capacity * 100)


def _wait_for_quiet(server_pid: int, settings: Settings) -> None:
    """On a shared machine, start a window only once other processes calm down (or give up
    after ``quiet_wait_s``: the report's "Other load %" column tells what the window suffered)."""
    if settings.quiet_wait_s <= 0:
        return
    deadline = time.perf_counter() + settings.quiet_wait_s
    announced = False
    while (load := _background_load_percent(server_pid, 0.5)) > settings.quiet_percent:
        if time.perf_counter() > deadline:
            print(f"  machine still {load:.0f}% busy with other work; measuring anyway")
            return
        if not announced:
            print(f"  machine {load:.0f}% busy with other work; waiting for it to calm down")
            announced = True


def _load(
    session: StdioSession | HttpSession, concurrency: int, settings: Settings, message: str
) -> LoadResult:
    if isinstance(session, StdioSession):
        return run_stdio_load(
            session, concurrency=concurrency, duration_s=settings.duration_s, message=message
        )
    return run_wrk(
        session,
        concurrency=concurrency,
        duration_s=settings.duration_s,
        message=message,
        threads=settings.wrk_threads,
    )


def measure(target: Target, settings: Settings) -> TargetResult:
    result = TargetResult(name=target.name, description=target.description)
    reason = target.unavailable()
    if reason is not None:
        result.skipped = reason
        return result
    target.install()
    result.version = target.version()
    message = f"catwalk-bench-{secrets.token_hex(6)}"
    server = None
    try:
        cold_start_applies = getattr(target, "cold_start_applies", True)
        for _ in range(settings.cold_starts if cold_start_applies else 1):
            if server is not None:
                server.stop()
                server = None
            server, session, result.tools_listed = _start(target, settings)
            if cold_start_applies:
                result.cold_start_ms.append((time.perf_counter() - server.spawned_at) * 1e3)
        assert server is not None
        time.sleep(settings.idle_s)
        result.idle_memory = tree_memory(server.pid)
        for concurrency in settings.concurrency:
            _wait_for_quiet(server.pid, settings)
            machine_before = machine_busy_seconds()
            generator_before = own_and_reaped_children_cpu_seconds()
            server_before = tree_cpu_seconds(server.pid)
            load = _load(session, concurrency, settings, message)
            server_cpu = tree_cpu_seconds(server.pid) - server_before
            generator_cpu = own_and_reaped_children_cpu_seconds() - generator_before
            machine_busy = machine_busy_seconds() - machine_before
            result.runs.append(
                LoadRun(
                    load=load,
                    server_cpu_s=server_cpu,
                    generator_cpu_s=generator_cpu,
                    background_cpu_s=machine_busy - server_cpu - generator_cpu,
                )
            )
            print(f"  {target.name} c={concurrency}: {report.describe_run(result.runs[-1])}")
    except Exception as exc:  # one broken target must not hide the others' numbers
        tail = _log_tail(settings.logs_dir / f"{target.name}.log")
        result.failure = f"{type(exc).__name__}: {exc}" + (f"\n{tail}" if tail else "")
    finally:
        if server is not None:
            server.stop()
    return result


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--targets",
        default=env("BENCH_TARGETS", ",".join(default_target_names())),
        help=f"comma-separated, from: {', '.join(TARGETS)} (env BENCH_TARGETS)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=float(env("BENCH_DURATION", "10")),
        help="seconds per load window, whole seconds for wrk (env BENCH_DURATION; default 10)",
    )
    parser.add_argument(
        "--concurrency",
        default=env("BENCH_CONCURRENCY", "1,32"),
        help="comma-separated in-flight request counts (env BENCH_CONCURRENCY; default 1,32)",
    )
    parser.add_argument(
        "--cold-starts",
        type=int,
        default=int(env("BENCH_COLD_STARTS", "3")),
        help="spawns timed per target; the median is reported (env BENCH_COLD_STARTS; default 3)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=float(env("BENCH_IDLE_SECONDS", "2")),
        help="quiet time after initialisation before idle memory is sampled (default 2)",
    )
    parser.add_argument(
        "--wrk-threads",
        type=int,
        default=int(env("BENCH_WRK_THREADS", str(os.cpu_count() or 2))),
        help="wrk threads (default: number of CPUs)",
    )
    parser.add_argument(
        "--quiet-percent",
        type=float,
        default=float(env("BENCH_QUIET_PERCENT", "10")),
        help="start a window only when other processes use less than this share of the machine "
        "(default 10)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=float(env("BENCH_QUIET_WAIT", "20")),
        help="seconds to wait for that before measuring anyway (env BENCH_QUIET_WAIT; default 20)",
    )
    parser.add_argument(
        "--server-command",
        default=env("BENCH_SERVER_COMMAND"),
        help="upstream stdio MCP server, shell-quoted (default: server-everything run by node)",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=DOCS,
        help="Markdown file whose results section is replaced (default docs/benchmarks.md)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not touch the docs file")
    parser.add_argument(
        "--sandbox-starts",
        type=int,
        default=int(env("BENCH_SANDBOX_STARTS", "15")),
        help="starts timed with and without the sandbox; 0 skips that part (default 15)",
    )
    parser.add_argument(
        "--fly-starts",
        type=int,
        default=int(env("BENCH_FLY_STARTS", "5")),
        help="Fly runner starts timed per server (the first with downloads); 0 skips (default 5)",
    )
    parser.add_argument(
        "--analysis-repeats",
        type=int,
        default=int(env("BENCH_ANALYSIS_REPEATS", str(analysis_static.REPEATS))),
        help="static analyses timed per corpus server after the cold one; 0 skips that part "
        f"(default {analysis_static.REPEATS})",
    )
    parser.add_argument(
        "--cached-builds",
        type=int,
        default=int(env("BENCH_CACHED_BUILDS", str(source_build.CACHED_REPEATS))),
        help="second deploys timed per fixture repository after its cold build; 0 skips "
        f"builds from source altogether (default {source_build.CACHED_REPEATS})",
    )
    parser.add_argument(
        "--page-requests",
        type=int,
        default=int(env("BENCH_PAGE_REQUESTS", str(pages.REQUESTS))),
        help="measured requests per web page, after the warm-up ones; 0 skips that part "
        f"(env BENCH_PAGE_REQUESTS; default {pages.REQUESTS})",
    )
    parser.add_argument(
        "--page-deployments",
        type=int,
        default=int(env("BENCH_PAGE_DEPLOYMENTS", str(pages.Scale.deployments))),
        help="deployments of the busy user whose pages are timed "
        f"(env BENCH_PAGE_DEPLOYMENTS; default {pages.Scale.deployments})",
    )
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        default=env("BENCH_ONLY"),
        help="run only this section of the benchmark (env BENCH_ONLY; default: all)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=Path(env("BENCH_RESULTS_DIR", str(RESULTS_DIR))),
        help="raw results (<time>.json) and server logs (<time>/logs/) go here "
        "(env BENCH_RESULTS_DIR; default bench/results)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.targets.split(",") if name not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {list(TARGETS)}")
    try:
        args.concurrency = tuple(int(c) for c in args.concurrency.split(","))
    except ValueError:
        parser.error(f"--concurrency must be integers separated by commas: {args.concurrency!r}")
    if args.duration <= 0 or args.cold_starts < 1 or min(args.concurrency) < 1:
        parser.error("--duration, --cold-starts and every concurrency must be positive")
    if args.analysis_repeats < 0:
        parser.error("--analysis-repeats must be 0 (skip) or more")
    if args.cached_builds < 0:
        parser.error("--cached-builds must be 0 (skip) or more")
    if args.page_requests < 0 or args.page_deployments < 1:
        parser.error("--page-requests must be 0 (skip) or more, --page-deployments 1 or more")
    if args.only is not None and args.only not in SECTIONS:  # from BENCH_ONLY, unchecked
        parser.error(f"unknown section {args.only!r}; choose from {list(SECTIONS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    settings = Settings(
        duration_s=args.duration,
        concurrency=args.concurrency,
        cold_starts=args.cold_starts,
        idle_s=args.idle_seconds,
        wrk_threads=args.wrk_threads,
        quiet_percent=args.quiet_percent,
        quiet_wait_s=args.quiet_wait,
        server_command=tuple(
            shlex.split(args.server_command) if args.server_command else default_server_command()
        ),
        logs_dir=args.results_dir / stamp / "logs",
    )
    sections = {args.only} if args.only else set(SECTIONS)
    results = []
    for name in args.targets.split(",") if "relay" in sections else []:
        print(f"{name}: measuring…", flush=True)
        result = measure(TARGETS[name], settings)
        if result.skipped:
            print(f"  {name}: skipped ({result.skipped})")
        if result.failure:
            print(f"  {name}: FAILED {result.failure}")
        results.append(result)

    sandbox_markdown = None
    if args.sandbox_starts and "sandbox" in sections:
        reason = sandbox_start.unavailable()
        if reason:
            print(f"sandbox start: skipped ({reason})")
        else:
            print("sandbox start: measuring…", flush=True)
            peers.ensure_node_peers()
            timings = sandbox_start.measure(settings.server_command, args.sandbox_starts)
            sandbox_markdown = sandbox_start.render(
                timings, settings.server_command, args.sandbox_starts
            )

    analysis, analysis_failed = None, False
    if args.analysis_repeats and "analysis" in sections:
        print("repository analysis: measuring…", flush=True)
        try:
            analysis = analysis_static.measure(*analysis_static.corpus(), args.analysis_repeats)
        except Exception as exc:  # the other sections' numbers still get reported
            print(f"  repository analysis: FAILED {type(exc).__name__}: {exc}")
            analysis_failed = True

    built, builds_failed = None, False
    if args.cached_builds and "builds" in sections:
        if sandbox_start.unavailable():
            print(f"source builds: skipped ({sandbox_start.unavailable()})")
        else:
            print("source builds: measuring (cold builds download from npm and PyPI)…", flush=True)
            try:
                built = source_build.measure(repeats=args.cached_builds)
            except Exception as exc:  # the other sections' numbers still get reported
                print(f"  source builds: FAILED {type(exc).__name__}: {exc}")
                builds_failed = True

    timed_pages, pages_failed = None, False
    if args.page_requests and "pages" in sections:
        print("web pages: measuring (a throwaway database filled in bulk first)…", flush=True)
        try:
            scale = pages.Scale(deployments=args.page_deployments)
            timed_pages = pages.measure(scale, requests=args.page_requests)
        except Exception as exc:  # the other sections' numbers still get reported
            print(f"  web pages: FAILED {type(exc).__name__}: {exc}")
            pages_failed = True
        else:
            for page, failure in timed_pages.failures.items():
                print(f"  web pages: FAILED {page}: {failure}")
            pages_failed = bool(timed_pages.failures)

    fly_cases, fly_failed = None, False
    if args.fly_starts and "fly" in sections:
        if fly_start.unavailable():
            print(f"fly runner start: skipped ({fly_start.unavailable()})")
        else:
            print("fly runner start: measuring (npx downloads from npm)…", flush=True)
            try:
                fly_cases = fly_start.measure(args.fly_starts)
            except Exception as exc:  # the other sections' numbers still get reported
                print(f"  fly runner start: FAILED {type(exc).__name__}: {exc}")
                fly_failed = True

    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    context = report.collect_context(settings, command=command, started=started)
    markdown = report.render(results, context) if "relay" in sections else None
    analysis_markdown = analysis_static.render(analysis, context) if analysis else None
    builds_markdown = source_build.render(built, context) if built else None
    pages_markdown = pages.render(timed_pages, context) if timed_pages else None
    fly_markdown = fly_start.render(fly_cases, context, args.fly_starts) if fly_cases else None
    sections_markdown = (
        markdown,
        sandbox_markdown,
        analysis_markdown,
        builds_markdown,
        pages_markdown,
        fly_markdown,
    )
    for section in sections_markdown:
        if section:
            print()
            print(section)
    json_path = args.results_dir / f"{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps(
            {
                "context": context,
                "results": [report.result_json(r) for r in results],
                "analysis": [row.as_dict() for row in analysis.rows] if analysis else None,
                "builds": [row.as_dict() for row in built] if built else None,
                "pages": timed_pages.as_dict() if timed_pages else None,
                "fly": [case.as_dict() for case in fly_cases] if fly_cases else None,
            },
            indent=2,
        )
    )
    print(f"raw results: {json_path}")
    all_valid = (
        all(result.valid for result in results)
        and not analysis_failed
        and not builds_failed
        and not pages_failed
        and not fly_failed
    )
    if not args.no_docs:
        if all_valid:
            if markdown:
                report.update_docs(args.docs, markdown)
            if sandbox_markdown:
                sandbox_start.update_docs(args.docs, sandbox_markdown)
            if analysis_markdown:
                analysis_static.update_docs(args.docs, analysis_markdown)
            if builds_markdown:
                source_build.update_docs(args.docs, builds_markdown)
            if pages_markdown:
                pages.update_docs(args.docs, pages_markdown)
            if fly_markdown:
                fly_start.update_docs(args.docs, fly_markdown)
            print(f"updated {args.docs}")
        else:
            print(f"not updating {args.docs}: the run has errors and is invalid")
    return 0 if all_valid else 1
