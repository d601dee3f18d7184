"""`manage.py mcp_deploy` creates a local deployment, waits for it, prints endpoint and token."""

from __future__ import annotations

import json
import sys

import pytest
from django.core.management import CommandError

from catwalk.testing import make_deployment
from deployments import services
from deployments.models import AccessToken, Credential, Deployment, ProcessModel, hash_token
from deployments.supervisor import instance_lock
from deployments.tests.conftest import (
    FIXTURE_SERVER_ARGS,
    REPO_ROOT,
    call_tool,
    endpoint_of,
    mcp_deploy,
)

pytestmark = pytest.mark.django_db(transaction=True)

FIXTURE = [
    "--package",
    "pypi:mcp",
    "--entry",
    sys.executable,
    *(f"--arg={arg}" for arg in FIXTURE_SERVER_ARGS),
    "--env",
    f"PYTHONPATH={REPO_ROOT}",
]


def test_prints_one_json_line_and_the_deployment_serves_through_its_bridge(
    supervisor, owner, settings
):
    printed = mcp_deploy("--user", "owner", *FIXTURE, "--env", "API_KEY=s3cret", "--name", "tools")

    deployment = Deployment.objects.get(pk=printed["id"])
    assert printed["endpoint"] == f"{settings.PUBLIC_URL}/mcp/{deployment.id}"
    assert AccessToken.objects.get(token_hash=hash_token(printed["token"])).deployment == deployment
    assert deployment.name == "tools"
    credential = Credential.objects.get(deployment=deployment, name="API_KEY")
    assert "s3cret" not in credential.encrypted_value
    environment = json.loads(call_tool(endpoint_of(deployment), "get-env"))
    assert environment["API_KEY"] == "s3cret"


def test_isolated_deployment_runs_one_server_per_session(supervisor, owner):
    printed = mcp_deploy("--user", "owner", *FIXTURE, "--isolated")

    deployment = Deployment.objects.get(pk=printed["id"])
    assert deployment.process_model == ProcessModel.ISOLATED
    assert deployment.name == "mcp"
    assert call_tool(endpoint_of(deployment), "echo", {"message": "solo"}) == "solo"


def test_timeout_reports_the_status_and_the_servers_last_words(supervisor, owner):
    silent = ["--package", "pypi:mcp", "--entry", "/bin/sh", "--arg=-c"]
    silent.append("--arg=echo 'booting forever' >&2; exec sleep 600")

    with pytest.raises(CommandError) as error:
        mcp_deploy("--user", "owner", *silent, "--timeout", "3")

    message = str(error.value)
    assert "not ready within 3 s" in message
    assert "status starting" in message
    assert "booting forever" in message


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--user", "nobody", *FIXTURE], "no user named 'nobody'"),
        (["--user", "owner", "--package", "server-everything"], "is not npm:NAME"),
        (["--user", "owner", "--package", "npm:bad name"], "not a valid npm package name"),
        (["--user", "owner", "--package", "pypi:tool==>1"], "not a PEP 440 version"),
        (["--user", "owner", *FIXTURE, "--env", "NOEQUALS"], "expected NAME=VALUE"),
        (["--user", "owner", *FIXTURE, "--env", "1BAD=x"], "not an environment variable name"),
        (["--user", "owner", *FIXTURE, "--env", "CATWALK_BRIDGE_X=1"], "are reserved"),
        (["--user", "owner", *FIXTURE, "--env", "A=1", "--env", "A=2"], "more than once"),
        (["--user", "owner", *FIXTURE, "--name", "Not A Slug"], "lowercase letters"),
        (["--user", "owner", *FIXTURE, "--entry=--inspect"], "executable name or an absolute"),
        (["--user", "owner", *FIXTURE, "--timeout", "0"], "--timeout must be positive"),
    ],
)
def test_bad_input_is_refused_before_anything_is_created(owner, settings, tmp_path, args, problem):
    settings.DATA_DIR = tmp_path
    with instance_lock(), pytest.raises(CommandError, match=problem):
        mcp_deploy(*args)
    assert not Deployment.objects.exists()


def test_duplicate_name_is_refused(owner, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    make_deployment(owner, name="taken")

    with instance_lock(), pytest.raises(CommandError, match="already has a deployment named"):
        mcp_deploy("--user", "owner", *FIXTURE, "--name", "taken")


def test_refuses_to_deploy_when_no_supervisor_runs(owner, settings, tmp_path):
    settings.DATA_DIR = tmp_path

    with pytest.raises(CommandError, match="no supervisor is running"):
        mcp_deploy("--user", "owner", *FIXTURE)
    assert not Deployment.objects.exists()


def test_default_names_come_from_the_package_and_are_made_unique(owner):
    first, _ = services.create_deployment(
        owner, services.parse_package_spec("npm:@acme/Weather_MCP@1.0.0"), issued_to="t"
    )
    second, _ = services.create_deployment(
        owner, services.parse_package_spec("npm:@other/weather-mcp"), issued_to="t"
    )

    assert (first.name, second.name) == ("weather-mcp", "weather-mcp-2")
