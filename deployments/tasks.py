import time

from celery import shared_task

from deployments import builds, housekeeping
from deployments.github_tokens import github_token_for
from deployments.models import FlyApp, SourceBuild
from deployments.runtimes import fly
from deployments.runtimes.local import nudge_supervisor


@shared_task
def prune_tool_calls() -> int:
    return housekeeping.prune_tool_calls()


@shared_task
def prune_playground_tokens() -> int:
    return housekeeping.prune_playground_tokens()


@shared_task
def fail_abandoned_builds() -> int:
    return housekeeping.fail_abandoned_builds()


@shared_task
def build_source(build_id: int) -> None:
    """Build a claimed source build with its requester's GitHub token, then wake the supervisor
    so the deployments waiting for it start (or fail with its error)."""
    build = SourceBuild.objects.select_related("requested_by").get(pk=build_id)
    token = github_token_for(build.requested_by) if build.requested_by else ""
    builds.build_claimed(build_id, token)
    nudge_supervisor()


@shared_task
def fly_sync(deployment_id: str) -> None:
    """Make Fly match one deployment (deployments/runtimes/fly.py); runs again shortly while
    its machine is starting or stopping. Takes the id only: secrets never travel in a task."""
    outcome = fly.sync(deployment_id)
    # Run eagerly (no worker), a countdown would not wait: wait here instead.
    while outcome.again is not None and fly_sync.app.conf.task_always_eager:
        time.sleep(outcome.again)
        outcome = fly.sync(deployment_id)
    if outcome.again is not None:
        fly_sync.apply_async((deployment_id,), countdown=outcome.again)


@shared_task
def fly_reconcile_all() -> int:
    """Compare every Fly deployment (and every deleted one not yet torn down) with Fly."""
    keys = [str(key) for key in FlyApp.objects.values_list("deployment_key", flat=True)]
    for key in keys:
        fly_sync.delay(key)
    return len(keys)
