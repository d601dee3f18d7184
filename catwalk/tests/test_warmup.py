"""A serving process imports every view and freezes its heap before its first request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import gc, json, sys
import catwalk.asgi
print(json.dumps({
    "frozen": gc.get_freeze_count(),
    "tracked": len(gc.get_objects()),
    "views": [m for m in ("deployments.views", "deployments.playground_views",
                          "deployments.oauth_views", "analysis.views") if m in sys.modules],
}))
"""


def test_loading_the_asgi_application_imports_the_views_and_freezes_the_heap(tmp_path):
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "catwalk.settings",
        "CATWALK_DATA_DIR": str(tmp_path),
    }
    completed = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    found = json.loads(completed.stdout.strip().splitlines()[-1])
    assert len(found["views"]) == 4  # imported before any request
    # Nearly everything alive is out of the collector's reach; only what came after is tracked.
    assert found["frozen"] > 50_000
    assert found["tracked"] < found["frozen"] / 10
