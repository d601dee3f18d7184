"""Celery with no broker server: a task sent by one process runs in a worker process.

Without REDIS_URL the broker is kombu's filesystem transport in the data folder; this starts
a real `celery worker` against it and watches the task's effect in the shared database.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from django.utils import timezone

from catwalk.testing import make_deployment
from deployments.models import ToolCall

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_a_task_sent_here_runs_in_a_separate_worker_process(supervisor_env, owner):
    deployment = make_deployment(owner)
    ToolCall.objects.create(
        deployment=deployment,
        method="tools/call",
        started_at=timezone.now() - timedelta(days=365),
        duration_ms=1,
        outcome="ok",
    )
    queue = Path(supervisor_env["CATWALK_DATA_DIR"]) / "broker"
    for folder in ("queue", "processed", "control"):
        (queue / folder).mkdir(parents=True, exist_ok=True)
    sender = Celery("sender", broker="filesystem://")
    sender.conf.broker_transport_options = {
        "data_folder_in": str(queue / "queue"),
        "data_folder_out": str(queue / "queue"),
        "processed_folder": str(queue / "processed"),
        "control_folder": str(queue / "control"),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "catwalk", "worker", "--pool", "solo",
         "--loglevel", "INFO"],
        cwd=ROOT,
        env=supervisor_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        sender.send_task("deployments.tasks.prune_tool_calls")
        deadline = time.monotonic() + 90
        while ToolCall.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not ToolCall.objects.exists()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
