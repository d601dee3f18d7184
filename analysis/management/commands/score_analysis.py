"""`python manage.py score_analysis`: score the analyser against the corpus."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandParser
from django.test.utils import override_settings

from analysis.corpus.scoring import markdown, score_corpus
from analysis.tests.github_standin import GitHubStandin
from analysis.tests.registry_standin import RegistryStandin

COMMAND = "python manage.py score_analysis --output docs/analysis-accuracy.md"


class Command(BaseCommand):
    help = (
        "Analyse every corpus repository (served by local GitHub and registry stand-ins, "
        "static layers only) and print the score against the expected results."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output", type=Path, help="Also write the table to this file.")

    def handle(self, *args, **options) -> None:
        github, registry = GitHubStandin(), RegistryStandin()
        try:
            with override_settings(
                GITHUB_API_URL=github.api_url,
                GITHUB_TOKEN="",
                NPM_REGISTRY_URL=registry.npm_url,
                PYPI_URL=registry.pypi_url,
            ):
                score = score_corpus(github, registry)
        finally:
            github.close()
            registry.close()
        table = markdown(score, COMMAND)
        self.stdout.write(table)
        if options["output"]:
            options["output"].write_text(table)
