"""A local stand-in for the npm registry and PyPI's JSON API.

Two real HTTP servers on 127.0.0.1 speak the documented shapes the client reads, with the
registries' habits:
- npm: `GET /{name}` gives the packument; a scoped name arrives as `@scope%2Fname` (the
  unencoded `@scope/name` is accepted too, as by the real registry). `Accept:
  application/vnd.npm.install-v1+json` gets the abbreviated packument, which has no
  `repository`. An unpublished package keeps a packument without versions.
- PyPI: `GET /pypi/{name}/json` and `GET /pypi/{name}/{version}/json`; a name spelled other
  than the project's own (`MCP_Server-Time`) is redirected (301) to the project's spelling.
Both answer 404 for an unknown package or version.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

ABBREVIATED = "application/vnd.npm.install-v1+json"
# What npm keeps in an abbreviated packument's versions (the documented list, shortened).
ABBREVIATED_KEYS = {"name", "version", "bin", "dependencies", "dist", "engines", "deprecated"}


@dataclass
class StandinProject:
    name: str
    latest: str
    project_urls: dict[str, str]
    home_page: str
    # version → fields of `info` that differ from the project-wide ones for that release
    releases: dict[str, dict] = field(default_factory=dict)

    def info(self, version: str) -> dict:
        return {
            "name": self.name,
            "version": version,
            "summary": f"{self.name} stand-in",
            "home_page": self.home_page,
            "project_urls": self.project_urls or None,
            "requires_python": ">=3.10",
            "yanked": False,
            **self.releases[version],
        }


def pypi_normalise(name: str) -> str:
    """PEP 503: the spelling under which PyPI finds a project."""
    return re.sub(r"[-_.]+", "-", name).lower()


class RegistryStandin:
    """Start with `RegistryStandin()`, point `NPM_REGISTRY_URL` at `npm_url` and `PYPI_URL` at
    `pypi_url`, `close()` at the end; `reset()` between tests that share one.

    Switches: `fail_with` (answer every request with that status, e.g. 500 or 503), `garbage`
    (answer 200 with these bytes as the body). `requests` lists the raw paths asked for.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()
        self._npm = self._serve(_NpmHandler)
        self._pypi = self._serve(_PypiHandler)

    @property
    def npm_url(self) -> str:
        return f"http://127.0.0.1:{self._npm.server_address[1]}"

    @property
    def pypi_url(self) -> str:
        return f"http://127.0.0.1:{self._pypi.server_address[1]}"

    def reset(self) -> None:
        """Forget every package, request and switch, as if freshly started."""
        self.packuments: dict[str, dict] = {}
        self.projects: dict[str, StandinProject] = {}
        self.requests: list[str] = []
        self.fail_with: int | None = None
        self.garbage: bytes | None = None

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.standin = self  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return server

    def close(self) -> None:
        for server in (self._npm, self._pypi):
            server.shutdown()
            server.server_close()

    def add_npm(self, name: str, versions: dict[str, dict], latest: str = "") -> None:
        """Publish `versions` (version → manifest fields such as `bin` and `repository`);
        `latest` defaults to the last one given."""
        latest = latest or list(versions)[-1]
        manifests = {
            version: {
                "name": name,
                "version": version,
                **fields,
                "dist": {"tarball": f"{self.npm_url}/{name}/-/{name}-{version}.tgz"},
            }
            for version, fields in versions.items()
        }
        packument = {
            "_id": name,
            "name": name,
            "dist-tags": {"latest": latest},
            "versions": manifests,
            "time": {version: "2025-01-01T00:00:00.000Z" for version in versions},
            "readme": "",
        }
        # npm copies the latest version's repository to the top of the packument.
        if "repository" in manifests.get(latest, {}):
            packument["repository"] = manifests[latest]["repository"]
        self.packuments[name] = packument

    def tag_npm(self, name: str, tag: str, version: str) -> None:
        self.packuments[name]["dist-tags"][tag] = version

    def unpublish_npm(self, name: str) -> None:
        self.packuments[name] = {
            "_id": name,
            "name": name,
            "time": {"unpublished": {"time": "2025-01-02T00:00:00.000Z", "versions": []}},
        }

    def add_pypi(
        self,
        name: str,
        versions: Iterable[str] | dict[str, dict],
        latest: str = "",
        project_urls: dict[str, str] | None = None,
        home_page: str = "",
    ) -> None:
        """Publish releases: version strings, or version → `info` fields for that release only
        (e.g. an older `project_urls`). `latest` defaults to the last one given."""
        releases = dict(versions) if isinstance(versions, dict) else {v: {} for v in versions}
        project = StandinProject(
            name=name,
            latest=latest or list(releases)[-1],
            project_urls=dict(project_urls or {}),
            home_page=home_page,
            releases=releases,
        )
        self.projects[pypi_normalise(name)] = project

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def standin(self) -> RegistryStandin:
        return self.server.standin  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet

    def do_GET(self) -> None:
        standin = self.standin
        standin.record(self.path)
        if standin.fail_with is not None:
            self.send(standin.fail_with, b"Service Unavailable", "text/plain")
        elif standin.garbage is not None:
            self.send(200, standin.garbage, "application/json")
        else:
            self.answer(unquote(urlsplit(self.path).path))

    def answer(self, path: str) -> None:
        raise NotImplementedError

    def send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # a client that stops reading at its size cap

    def send_json(self, status: int, body: dict) -> None:
        self.send(status, json.dumps(body).encode(), "application/json")


class _NpmHandler(_Handler):
    def answer(self, path: str) -> None:
        packument = self.standin.packuments.get(path.removeprefix("/"))
        if packument is None:
            self.send_json(404, {"error": "Not found"})
        elif ABBREVIATED in self.headers.get("Accept", ""):
            self.send_json(200, _abbreviated(packument))
        else:
            self.send_json(200, packument)


class _PypiHandler(_Handler):
    def answer(self, path: str) -> None:
        parts = path.strip("/").split("/")
        if len(parts) not in (3, 4) or parts[0] != "pypi" or parts[-1] != "json":
            self.send_json(404, {"message": "Not Found"})
            return
        project = self.standin.projects.get(pypi_normalise(parts[1]))
        if project is None:
            self.send_json(404, {"message": "Not Found"})
            return
        if parts[1] != project.name:
            location = "/".join(["", "pypi", quote(project.name), *parts[2:]])
            self.send(301, b"", "text/plain", {"Location": location})
            return
        version = parts[2] if len(parts) == 4 else project.latest
        if version not in project.releases:
            self.send_json(404, {"message": "Not Found"})
            return
        body: dict = {"info": project.info(version), "last_serial": 1, "vulnerabilities": []}
        body["urls"] = [{"filename": f"{project.name}-{version}.tar.gz"}]
        if len(parts) == 3:
            body["releases"] = {
                v: [{"filename": f"{project.name}-{v}.tar.gz"}] for v in project.releases
            }
        self.send_json(200, body)


def _abbreviated(packument: dict) -> dict:
    versions = packument.get("versions", {})
    return {
        "name": packument["name"],
        "dist-tags": packument.get("dist-tags", {}),
        "modified": "2025-01-01T00:00:00.000Z",
        "versions": {
            version: {k: v for k, v in manifest.items() if k in ABBREVIATED_KEYS}
            for version, manifest in versions.items()
        },
    }
