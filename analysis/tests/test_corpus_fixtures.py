"""The corpus's repositories, built from the real packages and read back through the real GitHub
client from the stand-in, exactly as an analysis will read them."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator

import pytest

from analysis.corpus import fixtures
from analysis.github import GitHubClient
from analysis.tests.github_standin import GitHubStandin

pytestmark = pytest.mark.slow
SAMPLE = {"modelcontextprotocol-server-everything", "mcp-server-time", "notion-mcp-server"}


@pytest.fixture(scope="module")
def corpus() -> list[fixtures.CorpusEntry]:
    return [entry for entry in fixtures.load_corpus() if entry.slug in SAMPLE]


@pytest.fixture
def standin(settings) -> Iterator[GitHubStandin]:
    running = GitHubStandin()
    settings.GITHUB_API_URL = running.api_url
    settings.GITHUB_TOKEN = ""
    yield running
    running.close()


def test_monorepo_members_share_one_repository_each_in_its_subfolder(corpus, standin, tmp_path):
    published = fixtures.publish(standin, corpus)

    assert set(published) == {
        ("modelcontextprotocol", "servers"),
        ("makenotion", "notion-mcp-server"),
    }
    for entry in corpus:
        ref = entry.ref
        with GitHubClient(ref) as client:
            sha = client.commit_sha(client.repository().default_branch)
            assert sha == published[(ref.owner, ref.name)]
            folder = client.download(sha, tmp_path / entry.slug, ref.subdirectory)
        if entry.registry == "npm":
            manifest = json.loads((folder / "package.json").read_text())
            assert (manifest["name"], manifest["version"]) == (entry.identifier, entry.version)
        else:
            project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
            assert (project["name"], project["version"]) == (entry.identifier, entry.version)


def test_archives_are_downloaded_once(corpus, monkeypatch):
    entry = corpus[0]
    first = fixtures.package_archive(entry)

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(fixtures.subprocess, "run", no_download)
    assert fixtures.package_archive(entry) == first
    assert first.stat().st_size > 0
