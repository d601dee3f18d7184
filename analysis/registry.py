"""Reading published packages from the npm registry and PyPI's JSON API.

Names and versions are checked before any request, so nothing a user typed reaches a URL
unless it follows the registry's naming rules. Answers are untrusted: their size is capped
(full npm packuments of long-lived packages run to tens of megabytes) and anything that is not
the documented shape is reported as the registry being unavailable, never as a crash.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from django.conf import settings

from analysis.findings import plain_executables
from analysis.github import GITHUB_HOSTS, InvalidRepositoryURL, parse_repository_url

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 20 * 1024 * 1024
# The per-read timeout does not stop a server that drips bytes; this bounds a whole answer.
RESPONSE_DEADLINE_SECONDS = 60.0
LABELS = {"npm": "npm", "pypi": "PyPI"}

# Same rules as deployments/runtimes/base.py (analysis must not import deployments): legacy npm
# packages may have capitals, so lookups accept them although new names are lowercase.
_NPM_NAME = re.compile(r"(?:@[A-Za-z0-9][A-Za-z0-9._~-]*/)?[A-Za-z0-9][A-Za-z0-9._~-]*")
NPM_NAME_MAX = 214
_PYPI_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
# Exact versions (semver, PEP 440 with epoch) and npm dist-tags; never ranges or URLs.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]{0,99}")
# `github:owner/repo`, or npm's bare `owner/repo` shorthand (a dot rules out `host.tld/path`).
_GITHUB_SHORTHAND = re.compile(r"(?:github:)?([A-Za-z0-9-]+/[A-Za-z0-9._-]+)")
# scp-like git remotes: `git@github.com:owner/repo.git`.
_GITHUB_SCP = re.compile(r"(?:git\+)?(?:ssh://)?git@(?:www\.)?github\.com[:/](.+)", re.IGNORECASE)
# PEP 753 normalised labels, most telling first; a homepage is often the project's own site.
_SOURCE_LABELS = ("source", "sourcecode", "repository", "github", "code", "homepage", "home")


class RegistryError(Exception):
    """A package could not be looked up; the message is meant for the user."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached, failed, or answered in an unexpected shape."""


class InvalidPackageName(RegistryError):
    pass


@dataclass(frozen=True)
class PublishedVersion:
    registry: str  # "npm" or "pypi"
    identifier: str  # the registry's canonical spelling of the name
    version: str
    latest: str
    # `https://github.com/owner/repo` when the package points at GitHub, else as declared.
    repository_url: str
    executables: tuple[str, ...]  # npm `bin` names; empty for PyPI


class RegistryClient:
    """Looks packages up on npm and PyPI; use as a context manager or call `close()`."""

    def __init__(
        self,
        npm_url: str | None = None,
        pypi_url: str | None = None,
        timeout: float = 15.0,
        *,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.npm_url = (npm_url or settings.NPM_REGISTRY_URL).rstrip("/")
        self.pypi_url = (pypi_url or settings.PYPI_URL).rstrip("/")
        self.max_response_bytes = max_response_bytes
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            # PyPI redirects a non-canonical spelling (MCP_Server-Time) to the project's name.
            follow_redirects=True,
            max_redirects=5,
            # npm's abbreviated `application/vnd.npm.install-v1+json` leaves out `repository`.
            headers={"Accept": "application/json", "User-Agent": "Catwalk"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def lookup(self, registry: str, name: str, version: str = "") -> PublishedVersion | None:
        """The published `version` (the latest when empty), or None if it does not exist."""
        validate_name(registry, name, version)
        if registry == "npm":
            return self._npm(name, version)
        return self._pypi(name, version)

    def _npm(self, name: str, version: str) -> PublishedVersion | None:
        packument = self._get_json("npm", f"{self.npm_url}/{quote(name, safe='@')}")
        if packument is None:
            return None
        # An unpublished package keeps a packument without versions or dist-tags.
        versions = packument.get("versions", {})
        tags = packument.get("dist-tags", {})
        if not isinstance(versions, dict) or not isinstance(tags, dict):
            raise _malformed("npm")
        latest = tags.get("latest", "")
        wanted = tags.get(version, version) if version else latest
        if not isinstance(wanted, str) or wanted not in versions:
            return None
        manifest = versions[wanted]
        identifier = packument.get("name", name)
        if not isinstance(manifest, dict) or not isinstance(identifier, str):
            raise _malformed("npm")
        repository = manifest.get("repository") or packument.get("repository")
        if isinstance(repository, dict):
            repository = repository.get("url")
        return PublishedVersion(
            registry="npm",
            identifier=identifier,
            version=wanted,
            latest=latest if isinstance(latest, str) else "",
            repository_url=normalise_repository_url(repository),
            executables=_npm_executables(identifier, manifest.get("bin")),
        )

    def _pypi(self, name: str, version: str) -> PublishedVersion | None:
        project = self._get_json("pypi", f"{self.pypi_url}/pypi/{quote(name, safe='')}/json")
        if project is None:
            return None
        info = _pypi_info(project)
        latest, identifier = info.get("version"), info.get("name")
        if not isinstance(latest, str) or not isinstance(identifier, str):
            raise _malformed("pypi")
        if version and version != latest:
            release = self._get_json(
                "pypi",
                f"{self.pypi_url}/pypi/{quote(identifier, safe='')}/{quote(version, safe='')}/json",
            )
            if release is None:
                return None
            info = _pypi_info(release)
        resolved = info.get("version")
        if not isinstance(resolved, str) or not resolved:
            return None
        return PublishedVersion(
            registry="pypi",
            identifier=identifier,
            version=resolved,
            latest=latest,
            repository_url=_pypi_repository(info),
            executables=(),
        )

    def _get_json(self, registry: str, url: str) -> dict[str, Any] | None:
        """The answer's JSON object, or None on 404."""
        label = LABELS[registry]
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    raise RegistryUnavailable(
                        f"{label} answered {response.status_code}; try again in a few minutes."
                    )
                body = self._read_bounded(response, label)
        except httpx.HTTPError as exc:
            logger.warning("%s request for %s failed: %r", label, url, exc)
            raise RegistryUnavailable(
                f"Could not reach {label}; try again in a few minutes."
            ) from exc
        try:
            parsed = json.loads(body)
        except ValueError:
            raise RegistryUnavailable(
                f"{label} answered with something that is not JSON."
            ) from None
        if not isinstance(parsed, dict):
            raise _malformed(registry)
        return parsed

    def _read_bounded(self, response: httpx.Response, label: str) -> bytes:
        # Counted after decompression, so a small gzip bomb is stopped as well.
        chunks: list[bytes] = []
        received = 0
        deadline = time.monotonic() + RESPONSE_DEADLINE_SECONDS
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received > self.max_response_bytes:
                raise RegistryUnavailable(
                    f"{label}'s answer is larger than the "
                    f"{self.max_response_bytes / (1024 * 1024):g} MB Catwalk reads."
                )
            if time.monotonic() > deadline:
                raise RegistryUnavailable(f"{label} is answering too slowly; try again later.")
            chunks.append(chunk)
        return b"".join(chunks)


def validate_name(registry: str, name: str, version: str = "") -> None:
    """Raise unless `name` and `version` follow the registry's naming rules."""
    if registry not in LABELS:
        raise RegistryError(
            f"{registry!r} is not a package registry Catwalk reads; use npm or PyPI."
        )
    if registry == "npm" and (len(name) > NPM_NAME_MAX or not _NPM_NAME.fullmatch(name)):
        raise InvalidPackageName(f"{name!r} is not a valid npm package name.")
    if registry == "pypi" and not _PYPI_NAME.fullmatch(name):
        raise InvalidPackageName(f"{name!r} is not a valid PyPI project name.")
    if version and not _VERSION.fullmatch(version):
        raise InvalidPackageName(f"{version!r} is not a {LABELS[registry]} version.")


def normalise_repository_url(url: object) -> str:
    """`https://github.com/owner/repo` for any common spelling of a GitHub repository.

    Other URLs come back stripped but otherwise as declared; anything not a string gives "".
    """
    if not isinstance(url, str):
        return ""
    return _github_repository(url.strip()) or url.strip()


def _github_repository(raw: str) -> str | None:
    if shorthand := _GITHUB_SHORTHAND.fullmatch(raw):
        path = shorthand[1]
    elif scp := _GITHUB_SCP.fullmatch(raw):
        path = scp[1]
    else:
        try:
            parts = urlsplit(raw.removeprefix("git+"))
        except ValueError:
            return None
        if parts.scheme.lower() not in {"http", "https", "git", "ssh"}:
            return None
        if (parts.hostname or "").lower() not in GITHUB_HOSTS:
            return None
        path = parts.path
    # Only owner and repository matter: `/tree/main/x`, `#readme` and `.git` are dropped.
    segments = [s for s in path.split("#")[0].split("?")[0].split("/") if s]
    if len(segments) < 2:
        return None
    try:
        repo = parse_repository_url(f"https://github.com/{segments[0]}/{segments[1]}")
    except InvalidRepositoryURL:
        return None
    return f"https://github.com/{repo.owner}/{repo.name}"


def reachable_repository(published: PublishedVersion, owner: str, name: str) -> bool:
    """Whether the package declares `owner/name` on GitHub as its repository."""
    expected = f"https://github.com/{owner}/{name}"
    return published.repository_url.lower() == expected.lower()


def _npm_executables(identifier: str, bin_field: object) -> tuple[str, ...]:
    # A string `bin` installs one command named after the package, without its scope.
    if isinstance(bin_field, str) and bin_field:
        return plain_executables([identifier.rpartition("/")[2]])
    if isinstance(bin_field, dict):
        return plain_executables(list(bin_field))
    return ()


def _pypi_info(body: dict[str, Any]) -> dict[str, Any]:
    info = body.get("info")
    if not isinstance(info, dict):
        raise _malformed("pypi")
    return info


def _pypi_repository(info: dict[str, Any]) -> str:
    """The project URL that best names its source repository; GitHub ones win."""
    urls = info.get("project_urls")
    labelled: dict[str, str] = {}
    if isinstance(urls, dict):
        labelled = {
            re.sub(r"[^a-z0-9]", "", str(label).lower()): value
            for label, value in urls.items()
            if isinstance(value, str) and value.strip()
        }
    preferred = [labelled[label] for label in _SOURCE_LABELS if label in labelled]
    home_page = info.get("home_page")
    if isinstance(home_page, str) and home_page.strip():
        preferred.append(home_page)
    # An issue tracker or changelog on GitHub still names the repository.
    for candidate in [*preferred, *labelled.values()]:
        if github := _github_repository(candidate.strip()):
            return github
    return preferred[0].strip() if preferred else ""


def _malformed(registry: str) -> RegistryUnavailable:
    return RegistryUnavailable(f"{LABELS[registry]}'s answer was not in the expected shape.")
