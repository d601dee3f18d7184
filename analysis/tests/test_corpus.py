"""The analysis corpus is complete and consistent: what the analyser will be scored against."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from analysis.github import parse_repository_url
from deployments.runtimes.base import validate_package

SERVERS = sorted((Path(__file__).resolve().parents[1] / "corpus" / "servers").glob("*.json"))
KEYS = {"slug", "repository", "source", "documentation", "expected", "notes"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_corpus_has_the_shapes_the_issue_asks_for():
    corpus = [load(path) for path in SERVERS]
    registries = Counter(entry["source"]["registry"] for entry in corpus)
    secrets = [entry["expected"]["shape"]["secrets"] for entry in corpus]

    assert len(corpus) >= 20
    assert registries["npm"] >= 5 and registries["pypi"] >= 5
    assert sum(1 for e in corpus if e["expected"]["shape"]["monorepoSubfolder"]) >= 5
    assert 0 in secrets and 1 in secrets and any(count > 1 for count in secrets)
    assert len({entry["slug"] for entry in corpus}) == len(corpus)


@pytest.mark.parametrize("path", SERVERS, ids=lambda path: path.stem)
def test_each_expected_result_is_complete_and_consistent(path):
    entry = load(path)
    expected = entry["expected"]
    package, source = expected["package"], entry["source"]
    variables = expected["environmentVariables"]

    assert set(entry) == KEYS and entry["slug"] == path.stem
    reference = parse_repository_url(entry["repository"])
    assert (reference.subdirectory or None) == expected["shape"]["monorepoSubfolder"]
    assert (package["registryType"], package["identifier"], package["version"]) == (
        source["registry"],
        source["identifier"],
        source["version"],
    )
    validate_package(source["registry"], source["identifier"], source["version"])
    assert package["transport"] == "stdio" and "stdio" in expected["shape"]["transports"]
    assert package["runtimeHint"] == {"npm": "npx", "pypi": "uvx"}[source["registry"]]
    assert expected["shape"]["secrets"] == sum(v["isSecret"] for v in variables)
    names = [v["name"] for v in variables]
    assert len(names) == len(set(names))
    for variable in variables:
        assert {"name", "isRequired", "isSecret", "description"} <= set(variable)
        assert variable["name"].replace("_", "").isalnum() and variable["description"]
