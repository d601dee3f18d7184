from celery import shared_task

from deployments import builds, housekeeping
from deployments.github_tokens import github_token_for
from deployments.models import SourceBuild
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
