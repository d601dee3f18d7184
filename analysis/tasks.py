from celery import shared_task

from analysis import housekeeping


@shared_task
def fail_stale_analyses() -> int:
    return housekeeping.fail_stale_analyses()
