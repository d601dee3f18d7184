"""What the sandbox adds to an MCP server's start.

The same server command is started many times, alternately as it is and through the sandbox
launcher (`mcpgateway/sandbox.py`) with the profile the local runtime would write, and timed
from spawn to its answer to `initialize`. A trivial program (`/bin/true`, spawn to exit) shows
the launcher's own cost without the server's. The CPU time of each start's whole process tree
(launcher, bubblewrap, slirp4netns, nft, the server, and what they reaped) is read from /proc at
the moment the answer arrives, or from the reaped-children accounting for `/bin/true`.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import peers, report
from bench.proctree import tree_cpu_seconds

INITIALIZE = (
    json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "catwalk-bench", "version": "1"},
            },
        }
    )
    + "\n"
).encode()
UNCAPPED = "server to initialize, sandboxed, CPU not capped"
BEGIN_MARKER = "<!-- bench:sandbox-start:begin -->"
END_MARKER = "<!-- bench:sandbox-start:end -->"


@dataclass
class Timings:
    label: str
    wall_ms: list[float]
    cpu_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def p90(self) -> float:
        return statistics.quantiles(self.wall_ms, n=10)[-1]

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_ms)


def unavailable() -> str | None:
    """Why the sandbox cannot be measured here, or None."""
    _setup_django()
    from deployments.runtimes import sandbox

    check = sandbox.check()
    return None if check.enabled else check.problem


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catwalk.settings")
    os.environ.setdefault("CATWALK_DATA_DIR", tempfile.mkdtemp(prefix="catwalk-bench-"))
    import django

    django.setup()


def _profile(folder: Path, *, cpu_capped: bool = True) -> Path:
    """The profile the local runtime writes, with the benchmark's server readable."""
    from django.conf import settings

    from deployments.runtimes import sandbox
    from deployments.runtimes.local import SANDBOX_BINDS, SANDBOX_HOME

    data = sandbox.profile(
        name="bench",
        uid=settings.SANDBOX_UID_BASE + 999_999,
        area=folder / "area",
        binds=SANDBOX_BINDS,
        caches={},
        environment_file=folder / "env",
    )
    sandbox.write_environment(
        folder / "env", {"PATH": "/usr/bin:/bin", "HOME": SANDBOX_HOME, "LANG": "C.UTF-8"}
    )
    data["readonly"].append(str(peers.PEERS))
    if not cpu_capped:
        data["limits"]["cpus"] = float(os.cpu_count() or 1)
    path = folder / ("profile.json" if cpu_capped else "profile-uncapped.json")
    sandbox.write_profile(path, data)
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _start_once(argv: Sequence[str], *, answer: bool) -> tuple[float, float]:
    """Spawn; for a server, send initialize and wait for the answer. (wall ms, tree CPU ms)."""
    cpu_before = _children_cpu()
    started = time.perf_counter()
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "HOME": "/home/server", "LANG": "C.UTF-8"},
    )
    assert process.stdin is not None and process.stdout is not None
    if answer:
        process.stdin.write(INITIALIZE)
        process.stdin.flush()
        while True:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"{argv[-3:]} exited before answering initialize")
            if b'"id":1' in line.replace(b" ", b""):
                break
        elapsed = (time.perf_counter() - started) * 1000
        cpu_ms = tree_cpu_seconds(process.pid) * 1000
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait()
    else:
        process.stdin.close()
        process.wait()
        elapsed = (time.perf_counter() - started) * 1000
        cpu_ms = (_children_cpu() - cpu_before) * 1000
    return elapsed, cpu_ms


def measure(server_command: Sequence[str], starts: int = 15) -> list[Timings]:
    import sys

    _setup_django()
    from deployments.runtimes import sandbox

    with tempfile.TemporaryDirectory(prefix="cwsb") as folder:

        def launcher(profile: Path) -> list[str]:
            return [sys.executable, "-I", "-S", str(sandbox.LAUNCHER), "--profile", str(profile)]

        capped, uncapped = (
            launcher(_profile(Path(folder))),
            launcher(_profile(Path(folder), cpu_capped=False)),
        )
        cases = [
            ("/bin/true, plain", ["/bin/true"], False),
            ("/bin/true, sandboxed", [*capped, "--", "/bin/true"], False),
            ("server to initialize, plain", list(server_command), True),
            ("server to initialize, sandboxed", [*capped, "--", *server_command], True),
            (UNCAPPED, [*uncapped, "--", *server_command], True),
        ]
        results = {label: Timings(label, [], []) for label, _, _ in cases}
        for argv, answer in ((argv, answer) for _, argv, answer in cases):
            _start_once(argv, answer=answer)  # warm the page cache; not counted
        for _ in range(starts):
            for label, argv, answer in cases:  # interleaved, so drift hits all alike
                wall, cpu = _start_once(argv, answer=answer)
                results[label].wall_ms.append(wall)
                results[label].cpu_ms.append(cpu)
    return list(results.values())


def render(timings: list[Timings], server_command: Sequence[str], starts: int) -> str:
    by_label = {t.label: t for t in timings}
    lines = [
        "| Start | median ms | p90 ms | CPU ms (median, whole tree) |",
        "|---|---|---|---|",
    ]
    for t in timings:
        lines.append(f"| {t.label} | {t.median:.1f} | {t.p90:.1f} | {t.cpu_median:.1f} |")
    true_added = by_label["/bin/true, sandboxed"].median - by_label["/bin/true, plain"].median
    plain = by_label["server to initialize, plain"].median
    server_added = by_label["server to initialize, sandboxed"].median - plain
    machinery = by_label[UNCAPPED].median - plain
    lines += [
        "",
        f"- The sandbox adds **{server_added:.0f} ms** (median) to the server's start with the "
        f"default limits, of which **{machinery:.0f} ms** is the sandbox itself (the same start "
        "with the CPU limit lifted) and the rest the one-core CPU limit slowing a start that "
        f"would use more; {true_added:.0f} ms to a program that does nothing. Target: under "
        "100 ms.",
        f"- {starts} starts of each, interleaved, after one unmeasured warm-up start each. "
        f"Server: `{' '.join(Path(a).name if '/' in a else a for a in server_command)}`.",
    ]
    return "\n".join(lines)


def update_docs(path: Path, markdown: str) -> None:
    report.replace_section(path, BEGIN_MARKER, END_MARKER, markdown)
