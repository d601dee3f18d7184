"""`python manage.py score_analysis`: score the analyser against the corpus."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandParser

from analysis.corpus.scoring import markdown, score_corpus

COMMAND = "python manage.py score_analysis --output docs/analysis-accuracy.md"


class Command(BaseCommand):
    help = (
        "Analyse every corpus repository (served by local GitHub and registry stand-ins, "
        "static layers only) and print the score against the expected results."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output", type=Path, help="Also write the table to this file.")

    def handle(self, *args, **options) -> None:
        table = markdown(score_corpus(), COMMAND)
        self.stdout.write(table)
        if options["output"]:
            options["output"].write_text(table)
