"""A stand-in OCI registry on 127.0.0.1, and the layers and fixture image the OCI tests push.

`RegistryStandIn` speaks the part of the Distribution API v2 that `mcpgateway.oci` uses:
manifests by tag or digest, blobs (optionally redirected to a second server, the "storage",
on another port, which refuses any request carrying an Authorization header as S3 does),
anonymous Bearer tokens, and injected failures.

The fixture image holds the host's dash as /bin/sh with the libraries it loads, and an MCP
server written in POSIX sh that dash runs with its builtins alone (`FIXTURE_SERVER`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import re
import secrets
import subprocess
import tarfile
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from mcpgateway.oci import HOST_PLATFORM, OCI_INDEX, OCI_MANIFEST

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MANIFEST_PATH = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)")
BLOB_PATH = re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[a-f0-9]{64})")
STORAGE_PATH = re.compile(r"/_storage/(?P<digest>sha256:[a-f0-9]{64})")
FIXED_MTIME = 1_700_000_000


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryStandIn:
    """An OCI registry on an ephemeral loopback port, with its blob storage on another."""

    def __init__(self, *, require_token: bool = False, redirect_blobs: bool = False) -> None:
        self.require_token = require_token
        self.redirect_blobs = redirect_blobs
        self.blobs: dict[str, bytes] = {}
        # (repository, tag or digest) -> (media type, body)
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        # Every request either server answered, as (method, path), storage ones included.
        self.requests: list[tuple[str, str]] = []
        # The Authorization headers the storage server was (wrongly) sent.
        self.storage_authorizations: list[str] = []
        self.token = secrets.token_hex(16)
        # Repositories that answer 401 whatever the token, as a registry does for private ones.
        self.private_repositories: set[str] = set()
        self._failures: list[int] = []
        self._corrupt: set[str] = set()
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        for role in ("registry", "storage"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, role))
            server.daemon_threads = True
            serve = functools.partial(server.serve_forever, poll_interval=0.05)
            threading.Thread(target=serve, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    # -- content -------------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        self.blobs[digest] = data
        return digest

    def put_manifest(self, repository: str, tag: str, manifest: dict) -> str:
        """Store a manifest or index under its digest and, when given, `tag`."""
        body = json.dumps(manifest).encode()
        digest = sha256_digest(body)
        stored = (manifest.get("mediaType", OCI_MANIFEST), body)
        self.manifests[(repository, digest)] = stored
        if tag:
            self.manifests[(repository, tag)] = stored
        return digest

    def push(
        self,
        repository: str,
        tag: str,
        layers: list[bytes],
        config: dict,
        *,
        layer_media_type: str = OCI_LAYER_GZIP,
    ) -> str:
        """Push an image (compressed layers, a config dict) as an OCI manifest; its digest.

        The config's `rootfs.diff_ids` are filled in when missing and the layers are gzip."""
        if "rootfs" not in config:
            config = {**config, "rootfs": {"type": "layers", "diff_ids": _diff_ids(layers)}}
        config_body = json.dumps(config).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": self.put_blob(config_body),
                "size": len(config_body),
            },
            "layers": [
                {"mediaType": layer_media_type, "digest": self.put_blob(layer), "size": len(layer)}
                for layer in layers
            ],
        }
        return self.put_manifest(repository, tag, manifest)

    def push_index(
        self, repository: str, tag: str, platforms: Mapping[tuple[str, str], str]
    ) -> str:
        """Push a multi-platform index over pushed manifests, with an attestation entry (as
        BuildKit adds) that a client must skip."""
        entries: list[dict] = []
        for (os_name, architecture), digest in platforms.items():
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": len(self.manifests[(repository, digest)][1]),
                    "platform": {"os": os_name, "architecture": architecture},
                }
            )
        first = entries[0]
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": first["digest"],
                "size": first["size"],
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {
                    "vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": first["digest"],
                },
            }
        )
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return self.put_manifest(repository, tag, index)

    # -- faults --------------------------------------------------------------------------------

    def fail_next(self, status: int, count: int = 1) -> None:
        """Answer the next `count` /v2/ requests with `status` (and `Retry-After: 0`)."""
        with self._lock:
            self._failures.extend([status] * count)

    def corrupt_blob(self, digest: str) -> None:
        """Serve the blob with one byte changed (same length)."""
        self._corrupt.add(digest)

    def blob_requests(self) -> list[str]:
        """The paths of the blob downloads asked for, redirected ones counted once."""
        return [path for _, path in self.requests if "/blobs/" in path]

    def _next_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _blob_bytes(self, digest: str) -> bytes:
        data = self.blobs[digest]
        if digest in self._corrupt and data:
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data


def _diff_ids(layers: list[bytes]) -> list[str]:
    try:
        return [sha256_digest(gzip.decompress(layer)) for layer in layers]
    except (OSError, EOFError):
        return []


def _handler(standin: RegistryStandIn, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def do_GET(self) -> None:
            self._answer_request()

        def do_HEAD(self) -> None:
            self._answer_request()

        def _send(
            self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, **headers: str) -> None:
            body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
            self._send(status, body, {"Content-Type": "application/json", **headers})

        def _answer_request(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            standin.requests.append((self.command, path))
            if role == "storage":
                self._storage(path)
            elif path == "/token":
                self._token()
            elif path.startswith("/v2/"):
                self._registry(path)
            else:
                self._error(404, "NOT_FOUND", "no such route")

        def _storage(self, path: str) -> None:
            match = STORAGE_PATH.fullmatch(path)
            if self.headers.get("Authorization"):
                standin.storage_authorizations.append(self.headers["Authorization"])
                self._error(400, "InvalidArgument", "Only one auth mechanism allowed")
            elif match is None or match["digest"] not in standin.blobs:
                self._error(404, "NoSuchKey", "no such object")
            else:
                self._send(200, standin._blob_bytes(match["digest"]))

        def _token(self) -> None:
            body = json.dumps({"token": standin.token, "access_token": standin.token}).encode()
            self._send(200, body, {"Content-Type": "application/json"})

        def _registry(self, path: str) -> None:
            failure = standin._next_failure()
            if failure is not None:
                self._error(failure, "UNAVAILABLE", "injected failure", **{"Retry-After": "0"})
                return
            name = _repository_of(path)
            authorized = self.headers.get("Authorization") == f"Bearer {standin.token}"
            if name in standin.private_repositories or (standin.require_token and not authorized):
                challenge = (
                    f'Bearer realm="{standin.url}/token",service="standin",'
                    f'scope="repository:{name or "catalog"}:pull"'
                )
                self._error(
                    401,
                    "UNAUTHORIZED",
                    "authentication required",
                    **{"WWW-Authenticate": challenge},
                )
                return
            if path == "/v2/":
                self._send(200, b"{}", {"Content-Type": "application/json"})
            elif match := MANIFEST_PATH.fullmatch(path):
                self._manifest(match["name"], match["reference"])
            elif match := BLOB_PATH.fullmatch(path):
                self._blob(match["digest"])
            else:
                self._error(404, "NAME_UNKNOWN", "no such route")

        def _manifest(self, name: str, reference: str) -> None:
            stored = standin.manifests.get((name, reference))
            if stored is None:
                self._error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {name}:{reference}")
                return
            media_type, body = stored
            headers = {"Content-Type": media_type, "Docker-Content-Digest": sha256_digest(body)}
            self._send(200, body, headers)

        def _blob(self, digest: str) -> None:
            if digest not in standin.blobs:
                self._error(404, "BLOB_UNKNOWN", f"blob unknown: {digest}")
            elif standin.redirect_blobs:
                location = f"{standin.storage_url}/_storage/{digest}"
                self._send(307, b"", {"Location": location})
            else:
                self._send(200, standin._blob_bytes(digest))

    return Handler


def _repository_of(path: str) -> str:
    for pattern in (MANIFEST_PATH, BLOB_PATH):
        if match := pattern.fullmatch(path):
            return match["name"]
    return ""


# --- layers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One member of a layer's tar."""

    name: str
    type: bytes = tarfile.REGTYPE
    content: bytes = b""
    mode: int = 0o644
    target: str = ""


def regular(name: str, content: bytes = b"", mode: int = 0o644) -> Entry:
    return Entry(name, tarfile.REGTYPE, content, mode)


def directory(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.SYMTYPE, mode=0o777, target=target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, target=target)


def whiteout(path: str) -> Entry:
    """The OCI whiteout that deletes `path` from lower layers."""
    folder, _, name = path.rstrip("/").rpartition("/")
    return regular(f"{folder}/.wh.{name}" if folder else f".wh.{name}", mode=0o600)


def opaque(folder: str) -> Entry:
    """The OCI opaque whiteout that empties `folder` of lower layers' entries."""
    return regular(f"{folder.rstrip('/')}/.wh..wh..opq", mode=0o600)


def device(name: str, kind: bytes = tarfile.CHRTYPE) -> Entry:
    """A character or block device (1, 3: /dev/null's numbers) or a FIFO."""
    return Entry(name, kind, mode=0o666)


def tar(entries: Iterable[Entry]) -> bytes:
    """An uncompressed layer tar (PAX format), names exactly as given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.type
            info.mode = entry.mode
            info.mtime = FIXED_MTIME
            info.linkname = entry.target
            if entry.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = 1, 3
            if entry.type == tarfile.REGTYPE:
                info.size = len(entry.content)
                archive.addfile(info, io.BytesIO(entry.content))
            else:
                archive.addfile(info)
    return buffer.getvalue()


def tar_gz(entries: Iterable[Entry]) -> bytes:
    return gzip.compress(tar(entries), mtime=0)


# --- the fixture image -------------------------------------------------------------------------

FIXTURE_ENV = {"PATH": "/bin", "FIXTURE_IMAGE_VARIABLE": "from-the-image"}
FIXTURE_CONFIG = {
    "architecture": HOST_PLATFORM[1],
    "os": HOST_PLATFORM[0],
    "config": {
        "Entrypoint": ["/bin/sh", "/srv/server.sh"],
        "Cmd": ["--greeting", "hello"],
        "Env": [f"{name}={value}" for name, value in FIXTURE_ENV.items()],
        "WorkingDir": "/srv",
    },
}
FIXTURE_PROTOCOL_VERSION = "2025-06-18"

FIXTURE_TOOLS = [
    {
        "name": "echo",
        "description": "Returns its text argument.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
    {
        "name": "getenv",
        "description": "Returns the value of an environment variable, or an empty string.",
        "inputSchema": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
        },
    },
]
# An MCP server (newline-delimited JSON-RPC 2.0 on stdin and stdout) that dash runs with its
# builtins alone. It reads JSON with parameter expansions, which is enough for what MCP clients
# send, within limits a fixture can keep: a message's id is its first "id" key; a tool's name
# is the last "name" key before "arguments", and its argument is the first key of that name
# after "arguments"; string values are copied still JSON-escaped. Values it emits from the
# environment are escaped for backslash, quote, newline, tab and carriage return; other
# control characters are not.
FIXTURE_SERVER = (
    f"tools='{json.dumps({'tools': FIXTURE_TOOLS}, separators=(',', ':'))}'\n"
    + r"""
newline='
'
tab=$(printf '\t')
cr=$(printf '\r')
script_arguments=$*
server_info='{"name":"catwalk-oci-fixture","version":"1.0"}'

# Sets $after to what follows the key "$1" in $2, its colon and blanks skipped.
after_key() {
    case $2 in *"\"$1\""*) ;; *) return 1 ;; esac
    after=${2#*"\"$1\""}
    while :; do
        case $after in
            " "* | "$tab"* | :*) after=${after#?} ;;
            *) return 0 ;;
        esac
    done
}

# Sets $string to the JSON string that starts at $1, just after its opening quote (still
# escaped: the copy goes back into JSON as it is).
read_string() {
    rest=$1 string=
    while :; do
        case $rest in *'"'*) ;; *) return 1 ;; esac
        chunk=${rest%%'"'*}
        rest=${rest#*'"'}
        string=$string$chunk
        slashes=0 tail=$chunk
        while :; do
            case $tail in *'\') tail=${tail%?} slashes=$((slashes + 1)) ;; *) break ;; esac
        done
        [ $((slashes % 2)) -eq 0 ] && return 0
        string=$string'"'
    done
}

# Sets $string to the string value of the key "$1" in $2.
string_value() {
    after_key "$1" "$2" || return 1
    case $after in '"'*) read_string "${after#?}" ;; *) return 1 ;; esac
}

# Sets $escaped to $1 escaped for the inside of a JSON string.
escape() {
    rest=$1 escaped=
    while [ -n "$rest" ]; do
        tail=${rest#?}
        char=${rest%"$tail"}
        rest=$tail
        case $char in
            '\' | '"') escaped=$escaped'\'$char ;;
            "$newline") escaped=$escaped'\n' ;;
            "$tab") escaped=$escaped'\t' ;;
            "$cr") escaped=$escaped'\r' ;;
            *) escaped=$escaped$char ;;
        esac
    done
}

respond() {
    printf '{"jsonrpc":"2.0","id":%s,"result":%s}\n' "$id" "$1"
}

fail() {
    printf '{"jsonrpc":"2.0","id":%s,"error":{"code":%s,"message":"%s"}}\n' "$id" "$1" "$2"
}

# Answers a tool call with the text $1 (already escaped); $2 is true for a tool error.
tool_result() {
    respond "{\"content\":[{\"type\":\"text\",\"text\":\"$1\"}],\"isError\":$2}"
}

call_tool() {
    after_key params "$line" || { fail -32602 'tools/call needs params'; return; }
    params=$after
    before_arguments=${params%%'"arguments"'*}
    case $before_arguments in
        *'"name"'*) ;;
        *) fail -32602 'tools/call needs a name'; return ;;
    esac
    last_name="\"name\"${before_arguments##*'"name"'}"
    string_value name "$last_name" || { fail -32602 'bad tool name'; return; }
    tool=$string
    arguments=
    after_key arguments "$params" && arguments=$after
    case $tool in
        echo)
            string_value text "$arguments" || { tool_result 'echo needs a text' true; return; }
            case $string in
                __argv__) escape "$script_arguments"; tool_result "$escaped" false ;;
                __pwd__) escape "$PWD"; tool_result "$escaped" false ;;
                *) tool_result "$string" false ;;
            esac
            ;;
        getenv)
            string_value name "$arguments" || { tool_result 'getenv needs a name' true; return; }
            case $string in
                '' | [!A-Za-z_]* | *[!A-Za-z0-9_]*)
                    tool_result 'not an environment variable name' true
                    return
                    ;;
            esac
            eval "value=\${$string-}"
            escape "$value"
            tool_result "$escaped" false
            ;;
        *) fail -32602 "Unknown tool: $tool" ;;
    esac
}

while IFS= read -r line || [ -n "$line" ]; do
    string_value method "$line" || { line=; continue; }
    method=$string
    # A message without an id is a notification: nothing to answer.
    after_key id "$line" || { line=; continue; }
    case $after in
        '"'*) read_string "${after#?}"; id=\"$string\" ;;
        *) id=${after%%[!0-9.eE+-]*} ;;
    esac
    [ -n "$id" ] || { line=; continue; }
    case $method in
        initialize)
            version=2025-06-18
            string_value protocolVersion "$line" && version=$string
            result="{\"protocolVersion\":\"$version\",\"capabilities\":{\"tools\":{}},"
            respond "$result\"serverInfo\":$server_info}"
            ;;
        ping) respond '{}' ;;
        tools/list) respond "$tools" ;;
        tools/call) call_tool ;;
        *) fail -32601 "Method not found: $method" ;;
    esac
    line=
done
"""
)


def dash_libraries() -> list[str]:
    """The absolute paths `ldd /bin/dash` lists: libc and the dynamic loader."""
    output = subprocess.run(["ldd", "/bin/dash"], capture_output=True, text=True, check=True).stdout
    paths = []
    for line in output.splitlines():
        target = line.split("=>", 1)[1] if "=>" in line else line
        path = target.strip().split(" (", 1)[0].strip()
        if path.startswith("/"):
            paths.append(path)
    return paths


def _with_folders(files: list[Entry]) -> list[Entry]:
    """The entries preceded by a folder entry for each of their folders, as image tars have."""
    folders: list[str] = []
    for entry in files:
        parts = entry.name.strip("/").split("/")[:-1]
        for end in range(1, len(parts) + 1):
            folder = "/".join(parts[:end])
            if folder not in folders:
                folders.append(folder)
    return [directory(folder) for folder in folders] + files


@functools.cache
def fixture_layers() -> tuple[bytes, bytes]:
    """The fixture image's two layers, gzip-compressed."""
    base = [regular("bin/sh", Path(os.path.realpath("/bin/dash")).read_bytes(), 0o755)]
    for library in dash_libraries():
        base.append(
            regular(library.lstrip("/"), Path(os.path.realpath(library)).read_bytes(), 0o755)
        )
    base += [
        regular("srv/stale.txt", b"removed by the second layer\n"),
        regular("srv/cache/old.txt", b"hidden by the opaque whiteout\n"),
    ]
    top = [
        directory("srv"),
        regular("srv/server.sh", FIXTURE_SERVER.encode(), 0o755),
        whiteout("srv/stale.txt"),
        directory("srv/cache"),
        opaque("srv/cache"),
        regular("srv/cache/fresh.txt", b"the second layer's own\n"),
        symlink("srv/link", "/srv/server.sh"),
    ]
    return tar_gz(_with_folders(base)), tar_gz(top)


def fixture_image(
    standin: RegistryStandIn, repository: str = "catwalk/fixture", tag: str = "1.0"
) -> str:
    """Push the fixture image; the reference that names it."""
    standin.push(repository, tag, list(fixture_layers()), FIXTURE_CONFIG)
    return f"{standin.host}/{repository}:{tag}"
