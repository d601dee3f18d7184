"""Reading repositories from GitHub: URL parsing, the REST API, and safe tarball extraction.

The only way in is a URL the user pasted, so it is parsed strictly and anything unexpected is
refused before a request is made. The platform token (`GITHUB_TOKEN`) only raises rate limits:
it is never used to read a private repository; those need the user's own token.

Tarballs are extracted by `mcpgateway.archive` (its docstring holds the policy: limits checked
before anything is written, links skipped, device files refused, a capped forward-only stream).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

import httpx
from django.conf import settings

from mcpgateway import archive

logger = logging.getLogger(__name__)


GITHUB_HOSTS = {"github.com", "www.github.com"}
MAX_URL_LENGTH = 2_000
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# The per-read timeout does not stop a server that drips bytes; this bounds the whole download.
DOWNLOAD_DEADLINE_SECONDS = 600.0
CHUNK_BYTES = 64 * 1024

# GitHub logins: letters, digits and single inner hyphens, at most 39 characters.
_OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}")
_REPOSITORY = re.compile(r"[A-Za-z0-9._-]{1,100}")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._@+-]{1,255}")
_REF_SEGMENT = re.compile(r"[A-Za-z0-9._+-]{1,255}")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")

URL_HINT = "Use https://github.com/OWNER/REPO or https://github.com/OWNER/REPO/tree/REF/FOLDER."


class InvalidRepositoryURL(ValueError):
    """The pasted URL is not one Catwalk reads; the message says why."""


class GitHubError(Exception):
    """Reading from GitHub failed; the message is meant for the user."""


class RepositoryNotFound(GitHubError):
    pass


class PrivateRepository(GitHubError):
    pass


class RefNotFound(GitHubError):
    pass


class RateLimited(GitHubError):
    def __init__(self, message: str, reset_at: datetime | None) -> None:
        super().__init__(message)
        self.reset_at = reset_at


class TokenRejected(GitHubError):
    pass


class GitHubUnavailable(GitHubError):
    """GitHub could not be reached or answered with a server error."""


class ArchiveTooLarge(GitHubError):
    pass


class UnsafeArchive(GitHubError):
    pass


class SubdirectoryNotFound(GitHubError):
    pass


@dataclass(frozen=True)
class RepoRef:
    """What a pasted URL points at. An empty `ref` means the default branch."""

    owner: str
    name: str
    ref: str = ""
    subdirectory: str = ""

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True)
class RepositoryInfo:
    full_name: str
    default_branch: str
    private: bool


@dataclass(frozen=True)
class ExtractionLimits(archive.Limits):
    @classmethod
    def from_settings(cls) -> ExtractionLimits:
        return cls(
            max_tarball_bytes=settings.ANALYSIS_MAX_TARBALL_BYTES,
            max_files=settings.ANALYSIS_MAX_FILES,
            max_file_bytes=settings.ANALYSIS_MAX_FILE_BYTES,
            max_total_bytes=settings.ANALYSIS_MAX_TOTAL_BYTES,
        )


def parse_repository_url(url: str) -> RepoRef:
    """Parse `https://github.com/OWNER/REPO[.git][/tree/REF[/FOLDER…]]`.

    A branch whose name contains `/` cannot be told apart from a folder in a tree URL; the first
    segment after `tree/` is taken as the ref, as for most repositories.
    """
    text = url.strip()
    if not text:
        raise InvalidRepositoryURL(f"Paste the repository's URL. {URL_HINT}")
    if len(text) > MAX_URL_LENGTH:
        raise InvalidRepositoryURL("That URL is too long to be a GitHub repository.")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise InvalidRepositoryURL("The URL contains spaces or control characters.")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise InvalidRepositoryURL(f"That is not a valid URL. {URL_HINT}") from None
    if parts.scheme.lower() != "https":
        raise InvalidRepositoryURL(f"Only https:// GitHub URLs are accepted. {URL_HINT}")
    if parts.username is not None or parts.password is not None:
        raise InvalidRepositoryURL(
            "Remove the user name or token from the URL; Catwalk asks for tokens separately."
        )
    host = (parts.hostname or "").lower()
    if host not in GITHUB_HOSTS or port is not None:
        raise InvalidRepositoryURL(f"Only repositories on github.com are supported. {URL_HINT}")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise InvalidRepositoryURL(f"Remove the query string or #fragment. {URL_HINT}")
    path = parts.path
    if "%" in path or "\\" in path:
        raise InvalidRepositoryURL("The URL contains encoded or unusual characters.")
    path = path.removeprefix("/").removesuffix("/")
    segments = path.split("/") if path else []
    if len(segments) < 2 or "" in segments:
        raise InvalidRepositoryURL(f"The URL must name an owner and a repository. {URL_HINT}")
    owner, name = segments[0], segments[1]
    if not _OWNER.fullmatch(owner):
        raise InvalidRepositoryURL(f"{owner!r} is not a valid GitHub user or organisation name.")
    rest = segments[2:]
    if name.endswith(".git") and not rest:
        name = name.removesuffix(".git")
    if not _REPOSITORY.fullmatch(name) or name in {".", ".."}:
        raise InvalidRepositoryURL(f"{name!r} is not a valid GitHub repository name.")
    if not rest:
        return RepoRef(owner=owner, name=name)
    if rest[0] != "tree" or len(rest) < 2:
        raise InvalidRepositoryURL(
            f"Point at the repository or one of its folders, not another page. {URL_HINT}"
        )
    ref, folders = rest[1], rest[2:]
    problem = _ref_problem(ref)
    if problem:
        raise InvalidRepositoryURL(f"The branch or tag {ref!r} {problem}.")
    for folder in folders:
        if folder in {".", ".."} or not _PATH_SEGMENT.fullmatch(folder):
            raise InvalidRepositoryURL(f"The folder name {folder!r} is not accepted.")
    return RepoRef(owner=owner, name=name, ref=ref, subdirectory="/".join(folders))


def _ref_problem(ref: str) -> str | None:
    """Why `ref` is not a git ref name Catwalk will send to GitHub (None if it is fine)."""
    segments = ref.split("/")
    for segment in segments:
        if not _REF_SEGMENT.fullmatch(segment):
            return "contains characters a branch or tag name cannot have"
        if segment.startswith(".") or segment.endswith((".", ".lock")):
            return "is not a valid branch or tag name"
    if ".." in ref or ref.startswith("-"):
        return "is not a valid branch or tag name"
    return None


class GitHubClient:
    """The three GitHub reads an analysis needs, for one repository.

    `user_token` is the requesting user's own token, needed for their private repositories.
    Without it the platform token is sent, and only while the repository is known to be public.
    """

    def __init__(
        self,
        repo: RepoRef,
        *,
        user_token: str | None = None,
        limits: ExtractionLimits | None = None,
    ) -> None:
        self.repo = repo
        self.limits = limits or ExtractionLimits.from_settings()
        self._user_token = user_token or None
        self._platform_token = settings.GITHUB_TOKEN
        self._info: RepositoryInfo | None = None
        self._http = httpx.Client(
            base_url=settings.GITHUB_API_URL,
            timeout=TIMEOUT,
            # httpx drops Authorization when a redirect leaves the API's origin (codeload).
            follow_redirects=True,
            headers={"X-GitHub-Api-Version": "2022-11-28", "User-Agent": "Catwalk"},
        )
        self._base = f"/repos/{quote(repo.owner, safe='')}/{quote(repo.name, safe='')}"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GitHubClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def repository(self) -> RepositoryInfo:
        """Default branch and visibility; refuses a private repository read without a user token."""
        if self._info is None:
            response = self._get(self._base, token=self._user_token or self._platform_token)
            body = _json(response)
            info = RepositoryInfo(
                full_name=str(body.get("full_name") or self.repo.full_name),
                default_branch=str(body.get("default_branch") or ""),
                private=bool(body.get("private")),
            )
            if not info.default_branch:
                raise GitHubUnavailable("GitHub's answer did not name a default branch.")
            self._info = info
        if self._info.private and not self._user_token:
            raise PrivateRepository(
                f"{self.repo.full_name} is private. Connect a GitHub token with access to it."
            )
        return self._info

    def commit_sha(self, ref: str) -> str:
        """The commit SHA that a branch, tag or SHA points at right now."""
        problem = _ref_problem(ref)
        if problem:
            raise RefNotFound(f"The branch or tag {ref!r} {problem}.")
        response = self._get(
            f"{self._base}/commits/{quote(ref, safe='/')}",
            token=self._token_for_reading(),
            missing=RefNotFound(f"{self.repo.full_name} has no branch, tag or commit {ref!r}."),
        )
        sha = str(_json(response).get("sha") or "")
        if not _SHA.fullmatch(sha):
            raise GitHubUnavailable("GitHub's answer did not contain a commit SHA.")
        return sha

    def download(self, sha: str, destination: Path, subdirectory: str = "") -> Path:
        """Extract the repository at `sha` into `destination` (created; must not hold anything).

        Returns the folder to analyse (resolved): `destination`, or `subdirectory` inside it. On
        failure `destination` is removed, so nothing is left behind.
        """
        if not _SHA.fullmatch(sha):
            raise ValueError(f"not a commit SHA: {sha!r}")
        destination = Path(destination)
        destination.mkdir(parents=True, exist_ok=True)
        if any(destination.iterdir()):
            raise ValueError(f"{destination} is not empty")
        try:
            with tempfile.TemporaryFile() as tarball:
                self._fetch_tarball(sha, tarball)
                tarball.seek(0)
                _extract(tarball, destination, self.limits)
            return _subdirectory(destination, subdirectory, self.repo)
        except BaseException:
            shutil.rmtree(destination, ignore_errors=True)
            raise

    def _fetch_tarball(self, sha: str, sink: IO[bytes]) -> None:
        cap = self.limits.max_tarball_bytes
        too_large = ArchiveTooLarge(
            f"{self.repo.full_name} is larger than the {archive.size_text(cap)} Catwalk downloads."
        )
        try:
            with self._http.stream(
                "GET", f"{self._base}/tarball/{sha}", headers=self._auth(self._token_for_reading())
            ) as response:
                if response.status_code != 200:
                    response.read()
                    self._raise_for(response, missing=None)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise too_large
                received = 0
                deadline = time.monotonic() + DOWNLOAD_DEADLINE_SECONDS
                for chunk in response.iter_raw(CHUNK_BYTES):
                    received += len(chunk)
                    if received > cap:
                        raise too_large
                    if time.monotonic() > deadline:
                        raise GitHubUnavailable(
                            "The download from GitHub is too slow; try again later."
                        )
                    sink.write(chunk)
        except httpx.TooManyRedirects:
            raise GitHubUnavailable("GitHub redirected the download too many times.") from None
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc

    def _token_for_reading(self) -> str | None:
        # Raises for a private repository read without a user token, so the platform token is
        # only ever sent for public ones; also tells "no such ref" from "no such repository".
        self.repository()
        return self._user_token or self._platform_token

    @staticmethod
    def _auth(token: str | None) -> dict[str, str]:
        headers = {"Accept": "application/vnd.github+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _get(
        self, path: str, *, token: str | None, missing: GitHubError | None = None
    ) -> httpx.Response:
        try:
            response = self._http.get(path, headers=self._auth(token))
        except httpx.TooManyRedirects:
            raise GitHubUnavailable("GitHub redirected the request too many times.") from None
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc
        if response.status_code != 200:
            self._raise_for(response, missing=missing)
        return response

    def _raise_for(self, response: httpx.Response, *, missing: GitHubError | None) -> None:
        status = response.status_code
        name = self.repo.full_name
        if status in (403, 429) and _rate_limited(response):
            raise _rate_limit_error(response)
        if status == 401:
            raise TokenRejected(
                "GitHub rejected the token: it is invalid or expired."
                if self._user_token
                else "GitHub rejected Catwalk's platform token; an administrator must replace it."
            )
        if status in (404, 422, 403):
            if missing is not None and self._info is not None:
                raise missing
            if self._user_token:
                raise RepositoryNotFound(
                    f"{name} was not found, or your GitHub token cannot read it."
                )
            raise RepositoryNotFound(
                f"{name} was not found. If it is private, connect a GitHub token with access."
            )
        if status == 409:
            raise RefNotFound(f"{name} is empty: it has no commits yet.")
        raise GitHubUnavailable(f"GitHub answered {status}; try again in a few minutes.")


def _rate_limited(response: httpx.Response) -> bool:
    return (
        response.headers.get("x-ratelimit-remaining") == "0"
        or "retry-after" in response.headers
        or response.status_code == 429
    )


def _rate_limit_error(response: httpx.Response) -> RateLimited:
    reset_at: datetime | None = None
    reset = response.headers.get("x-ratelimit-reset", "")
    retry_after = response.headers.get("retry-after", "")
    if reset.isdigit():
        reset_at = datetime.fromtimestamp(int(reset), tz=UTC)
    elif retry_after.isdigit():
        reset_at = datetime.fromtimestamp(
            datetime.now(tz=UTC).timestamp() + int(retry_after), tz=UTC
        )
    when = f"after {reset_at:%Y-%m-%d %H:%M:%S} UTC" if reset_at else "in a few minutes"
    return RateLimited(f"GitHub's rate limit for Catwalk is used up; try again {when}.", reset_at)


def _unreachable(exc: httpx.TransportError) -> GitHubUnavailable:
    logger.warning("GitHub request failed: %r", exc)
    return GitHubUnavailable("Could not reach GitHub; try again in a few minutes.")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise GitHubUnavailable("GitHub sent an answer Catwalk could not read.") from None
    if not isinstance(body, dict):
        raise GitHubUnavailable("GitHub sent an answer Catwalk could not read.")
    return body


def _extract(tarball: IO[bytes], destination: Path, limits: ExtractionLimits) -> None:
    try:
        archive.extract(tarball, destination, limits)
    except archive.TooLarge as exc:
        raise ArchiveTooLarge(str(exc).replace("The archive", "The repository")) from None
    except archive.ArchiveError as exc:
        raise UnsafeArchive(str(exc)) from None


def _subdirectory(destination: Path, subdirectory: str, repo: RepoRef) -> Path:
    root = destination.resolve()
    if not subdirectory:
        return root
    folder = (root / subdirectory).resolve()
    if not folder.is_relative_to(root) or not folder.is_dir():
        raise SubdirectoryNotFound(f"{repo.full_name} has no folder {subdirectory!r}.")
    return folder
