"""A local stand-in for GitHub's REST API and its codeload download host.

Two real HTTP servers on 127.0.0.1 speak the documented shapes of the three endpoints the client
uses (`/repos/{owner}/{repo}`, `…/commits/{ref}`, `…/tarball/{ref}` → 302 to codeload), with
GitHub's habits: 404 for a private repository the token cannot read, 422 for an unknown ref,
403 with `x-ratelimit-remaining: 0` when the rate limit is used up, and Authorization never
expected on the codeload host (a private download carries a short-lived `token` query instead).
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import tarfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

RATE_LIMIT = 60
DOCS = "https://docs.github.com/rest"

TarballBody = bytes | Callable[[], Iterable[bytes]]


@dataclass
class StandinRepository:
    owner: str
    name: str
    default_branch: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)
    tarballs: dict[str, TarballBody] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def resolve(self, ref: str) -> str | None:
        if ref in self.refs:
            return self.refs[ref]
        return ref if ref in self.tarballs else None


@dataclass
class RecordedRequest:
    host: str  # "api" or "codeload"
    path: str
    headers: dict[str, str]


def build_tarball(top: str, files: dict[str, bytes]) -> bytes:
    """A gzip tarball shaped like GitHub's: one top folder, directories before their files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        archive.pax_headers = {"comment": "0" * 40}
        folders = {top}
        for path in files:
            parts = path.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                folders.add(f"{top}/{'/'.join(parts[:depth])}")
        for folder in sorted(folders):
            info = tarfile.TarInfo(folder + "/")
            info.type, info.mode = tarfile.DIRTYPE, 0o775
            archive.addfile(info)
        for path, content in files.items():
            info = tarfile.TarInfo(f"{top}/{path}")
            info.size, info.mode = len(content), 0o664
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


class GitHubStandin:
    """Start with `GitHubStandin()`, point `GITHUB_API_URL` at `api_url`, `close()` at the end;
    `reset()` between tests that share one.

    Switches: `rate_limited` (403 or 429 via `rate_limit_status`), `drop_connections` (close the
    socket without an answer), `private_readers` (tokens that may read private repositories),
    `valid_tokens` (any other token gets 401).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()
        self._api = self._serve(_ApiHandler)
        self._codeload = self._serve(_CodeloadHandler)
        self.api_url = f"http://127.0.0.1:{self._api.server_address[1]}"
        self.codeload_url = f"http://127.0.0.1:{self._codeload.server_address[1]}"

    def reset(self) -> None:
        """Forget every repository, request and switch, as if freshly started."""
        self.repositories: dict[str, StandinRepository] = {}
        self.requests: list[RecordedRequest] = []
        self.valid_tokens: set[str] = set()
        self.private_readers: set[str] = set()
        self.rate_limited = False
        self.rate_limit_status = 403
        self.rate_limit_reset = int(time.time()) + 1800
        self.drop_connections = False
        self.codeload_bytes_sent = 0
        self._download_tokens: set[str] = set()

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.standin = self  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return server

    def close(self) -> None:
        for server in (self._api, self._codeload):
            server.shutdown()
            server.server_close()

    def add_repository(
        self,
        owner: str,
        name: str,
        files: dict[str, bytes] | None = None,
        *,
        default_branch: str = "main",
        private: bool = False,
    ) -> str:
        """Publish a repository whose default branch holds `files`; returns the commit SHA."""
        content = json.dumps(sorted((files or {}).items(), key=str), default=repr).encode()
        sha = hashlib.sha1(f"{owner}/{name}".encode() + content, usedforsecurity=False).hexdigest()
        repo = StandinRepository(owner, name, default_branch, private)
        repo.refs[default_branch] = sha
        repo.tarballs[sha] = build_tarball(f"{owner}-{name}-{sha[:7]}", files or {})
        self.repositories[repo.full_name.lower()] = repo
        return sha

    def set_tarball(self, owner: str, name: str, sha: str, body: TarballBody) -> None:
        """Serve `body` (bytes, or a callable giving chunks lazily) for `sha`."""
        repo = self.repositories[f"{owner}/{name}".lower()]
        repo.tarballs[sha] = body

    def authorised(self, headers: dict[str, str]) -> tuple[bool, str | None]:
        """Whether the credentials are acceptable, and the token if one was sent."""
        value = headers.get("authorization", "")
        if not value:
            return True, None
        scheme, _, token = value.partition(" ")
        if scheme.lower() not in {"bearer", "token"} or token not in self.valid_tokens:
            return False, token
        return True, token

    def issue_download_token(self) -> str:
        token = secrets.token_urlsafe(16)
        with self._lock:
            self._download_tokens.add(token)
        return token

    def accepts_download_token(self, token: str) -> bool:
        with self._lock:
            return token in self._download_tokens

    def record(self, host: str, handler: BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.requests.append(RecordedRequest(host, handler.path, headers))

    def count_sent(self, amount: int) -> None:
        with self._lock:
            self.codeload_bytes_sent += amount


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def standin(self) -> GitHubStandin:
        return self.server.standin  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet

    def send_json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def not_found(self) -> None:
        self.send_json(404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"})


class _ApiHandler(_Handler):
    def do_GET(self) -> None:
        standin = self.standin
        standin.record("api", self)
        if standin.drop_connections:
            self.close_connection = True
            return
        limits = {
            "x-ratelimit-limit": str(RATE_LIMIT),
            "x-ratelimit-remaining": "0" if standin.rate_limited else str(RATE_LIMIT - 1),
            "x-ratelimit-reset": str(standin.rate_limit_reset),
            "x-ratelimit-resource": "core",
        }
        if standin.rate_limited:
            message = "API rate limit exceeded for 127.0.0.1."
            body = {"message": message, "documentation_url": DOCS}
            self.send_json(standin.rate_limit_status, body, limits)
            return
        ok, token = standin.authorised({k.lower(): v for k, v in self.headers.items()})
        if not ok:
            body = {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}
            self.send_json(401, body, limits)
            return
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
        if len(parts) < 3 or parts[0] != "repos":
            self.not_found()
            return
        repo = standin.repositories.get(f"{parts[1]}/{parts[2]}".lower())
        if repo is None or (repo.private and token not in standin.private_readers):
            self.not_found()  # GitHub hides private repositories behind 404
            return
        rest = parts[3:]
        if not rest:
            self.send_json(200, _repository_body(repo), limits)
        elif rest[0] == "commits" and len(rest) >= 2:
            ref = "/".join(rest[1:])
            sha = repo.resolve(ref)
            if sha is None:
                body = {"message": f"No commit found for SHA: {ref}", "documentation_url": DOCS}
                self.send_json(422, body, limits)
                return
            body = {"sha": sha, "commit": {"message": "stand-in commit"}, "html_url": ""}
            self.send_json(200, body, limits)
        elif rest[0] == "tarball" and len(rest) >= 2:
            sha = repo.resolve("/".join(rest[1:]))
            if sha is None:
                self.not_found()
                return
            location = f"{standin.codeload_url}/{repo.owner}/{repo.name}/legacy.tar.gz/{sha}"
            if repo.private:
                location += f"?token={standin.issue_download_token()}"
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            for name, value in limits.items():
                self.send_header(name, value)
            self.end_headers()
        else:
            self.not_found()


class _CodeloadHandler(_Handler):
    def do_GET(self) -> None:
        standin = self.standin
        standin.record("codeload", self)
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[2] != "legacy.tar.gz":
            self.not_found()
            return
        repo = standin.repositories.get(f"{parts[0]}/{parts[1]}".lower())
        if repo is None or parts[3] not in repo.tarballs:
            self.not_found()
            return
        token = parse_qs(url.query).get("token", [""])[0]
        if repo.private and not standin.accepts_download_token(token):
            self.not_found()
            return
        body = repo.tarballs[parts[3]]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-gzip")
        filename = f"{repo.owner}-{repo.name}-{parts[3][:7]}.tar.gz"
        self.send_header("Content-Disposition", f"attachment; filename={filename}")
        if isinstance(body, bytes):
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            standin.count_sent(len(body))
            return
        # A lazily generated body goes out chunked, as codeload streams large archives.
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in body():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                standin.count_sent(len(chunk))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _repository_body(repo: StandinRepository) -> dict:
    return {
        "id": abs(hash(repo.full_name)) % 10**9,
        "name": repo.name,
        "full_name": repo.full_name,
        "owner": {"login": repo.owner, "type": "Organization"},
        "private": repo.private,
        "visibility": "private" if repo.private else "public",
        "html_url": f"https://github.com/{repo.full_name}",
        "default_branch": repo.default_branch,
    }
