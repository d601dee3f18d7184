"""Looking packages up on npm and PyPI: the real client against a local stand-in."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from analysis.registry import (
    InvalidPackageName,
    PublishedVersion,
    RegistryClient,
    RegistryError,
    RegistryUnavailable,
    reachable_repository,
)
from analysis.tests.registry_standin import RegistryStandin

EVERYTHING = "@modelcontextprotocol/server-everything"
SERVERS = "https://github.com/modelcontextprotocol/servers"


@pytest.fixture(scope="module")
def running_standin() -> Iterator[RegistryStandin]:
    server = RegistryStandin()
    yield server
    server.close()


@pytest.fixture
def standin(running_standin: RegistryStandin, settings) -> RegistryStandin:
    running_standin.reset()
    settings.NPM_REGISTRY_URL = running_standin.npm_url
    settings.PYPI_URL = running_standin.pypi_url
    return running_standin


@pytest.fixture
def registry(standin: RegistryStandin) -> Iterator[RegistryClient]:
    with RegistryClient() as client:
        yield client


@pytest.fixture
def everything(standin: RegistryStandin) -> None:
    repository = {"type": "git", "url": "git+https://github.com/modelcontextprotocol/servers.git"}
    standin.add_npm(
        EVERYTHING,
        {
            "1.0.0": {"bin": {"mcp-server-everything": "dist/index.js"}, "repository": repository},
            "2.0.0": {"bin": {"mcp-server-everything": "dist/index.js"}, "repository": repository},
            "3.0.0-beta.1": {"bin": "dist/index.js", "repository": repository},
        },
        latest="2.0.0",
    )


@pytest.fixture
def time_server(standin: RegistryStandin) -> None:
    standin.add_pypi(
        "mcp-server-time",
        ["0.5.0", "0.6.2", "0.7.0rc1"],
        latest="0.6.2",
        project_urls={"Source": f"{SERVERS}/tree/main/src/time"},
    )


# --- npm ----------------------------------------------------------------------------------------


def test_npm_without_a_version_resolves_the_latest_dist_tag(registry, everything) -> None:
    assert registry.lookup("npm", EVERYTHING) == PublishedVersion(
        registry="npm",
        identifier=EVERYTHING,
        version="2.0.0",
        latest="2.0.0",
        repository_url=SERVERS,
        executables=("mcp-server-everything",),
    )


def test_npm_exact_version_is_returned_with_the_current_latest(registry, everything) -> None:
    published = registry.lookup("npm", EVERYTHING, "1.0.0")
    assert published is not None
    assert (published.version, published.latest) == ("1.0.0", "2.0.0")


def test_npm_dist_tag_resolves_to_the_version_it_points_at(registry, standin, everything) -> None:
    standin.tag_npm(EVERYTHING, "next", "3.0.0-beta.1")
    published = registry.lookup("npm", EVERYTHING, "next")
    assert published is not None
    assert published.version == "3.0.0-beta.1"


def test_npm_missing_version_is_none(registry, everything) -> None:
    assert registry.lookup("npm", EVERYTHING, "9.9.9") is None


def test_npm_unknown_package_is_none(registry, standin) -> None:
    assert registry.lookup("npm", "no-such-package") is None
    assert standin.requests == ["/no-such-package"]


def test_npm_unpublished_package_is_none(registry, standin, everything) -> None:
    standin.unpublish_npm(EVERYTHING)
    assert registry.lookup("npm", EVERYTHING) is None


def test_npm_scoped_name_is_sent_with_its_slash_percent_encoded(
    registry, standin, everything
) -> None:
    registry.lookup("npm", EVERYTHING)
    assert standin.requests == ["/@modelcontextprotocol%2Fserver-everything"]


def test_npm_string_bin_is_one_executable_named_after_the_package_without_scope(
    registry, everything
) -> None:
    published = registry.lookup("npm", EVERYTHING, "3.0.0-beta.1")
    assert published is not None
    assert published.executables == ("server-everything",)


def test_npm_bin_object_gives_every_command_name(registry, standin) -> None:
    standin.add_npm("tools", {"1.0.0": {"bin": {"tool-a": "a.js", "tool-b": "b.js"}}})
    published = registry.lookup("npm", "tools")
    assert published is not None
    assert published.executables == ("tool-a", "tool-b")


def test_npm_package_without_bin_has_no_executables(registry, standin) -> None:
    standin.add_npm("library", {"1.0.0": {}})
    published = registry.lookup("npm", "library")
    assert published is not None
    assert (published.executables, published.repository_url) == ((), "")


@pytest.mark.parametrize(
    ("repository", "expected"),
    [
        ({"type": "git", "url": "git+https://github.com/acme/weather.git"}, "acme/weather"),
        ({"type": "git", "url": "git://github.com/acme/weather.git"}, "acme/weather"),
        ({"type": "git", "url": "git+ssh://git@github.com/acme/weather.git"}, "acme/weather"),
        ({"type": "git", "url": "https://github.com/acme/weather/tree/main/x"}, "acme/weather"),
        ({"url": "https://www.github.com/acme/weather#readme", "directory": "x"}, "acme/weather"),
        ("git@github.com:acme/weather.git", "acme/weather"),
        ("github:acme/weather", "acme/weather"),
        ("acme/weather", "acme/weather"),
        ("https://github.com/Acme/Weather", "Acme/Weather"),
    ],
)
def test_npm_repository_pointing_at_github_is_normalised(
    registry, standin, repository, expected
) -> None:
    standin.add_npm("weather", {"1.0.0": {"repository": repository}})
    published = registry.lookup("npm", "weather")
    assert published is not None
    assert published.repository_url == f"https://github.com/{expected}"


@pytest.mark.parametrize(
    ("repository", "expected"),
    [
        ({"type": "git", "url": "https://gitlab.com/acme/weather.git"}, ""),
        ("gitlab:acme/weather", ""),
        ("https://github.com/acme", ""),
        ({"type": "git"}, ""),
        (["not", "a", "repository"], ""),
    ],
)
def test_npm_repository_elsewhere_is_kept_as_declared(
    registry, standin, repository, expected
) -> None:
    standin.add_npm("weather", {"1.0.0": {"repository": repository}})
    published = registry.lookup("npm", "weather")
    assert published is not None
    declared = repository.get("url", "") if isinstance(repository, dict) else repository
    assert published.repository_url == (declared if isinstance(declared, str) else expected)


def test_npm_version_without_repository_falls_back_to_the_packuments(registry, standin) -> None:
    standin.add_npm(
        "weather",
        {"1.0.0": {}, "2.0.0": {"repository": "github:acme/weather"}},
    )
    published = registry.lookup("npm", "weather", "1.0.0")
    assert published is not None
    assert published.repository_url == "https://github.com/acme/weather"


# --- PyPI ---------------------------------------------------------------------------------------


def test_pypi_without_a_version_resolves_the_projects_latest(registry, time_server) -> None:
    assert registry.lookup("pypi", "mcp-server-time") == PublishedVersion(
        registry="pypi",
        identifier="mcp-server-time",
        version="0.6.2",
        latest="0.6.2",
        repository_url=SERVERS,
        executables=(),
    )


def test_pypi_exact_version_is_read_from_its_own_endpoint(registry, standin, time_server) -> None:
    published = registry.lookup("pypi", "mcp-server-time", "0.5.0")
    assert published is not None
    assert (published.version, published.latest) == ("0.5.0", "0.6.2")
    assert standin.requests == ["/pypi/mcp-server-time/json", "/pypi/mcp-server-time/0.5.0/json"]


def test_pypi_missing_version_is_none(registry, time_server) -> None:
    assert registry.lookup("pypi", "mcp-server-time", "9.9.9") is None


def test_pypi_unknown_project_is_none(registry, standin) -> None:
    assert registry.lookup("pypi", "no-such-project") is None
    assert standin.requests == ["/pypi/no-such-project/json"]


def test_pypi_name_is_followed_to_the_projects_own_spelling(registry, standin, time_server) -> None:
    published = registry.lookup("pypi", "MCP_Server-Time", "0.5.0")
    assert published is not None
    assert published.identifier == "mcp-server-time"
    assert standin.requests == [
        "/pypi/MCP_Server-Time/json",
        "/pypi/mcp-server-time/json",
        "/pypi/mcp-server-time/0.5.0/json",
    ]


def test_pypi_repository_comes_from_the_requested_release(registry, standin) -> None:
    standin.add_pypi(
        "weather",
        {"1.0": {"project_urls": {"Source": "https://github.com/old/weather"}}, "2.0": {}},
        project_urls={"Source": "https://github.com/acme/weather"},
    )
    old = registry.lookup("pypi", "weather", "1.0")
    new = registry.lookup("pypi", "weather")
    assert old is not None and new is not None
    assert old.repository_url == "https://github.com/old/weather"
    assert new.repository_url == "https://github.com/acme/weather"


@pytest.mark.parametrize(
    ("project_urls", "home_page", "expected"),
    [
        ({"Source": "https://github.com/acme/weather"}, "", "https://github.com/acme/weather"),
        (
            {"Source Code": "git+https://github.com/acme/weather.git"},
            "",
            "https://github.com/acme/weather",
        ),
        ({"Repository": "https://github.com/acme/weather/"}, "", "https://github.com/acme/weather"),
        (
            {"Homepage": "https://github.com/acme/weather#readme"},
            "",
            "https://github.com/acme/weather",
        ),
        (
            {"Homepage": "https://weather.example", "Source": "https://github.com/acme/weather"},
            "",
            "https://github.com/acme/weather",
        ),
        (
            {
                "Documentation": "https://docs.example",
                "Bug Tracker": "https://github.com/acme/weather/issues",
            },
            "",
            "https://github.com/acme/weather",
        ),
        ({}, "https://github.com/acme/weather", "https://github.com/acme/weather"),
        ({"Source": "https://codeberg.org/acme/weather"}, "", "https://codeberg.org/acme/weather"),
        ({"Documentation": "https://docs.example"}, "", ""),
        ({}, "", ""),
    ],
)
def test_pypi_repository_is_found_among_the_project_urls(
    registry, standin, project_urls, home_page, expected
) -> None:
    standin.add_pypi("weather", ["1.0"], project_urls=project_urls, home_page=home_page)
    published = registry.lookup("pypi", "weather")
    assert published is not None
    assert published.repository_url == expected


# --- Failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("registry_name", ["npm", "pypi"])
@pytest.mark.parametrize("status", [500, 503, 429])
def test_registry_errors_are_unavailable_with_the_status(
    registry, standin, registry_name, status
) -> None:
    standin.fail_with = status
    with pytest.raises(RegistryUnavailable, match=f"answered {status}; try again"):
        registry.lookup(registry_name, "weather")


@pytest.mark.parametrize(
    ("registry_name", "garbage", "message"),
    [
        ("npm", b"<html>Oops</html>", "npm answered with something that is not JSON"),
        ("pypi", b"\xff\xfe not even text", "PyPI answered with something that is not JSON"),
        ("npm", b"[1, 2, 3]", "npm's answer was not in the expected shape"),
        ("npm", b'{"name": "weather", "versions": []}', "npm's answer was not in the expected"),
        ("pypi", b'{"info": null}', "PyPI's answer was not in the expected shape"),
        ("pypi", b'{"info": {"name": "weather", "version": 7}}', "PyPI's answer was not in"),
    ],
)
def test_answers_that_are_not_the_documented_shape_are_unavailable(
    registry, standin, registry_name, garbage, message
) -> None:
    standin.garbage = garbage
    with pytest.raises(RegistryUnavailable, match=message):
        registry.lookup(registry_name, "weather")


def test_answer_larger_than_the_cap_is_unavailable(standin) -> None:
    standin.add_npm("weather", {"1.0.0": {"description": "x" * 4096}})
    with (
        RegistryClient(max_response_bytes=1024) as small,
        pytest.raises(RegistryUnavailable, match="larger than"),
    ):
        small.lookup("npm", "weather")


@pytest.mark.parametrize("registry_name", ["npm", "pypi"])
def test_refused_connection_is_unavailable(settings, registry_name) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
        with (
            RegistryClient(npm_url=url, pypi_url=url) as client,
            pytest.raises(RegistryUnavailable, match="Could not reach"),
        ):
            client.lookup(registry_name, "weather")


@pytest.mark.parametrize(
    ("registry_name", "name", "version"),
    [
        ("npm", "../../etc/passwd", ""),
        ("npm", "@scope/../admin", ""),
        ("npm", ".hidden", ""),
        ("npm", "_private", ""),
        ("npm", "has space", ""),
        ("npm", "name?write=1", ""),
        ("npm", "a" * 215, ""),
        ("npm", "weather", "^1.0.0"),
        ("npm", "weather", "1.0.0 || 2.0.0"),
        ("npm", "weather", "../latest"),
        ("npm", "weather", "git+https://github.com/acme/weather"),
        ("pypi", "-leading", ""),
        ("pypi", "trailing.", ""),
        ("pypi", "a/b", ""),
        ("pypi", "weather[extra]", ""),
        ("pypi", "weather", ">=1.0"),
        ("pypi", "weather", "1.0/../../json"),
    ],
)
def test_invalid_names_and_versions_are_refused_before_any_request(
    registry, standin, registry_name, name, version
) -> None:
    with pytest.raises(InvalidPackageName):
        registry.lookup(registry_name, name, version)
    assert standin.requests == []


def test_unknown_registry_is_refused_before_any_request(registry, standin) -> None:
    with pytest.raises(RegistryError, match="use npm or PyPI"):
        registry.lookup("cargo", "weather")
    assert standin.requests == []


def test_longest_valid_npm_name_is_looked_up(registry, standin) -> None:
    assert registry.lookup("npm", "a" * 214) is None
    assert standin.requests == [f"/{'a' * 214}"]


# --- Comparing with the repository being analysed ----------------------------------------------


def test_package_reaches_its_repository_whatever_the_case(registry, everything) -> None:
    published = registry.lookup("npm", EVERYTHING)
    assert published is not None
    assert reachable_repository(published, "ModelContextProtocol", "Servers")
    assert not reachable_repository(published, "modelcontextprotocol", "inspector")
    assert not reachable_repository(published, "someone-else", "servers")
