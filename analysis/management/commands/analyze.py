"""`python manage.py analyze URL`: analyse a GitHub repository and print its server.json."""

from __future__ import annotations

import json
import sys

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string

from analysis import services
from analysis.github import GitHubError, InvalidRepositoryURL
from analysis.models import AnalysisStep


class Command(BaseCommand):
    help = (
        "Analyse https://github.com/OWNER/REPO[/tree/REF/FOLDER] exactly as the web app does "
        "and print the resulting server.json (progress goes to stderr)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("url", help="The repository's GitHub URL.")
        parser.add_argument("--no-llm", action="store_true", help="Skip the Claude layer.")
        parser.add_argument("--no-introspect", action="store_true", help="Do not start the server.")
        parser.add_argument(
            "--user",
            help="Read with this user's own GitHub token (for their private repositories).",
        )

    def handle(self, *args, **options) -> None:
        token, owner_id = "", None
        if options["user"]:
            try:
                user = get_user_model().objects.get(username=options["user"])
            except get_user_model().DoesNotExist:
                raise CommandError(f"no user named {options['user']!r}") from None
            token = import_string(self._token_provider())(user)
            owner_id = user.pk
        try:
            document, sha = services.analyse(
                options["url"],
                services.Options(
                    use_claude=not options["no_llm"], introspect=not options["no_introspect"]
                ),
                github_token=token,
                owner_id=owner_id,
                progress=self._progress,
            )
        except (InvalidRepositoryURL, GitHubError, services.AnalysisFailed) as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"Analysed commit {sha}.")
        json.dump(document, self.stdout, indent=2)
        self.stdout.write("")

    def _progress(self, step: str) -> None:
        self.stderr.write(f"{AnalysisStep(step).label}…")
        sys.stderr.flush()

    @staticmethod
    def _token_provider() -> str:
        from django.conf import settings

        return settings.ANALYSIS_GITHUB_TOKEN_PROVIDER
