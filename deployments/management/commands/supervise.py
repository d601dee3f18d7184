"""`python manage.py supervise`: run this host's MCP servers (see deployments/supervisor.py)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from deployments.supervisor import POLL_SECONDS, Supervisor, SupervisorAlreadyRunning


class Command(BaseCommand):
    help = (
        "Keep the bridges of local deployments in line with the database. SIGTERM or SIGINT "
        "stops every bridge and exits; SIGUSR1 exits leaving them running for the next "
        "supervisor to adopt."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=POLL_SECONDS,
            metavar="SECONDS",
            help=f"Seconds between passes over the database (default {POLL_SECONDS}).",
        )
        parser.add_argument(
            "--leave-running",
            action="store_true",
            help="On SIGTERM/SIGINT exit without stopping the bridges (as SIGUSR1 does).",
        )

    def handle(self, *args, poll_interval: float, leave_running: bool, **options) -> None:
        if not 0.05 <= poll_interval <= 60:
            raise CommandError("--poll-interval must be between 0.05 and 60 seconds")
        try:
            Supervisor(poll_seconds=poll_interval, leave_running=leave_running).run()
        except SupervisorAlreadyRunning as exc:
            raise CommandError(str(exc)) from None
