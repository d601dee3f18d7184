"""Untrusted work of a Catwalk that runs on Fly (`FLY_JOBS`): introspection and preflight run
the package in a short-lived machine of its own (the stand-in's machines run the real runner),
never on the worker, and leave nothing behind."""

from __future__ import annotations

import json
import sys

import pytest

from deployments import builds, introspection
from deployments.models import BuildStatus, SourceBuild
from deployments.tests.conftest import FIXTURE_SERVER_ARGS, REPO_ROOT, deploy_fixture_server

pytestmark = pytest.mark.slow

SECRET_VALUE = "sk-live-fly-job-test-5566778899"


@pytest.fixture
def fly_jobs(fly_settings):
    fly_settings.FLY_JOBS = True
    return fly_settings


def introspect(**options) -> introspection.IntrospectionResult:
    return introspection.introspect_package(
        "pypi",
        "catwalk-fixture",
        "",
        entry=sys.executable,
        arguments=FIXTURE_SERVER_ARGS,
        timeout=90,
        **options,
    )


def test_introspection_runs_in_a_throwaway_machine_and_leaves_nothing(fly_jobs, standin):
    result = introspect(environment={"PYTHONPATH": str(REPO_ROOT)})

    assert result.ok, result.error
    assert {"echo", "get-env"} <= {tool["name"] for tool in result.tools}
    assert standin.apps() == []  # the job's app, and with it its machine, is gone
    created = [r for r in standin.requests if r.method == "POST" and r.path == "/v1/apps"]
    assert len(created) == 1 and created[0].body["app_name"].startswith("catwalk-job-")
    (machine,) = [r.body for r in standin.requests if r.path.endswith("/machines")]
    assert machine["config"]["restart"] == {"policy": "no"}
    assert json.loads(machine["config"]["env"]["CATWALK_SERVER_COMMAND"])[0] == sys.executable


def test_a_failing_server_is_diagnosed_from_flys_logs_with_secrets_redacted(fly_jobs, standin):
    script = "import os, sys; print('API_KEY=' + os.environ['API_KEY'] + ' rejected: 401 unauthorized', file=sys.stderr); sys.exit(1)"  # noqa: E501

    result = introspection.introspect_package(
        "pypi",
        "catwalk-fixture",
        "",
        entry=sys.executable,
        arguments=["-c", script],
        environment={"API_KEY": SECRET_VALUE},
        secret_names={"API_KEY"},
        timeout=60,
    )

    assert not result.ok
    assert result.needs_credentials
    assert result.suspect_credentials == ["API_KEY"]
    assert any("401 unauthorized" in line for line in result.stderr_tail), result.stderr_tail
    assert SECRET_VALUE not in json.dumps(result.as_meta())
    for recorded in standin.requests:
        if "/machines" in recorded.path:
            assert SECRET_VALUE not in json.dumps(recorded.body)
    assert standin.apps() == []


def test_a_preflight_runs_the_draft_with_its_stored_credentials_on_fly(
    db, owner, fly_jobs, standin
):
    deployment, _ = deploy_fixture_server(owner, environment={"API_KEY": SECRET_VALUE})

    result = introspection.preflight(deployment, timeout=90)

    assert result.ok, result.error
    secrets_calls = [r.body for r in standin.requests if r.path.endswith("/secrets")]
    assert secrets_calls[0]["values"]["CATWALK_ENV_API_KEY"] == SECRET_VALUE
    assert standin.apps() == []


def test_a_job_machine_that_never_starts_is_a_result_not_a_hang(fly_jobs, standin):
    standin.fail_next("POST", r"/machines$", 422, body="no capacity in this region")

    result = introspect(environment={"PYTHONPATH": str(REPO_ROOT)})

    assert not result.ok
    assert "could not be started on Fly" in result.error
    assert "no capacity in this region" in result.error
    assert standin.apps() == []


def test_builds_fail_with_the_reason_instead_of_running_on_the_platform(db, fly_jobs, tmp_path):
    fly_jobs.DATA_DIR = tmp_path
    build = SourceBuild.objects.create(
        repository="acme/server", commit_sha="a" * 40, recipe={}, recipe_hash="h"
    )

    builds.run_build(build, recipe=None)

    build.refresh_from_db()
    assert build.status == BuildStatus.FAILED
    assert "do not run on this Catwalk's own machines" in build.error
    assert "Deploy it on Fly.io Machines" in build.error
