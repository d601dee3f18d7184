from celery import shared_task

from analysis import housekeeping, services


@shared_task
def fail_stale_analyses() -> int:
    return housekeeping.fail_stale_analyses()


@shared_task
def run_analysis(
    analysis_id: int, use_claude: bool = True, introspect: bool = True, deployment_id: str = ""
) -> None:
    services.run_analysis(
        analysis_id,
        services.Options(
            use_claude=use_claude, introspect=introspect, preflight_deployment=deployment_id
        ),
    )
