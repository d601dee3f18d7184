"""CPU and memory of a server's whole process tree, and starting/stopping that tree.

CPU accounting: the total for a tree is, over every live process in it, user + system time plus
``children_user`` + ``children_system`` (the time of descendants that process has already reaped).
A descendant that exits and is reaped by a tree member between two samples therefore moves from
the first term to the second without being lost. What is lost: a descendant re-parented outside
the tree (a daemonising grandchild reaped by init or a subreaper). None of the benchmarked servers
does that during a measurement window; the report states the rule.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


def _tree(root_pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds spent so far by the tree under ``root_pid`` (see module doc)."""
    total = 0.0
    for proc in _tree(root_pid):
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (all CPUs, all processes) since boot.

    The benchmark shares the box with whatever else runs on it; the busy time left over after the
    server tree and the load generator is that background noise, reported next to the numbers.
    """
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already counted in user]
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def own_and_reaped_children_cpu_seconds() -> float:
    """CPU of this process plus its reaped children (wrk, once ``subprocess.run`` returns)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime


@dataclass(frozen=True)
class TreeMemory:
    processes: int
    rss_bytes: int
    # PSS splits shared pages (node's binary, Python's libs) between the processes mapping them,
    # so unlike RSS it adds up correctly across a tree.
    pss_bytes: int


def tree_memory(root_pid: int) -> TreeMemory:
    """Resident memory of every live process in the tree under ``root_pid``."""
    count = rss = pss = 0
    for proc in _tree(root_pid):
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        count += 1
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return TreeMemory(processes=count, rss_bytes=rss, pss_bytes=pss)


class ServerProcess:
    """A server started in its own process group, so that it and everything it spawns can be
    signalled together and nothing outlives the benchmark."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdio: bool = False,
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.spawned_at = time.perf_counter()
        self.popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdio else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdio else self._log,
            stderr=self._log,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Close stdin, SIGTERM the group, SIGKILL whatever is left, and reap."""
        members = _tree(self.pid)
        if self.popen.stdin is not None:
            # The child may have closed its end already: a broken pipe is expected then.
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        self._signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.popen.wait(timeout=grace_seconds)
        # Members that left the group (setsid) are still ours: end them by pid.
        _gone, alive = psutil.wait_procs(members, timeout=grace_seconds)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(alive, timeout=grace_seconds)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group has already exited
            os.killpg(self.pid, sig)
