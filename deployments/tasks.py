from celery import shared_task

from deployments import housekeeping


@shared_task
def prune_tool_calls() -> int:
    return housekeeping.prune_tool_calls()
