"""The benchmark harness measures what it claims and refuses to publish a run with errors.

Only the direct-stdio target runs here (no wrk, no peers beyond server-everything), for about a
second per window: enough to keep the harness from rotting, and no timing is asserted.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from bench import fly_start, peers, report, sandbox_start
from bench.proctree import ServerProcess, tree_cpu_seconds
from bench.wire import ProtocolError, is_echo_result, messages_from_body

REPO = Path(__file__).resolve().parents[2]
WRONG_ECHO_SERVER = Path(__file__).with_name("wrong_echo_server.py")
DOCS_TEMPLATE = (
    f"# Benchmarks\n\nmethod\n\n{report.BEGIN_MARKER}\nold numbers\n{report.END_MARKER}\n"
)


def run_harness(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--targets=direct-stdio",
            "--duration=1",
            "--cold-starts=1",
            "--idle-seconds=0",
            "--quiet-wait=0",
            f"--results-dir={tmp_path / 'results'}",
            "--sandbox-starts=0",
            "--analysis-repeats=0",
            "--cached-builds=0",
            "--page-requests=0",
            "--fly-starts=0",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    [raw] = (tmp_path / "results").glob("*.json")
    return completed, json.loads(raw.read_text())


@pytest.mark.slow
def test_direct_stdio_run_measures_every_window_and_publishes_the_table(tmp_path):
    peers.ensure_node_peers()
    docs = tmp_path / "benchmarks.md"
    docs.write_text(DOCS_TEMPLATE)

    completed, raw = run_harness(tmp_path, f"--docs={docs}")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    [result] = raw["results"]
    assert result["valid"]
    assert result["tools_listed"] > 0
    assert len(result["cold_start_ms"]) == 1
    assert result["idle_memory"]["rss_bytes"] > 0
    assert [run["load"]["concurrency"] for run in result["runs"]] == [1, 32]
    for run in result["runs"]:
        load = run["load"]
        assert load["requests"] > 0
        assert sum(load["errors"].values()) == 0
        assert load["p50_ms"] <= load["p90_ms"] <= load["p99_ms"]
        assert run["server_cpu_s"] > 0
    published = docs.read_text()
    assert "old numbers" not in published
    assert "| direct stdio (floor) |" in published
    assert published.startswith("# Benchmarks\n\nmethod\n")


def test_wrong_answers_make_the_run_invalid_and_leave_the_docs_alone(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text(DOCS_TEMPLATE)

    completed, raw = run_harness(
        tmp_path, f"--docs={docs}", f"--server-command={sys.executable} {WRONG_ECHO_SERVER}"
    )

    assert completed.returncode == 1
    [result] = raw["results"]
    assert not result["valid"]
    for run in result["runs"]:
        assert run["load"]["errors"]["bad_answer"] == run["load"]["requests"] > 0
    assert "INVALID RUN" in completed.stdout
    assert docs.read_text() == DOCS_TEMPLATE


def test_a_server_that_dies_at_start_is_reported_as_failed(tmp_path):
    completed, raw = run_harness(tmp_path, "--server-command=false", "--no-docs")

    assert completed.returncode == 1
    [result] = raw["results"]
    assert result["failure"].startswith("ProtocolError: the server closed its std")


def test_tree_cpu_includes_descendants_that_already_exited(tmp_path):
    burner = "import time\nwhile time.process_time() < 0.3: pass"
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        subprocess.run([sys.executable, "-c", {burner!r}], check=True)
        print("child reaped", flush=True)
        time.sleep(60)
    """)
    server = ServerProcess([sys.executable, "-c", parent], log_path=tmp_path / "log", stdio=True)
    try:
        assert server.popen.stdout.readline() == b"child reaped\n"
        assert len(psutil.Process(server.pid).children()) == 0
        # /proc counts a reaped child's CPU in 10 ms clock ticks; process_time() is finer, so
        # the burner's 0.3 s may read as 0.29.
        assert tree_cpu_seconds(server.pid) >= 0.29
    finally:
        server.stop()


def test_stop_ends_descendants_that_left_the_process_group(tmp_path):
    escapee = textwrap.dedent("""
        import os, signal, time
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(os.getpid(), flush=True)
        time.sleep(60)
    """)
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", {escapee!r}])
        time.sleep(60)
    """)
    server = ServerProcess([sys.executable, "-c", parent], log_path=tmp_path / "log", stdio=True)
    escapee_pid = int(server.popen.stdout.readline())  # printed once it has left the group

    server.stop(grace_seconds=2)

    assert not psutil.pid_exists(escapee_pid) or (
        psutil.Process(escapee_pid).status() == psutil.STATUS_ZOMBIE
    )


def test_sse_and_json_bodies_yield_the_same_messages():
    message = {"jsonrpc": "2.0", "id": "1-7", "result": {"content": []}}
    as_json = json.dumps(message).encode()
    as_sse = b"event: message\r\nid: 3\r\ndata: " + as_json + b"\r\n\r\n"

    assert messages_from_body("application/json; charset=utf-8", as_json) == [message]
    assert messages_from_body("text/event-stream", as_sse) == [message]
    with pytest.raises(ProtocolError):
        messages_from_body("text/html", b"<html>")


def test_only_the_exact_echo_result_counts_as_an_answer():
    good = {"jsonrpc": "2.0", "id": 5, "result": {"content": [{"type": "text", "text": "Echo: a"}]}}

    assert is_echo_result(good, 5, "Echo: a")
    assert not is_echo_result(good, 6, "Echo: a")
    assert not is_echo_result(good, 5, "Echo: b")
    assert not is_echo_result({**good, "result": {**good["result"], "isError": True}}, 5, "Echo: a")
    assert not is_echo_result({"jsonrpc": "2.0", "id": 5, "error": {"code": -1}}, 5, "Echo: a")


def test_docs_without_markers_are_refused(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")

    with pytest.raises(ValueError, match="markers"):
        report.update_docs(docs, "| table |")


@pytest.mark.slow
def test_sandbox_start_is_measured_and_published_in_its_own_section(tmp_path):
    reason = sandbox_start.unavailable()
    if reason:
        pytest.skip(f"no sandbox here: {reason}")
    peers.ensure_node_peers()
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        DOCS_TEMPLATE + f"\n{sandbox_start.BEGIN_MARKER}\nold\n{sandbox_start.END_MARKER}\n"
    )

    completed, _ = run_harness(tmp_path, f"--docs={docs}", "--sandbox-starts=2")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    section = docs.read_text().split(sandbox_start.BEGIN_MARKER)[1]
    assert "old" not in section
    for label in ("/bin/true, sandboxed", "server to initialize, sandboxed"):
        row = next(line for line in section.splitlines() if line.startswith(f"| {label} |"))
        median = float(row.split("|")[2])
        assert median > 0
    assert "The sandbox adds" in section


@pytest.mark.slow
def test_the_fly_runner_start_is_measured_and_published_in_its_own_section(tmp_path):
    reason = fly_start.unavailable()
    if reason:
        pytest.skip(f"the runner's sandbox cannot run here: {reason}")
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        DOCS_TEMPLATE + f"\n{fly_start.BEGIN_MARKER}\nSTALE TABLE\n{fly_start.END_MARKER}\n"
    )

    completed, raw = run_harness(tmp_path, f"--docs={docs}", "--only=fly", "--fly-starts=1")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    section = docs.read_text().split(fly_start.BEGIN_MARKER)[1]
    assert "STALE TABLE" not in section
    for case in raw["fly"]:
        assert len(case["wall_ms"]) == 1 and case["wall_ms"][0] > 0
        row = next(line for line in section.splitlines() if line.startswith(f"| {case['label']} |"))
        assert int(row.split("|")[-2]) > 0  # the server listed its tools
