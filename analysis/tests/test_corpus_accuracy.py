"""The analyser against the corpus, static layers only: the acceptance bar of the analysis.

Every corpus repository is served by the GitHub stand-in and its package by the registry
stand-in; `python manage.py score_analysis` prints the same score as a table
(docs/analysis-accuracy.md)."""

from __future__ import annotations

import pytest

from analysis.corpus.scoring import CorpusScore, score_corpus

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


@pytest.fixture(scope="module")
def score() -> CorpusScore:
    return score_corpus()


def test_every_server_is_analysed(score):
    failed = {server.slug: server.error for server in score.servers if server.error}
    assert failed == {}
    assert len(score.servers) >= 20


def test_the_package_spec_is_right_for_every_server(score):
    wrong = {
        server.slug: server.package_found for server in score.servers if not server.package_right
    }
    assert wrong == {}


def test_environment_variables_reach_ninety_percent_recall_and_precision(score):
    assert score.recall >= 0.90, f"recall {score.recall:.1%}"
    assert score.precision >= 0.90, f"precision {score.precision:.1%}"


def test_every_variable_that_looks_like_a_credential_is_marked_secret(score):
    missed = {
        server.slug: sorted(server.secrets_expected & server.found - server.secrets_found)
        for server in score.servers
        if server.secrets_expected & server.found - server.secrets_found
    }
    assert score.secret_recall >= 0.90, missed
