"""Redeploying a source deployment at a newer commit under a steady stream of calls: the new
version serves new sessions once it answers, open sessions finish on the old one, no call fails;
a build that fails leaves the running version serving; a rollback switches back."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from analysis import services as analysis_services
from analysis.serverjson import meta
from analysis.tests.github_standin import GitHubStandin
from deployments import builds, redeploy, services
from deployments.models import Deployment, EventKind
from deployments.tests.conftest import call_tool, endpoint_of, mcp_client

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
SWITCH_TIMEOUT_SECONDS = 240


def versioned(answer: str, requirement: str = "mcp==2.3.0") -> dict[str, bytes]:
    """A tiny stdio server built from requirements.txt whose `echo` says which version runs."""
    server = f'''from mcp.server.mcpserver import MCPServer

server = MCPServer("versioned")


@server.tool()
def echo(message: str) -> str:
    return "{answer}:" + message


def main() -> None:
    server.run()
'''
    return {
        "requirements.txt": f"{requirement}\n".encode(),
        "versioned/__init__.py": b"",
        "versioned/server.py": server.encode(),
        "versioned/__main__.py": b"from versioned.server import main\n\nmain()\n",
    }


def start_redeploy(deployment: Deployment, owner):
    """Redeploy, and build the new commit here, as the worker the page queues it for would."""
    build, mine = redeploy.redeploy(deployment, owner)
    if mine:
        builds.build_claimed(build.pk)
    return build


class Load:
    """Callers that keep calling `echo` — each with a session of its own per call, and one on a
    session it keeps — and record every answer and every failure."""

    def __init__(self, deployment: Deployment, callers: int = 3) -> None:
        self.endpoint = endpoint_of(deployment)
        self.answers: list[tuple[float, str]] = []
        self.kept_answers: list[str] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._calls, daemon=True) for _ in range(callers)]
        self.threads.append(threading.Thread(target=self._kept_session, daemon=True))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _calls(self) -> None:
        while not self.stopping.is_set():
            try:
                self.answers.append(
                    (time.monotonic(), call_tool(self.endpoint, "echo", {"message": "x"}))
                )
            except Exception as exc:  # every failure counts
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def _kept_session(self) -> None:
        async def run() -> None:
            async with mcp_client(self.endpoint) as client:
                while not self.stopping.is_set():
                    result = await client.call_tool("echo", {"message": "kept"})
                    if result.is_error:
                        self.failures.append(f"kept session: {result.content}")
                    else:
                        self.kept_answers.append(result.content[0].text)
                    await anyio.sleep(0.05)

        try:
            anyio.run(run)
        except Exception as exc:
            self.failures.append(f"kept session: {type(exc).__name__}: {exc}")


def deploy_version_one(github: GitHubStandin, owner) -> Deployment:
    sha = github.add_repository("acme", "versioned", versioned("v1"))
    document, _ = analysis_services.analyse(
        "https://github.com/acme/versioned",
        analysis_services.Options(use_claude=False, introspect=False),
    )
    build = builds.ensure_build("acme/versioned", "", sha, meta(document)["source"], user=owner)
    deployment, _ = services.create_deployment(
        owner, services.source_package(build), source_build=build, issued_to="tests"
    )
    services.wait_until_ready(deployment, timeout=180)
    return deployment


def wait_for(deployment: Deployment, predicate, what: str) -> Deployment:
    deadline = time.monotonic() + SWITCH_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        deployment.refresh_from_db()
        if predicate(deployment):
            return deployment
        time.sleep(0.2)
    events = list(deployment.events.values_list("message", flat=True)[:10])
    pytest.fail(f"{what} did not happen; events: {events}")


def test_a_redeploy_under_load_fails_no_call_and_a_rollback_switches_back(
    supervisor, owner, github
):
    deployment = deploy_version_one(github, owner)
    first_build = deployment.source_build
    newer = github.add_repository("acme", "versioned", versioned("v2"))

    with Load(deployment) as load:
        time.sleep(1.0)
        next_build = start_redeploy(deployment, owner)
        deployment = wait_for(
            deployment, lambda d: d.source_build_id == next_build.pk, "the switch to v2"
        )
        switched_at = time.monotonic()
        time.sleep(2.0)

    assert load.failures == []
    assert next_build.commit_sha == newer
    assert deployment.previous_build == first_build
    assert deployment.package_version == newer[:12]
    assert {answer for _, answer in load.answers} == {"v1:x", "v2:x"}
    assert all(answer == "v2:x" for at, answer in load.answers if at > switched_at + 0.5)
    # The session opened before the switch kept its version to the end, without an error.
    assert set(load.kept_answers) == {"v1:kept"}

    with Load(deployment, callers=2) as load:
        redeploy.rollback(deployment, owner)
        deployment = wait_for(
            deployment, lambda d: d.source_build_id == first_build.pk, "the rollback"
        )
        time.sleep(1.0)

    assert load.failures == []
    assert call_tool(endpoint_of(deployment), "echo", {"message": "y"}) == "v1:y"


def test_a_redeploy_whose_build_fails_leaves_the_running_version_serving(supervisor, owner, github):
    deployment = deploy_version_one(github, owner)
    github.add_repository(
        "acme", "versioned", versioned("v3", requirement="catwalk-no-such-package==0.0.1")
    )

    with Load(deployment, callers=1) as load:
        start_redeploy(deployment, owner)
        deployment = wait_for(deployment, lambda d: d.next_build_id is None, "giving up")
        time.sleep(0.5)

    assert load.failures == []
    assert {answer for _, answer in load.answers} == {"v1:x"}
    failure = deployment.events.filter(kind=EventKind.ERROR).latest("created_at")
    assert "The redeploy failed: the new build failed" in failure.message
    assert deployment.source_build.status == "succeeded"
