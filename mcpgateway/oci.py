"""OCI images for the Fly runner: pull an image from its registry and unpack its root filesystem.

Standard library only, like the rest of the runner (`mcpgateway/runner.py`), which pulls an
image deployment's image once into its volume with `pull_once` and later runs the image's
entrypoint in a sandbox whose `/` is the unpacked root filesystem.

The registry is spoken to through the OCI Distribution API v2, anonymously: a Bearer challenge
is answered with an anonymous token for the repository (Docker Hub, GHCR and most public
registries work this way); a registry that still refuses holds a private image, which Catwalk
does not pull. Indexes (multi-platform images) are resolved to the runner's platform. Every
manifest and blob is checked against its sha256 digest, and the digest the reference resolved
to is recorded, so a tag is resolved once, at the first pull, and reused until the reference
changes.

Safety model. The image is untrusted and the unpacking runs as root on the host, so the
unpacker never lets the kernel resolve a path that the image controls:

- Every member's parent folder is resolved inside the root filesystem, chroot-style, one
  component at a time with `lstat`: a symbolic link met on the way is read and its target
  resolved relative to the root filesystem (absolute targets from its top, `..` never above
  it), at most 40 times per name. The folders found this way are real folders inside it.
- The last component is never followed: files are created with `O_CREAT | O_EXCL |
  O_NOFOLLOW` after whatever was there is removed, folders with `mkdir`, links with `symlink`
  (their targets are kept verbatim: the sandbox resolves them inside the image later).
- A hard link's target is resolved the same way and must be a regular file inside the root
  filesystem; anything else is skipped. Device files and FIFOs are skipped (the sandbox
  supplies /dev).
- Ownership stays the unpacking user's. Files keep their permission bits only (setuid,
  setgid and sticky dropped); folders keep theirs and the sticky bit, and always give their
  owner rwx, which grants nothing to the sandboxed server (another uid) but lets later layers
  and the removal of old images work without privileges.
- Limits on the download, on the files and bytes unpacked and on tar extended headers are
  enforced while streaming, and a pull that fails removes everything it wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import json
import os
import platform as host_platform
import re
import secrets
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

DOCKER_HUB = "docker.io"
DOCKER_HUB_URL = "https://registry-1.docker.io"
USER_AGENT = "catwalk-runner"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

PULLED_MARKER = ".catwalk-pulled"
SAVED_CONFIG = "config.json"
ROOTFS = "rootfs"
DOWNLOAD_SUFFIX = ".download"

MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 16 << 20
MAX_TOKEN_RESPONSE_BYTES = 1 << 20
# An index may name another index (rare); deeper nesting is refused.
MAX_INDEX_DEPTH = 2
# A pax or GNU long-name header is read into memory whole by `tarfile`: real ones are small.
MAX_EXTENDED_HEADER_BYTES = 1 << 20
# Tar headers and padding allowed per file on top of the unpacked bytes, so that data the
# unpacker skips (the contents of unknown member types) cannot make it decompress forever.
HEADER_ALLOWANCE_PER_FILE = 4096
MAX_SYMLINK_FOLLOWS = 40
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Seconds to wait before the second, third and fourth attempt of a request that met a rate
# limit, a server error or a broken connection; a Retry-After header replaces them (capped).
RETRY_DELAYS: tuple[float, ...] = (0.5, 1.5, 4.0)
MAX_RETRY_AFTER_SECONDS = 10.0
# A pull that trickles is stopped after this long in all.
PULL_DEADLINE_SECONDS = 1800.0
CHUNK_BYTES = 256 << 10

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*(?::[0-9]+)?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
MAX_NAME_LENGTH = 255
_CHALLENGE_PARAMETER = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


class ImageError(Exception):
    """Pull or unpack refused/failed; str() is one clear sentence for the user."""


# --- references --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """An image reference, normalised as Docker does (`alpine` is docker.io/library/alpine)."""

    registry: str
    repository: str
    tag: str
    digest: str

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def reference(self) -> str:
        """What names the manifest in /v2/<repository>/manifests/<reference>."""
        return self.digest or self.tag or "latest"


def parse_reference(text: str, version: str = "") -> Reference:
    """Parse an image reference such as `ghcr.io/acme/weather:1.2` or `alpine@sha256:...`.

    Without a registry part the image is Docker Hub's, and a one-component Docker Hub name is
    an official image (`library/`). `version` is the tag when `text` has neither tag nor digest;
    with neither at all the tag is `latest`. Raises ImageError for anything the distribution
    spec's grammar does not allow.
    """
    if not text:
        raise ImageError("The image reference is empty.")
    if any(character.isspace() or not character.isprintable() for character in text + version):
        raise ImageError(f"The image reference {text!r} contains spaces or control characters.")
    name, at, digest = text.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise ImageError(
            f"{digest!r} in {text!r} is not an image digest Catwalk accepts "
            "(sha256: and 64 lowercase hexadecimal digits)."
        )
    tag = ""
    if name.rfind(":") > name.rfind("/"):
        name, tag = name.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise ImageError(f"{tag!r} in {text!r} is not a valid image tag.")
    if len(name) > MAX_NAME_LENGTH:
        raise ImageError(f"The image name in {text!r} is longer than {MAX_NAME_LENGTH} characters.")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if not _REGISTRY.fullmatch(registry):
        raise ImageError(f"{registry!r} in {text!r} is not a valid registry host.")
    if not _REPOSITORY.fullmatch(repository):
        raise ImageError(
            f"{repository!r} in {text!r} is not a valid image name: its parts are lowercase "
            "letters and digits, separated by '/' and joined by '.', '_', '__' or '-'."
        )
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if version and not tag and not digest:
        if not _TAG.fullmatch(version):
            raise ImageError(f"The version {version!r} is not a valid image tag.")
        tag = version
    if not tag and not digest:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


# --- what a pull produces ------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    """What the image's config says about running it."""

    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    working_dir: str
    user: str

    def argv(self, args: Sequence[str] = ()) -> list[str]:
        """The command the image runs: its entrypoint, then `args` or else its Cmd (as Docker)."""
        argv = [*self.entrypoint, *(args or self.cmd)]
        if not argv:
            raise ImageError("The image names no command to run (no Entrypoint and no Cmd).")
        return argv


@dataclass(frozen=True)
class Limits:
    max_compressed_bytes: int = 2 << 30
    max_unpacked_bytes: int = 4 << 30
    max_files: int = 200_000
    max_layers: int = 128


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class PulledImage:
    folder: Path
    rootfs: Path
    digest: str
    config: ImageConfig


def _size_text(count: int) -> str:
    if count >= 1 << 30:
        return f"{count / (1 << 30):.1f} GiB"
    if count >= 1 << 20:
        return f"{count / (1 << 20):.0f} MiB"
    return f"{count} bytes"


class Budget:
    """What the layers unpacked so far have used of the limits; shared by an image's layers."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.files = 0
        self.unpacked_bytes = 0
        self.stream_bytes = 0

    def count_file(self) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise ImageError(
                f"The image has more than {self.limits.max_files:,} files, "
                "the most Catwalk unpacks."
            )

    def count_bytes(self, count: int) -> None:
        self.unpacked_bytes += count
        if self.unpacked_bytes > self.limits.max_unpacked_bytes:
            raise ImageError(
                f"The image unpacks to more than {_size_text(self.limits.max_unpacked_bytes)}, "
                "the most Catwalk accepts."
            )

    def count_stream(self, count: int) -> None:
        self.stream_bytes += count
        allowance = HEADER_ALLOWANCE_PER_FILE * (self.limits.max_files + 16)
        if self.stream_bytes > self.limits.max_unpacked_bytes + allowance:
            raise ImageError(
                f"The image's layers unpack to more than "
                f"{_size_text(self.limits.max_unpacked_bytes)}, the most Catwalk accepts."
            )


# --- unpacking ---------------------------------------------------------------------------------


class _CountedReader:
    """A decompressed layer, read forward and charged to the budget."""

    def __init__(self, raw: IO[bytes], budget: Budget) -> None:
        self._raw = raw
        self._budget = budget

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size if size >= 0 else CHUNK_BYTES)
        self._budget.count_stream(len(data))
        return data


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuses an extended header too large to read into memory, before `tarfile` reads it."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        info = super().frombuf(buf, encoding, errors)
        extended = (
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
        )
        if info.type in extended and info.size > MAX_EXTENDED_HEADER_BYTES:
            raise ImageError("A layer has a tar extended header larger than Catwalk reads.")
        return info


def unpack_layer(stream: IO[bytes], rootfs: Path, *, budget: Budget) -> None:
    """Apply one layer (an uncompressed tar stream) to `rootfs`, whiteouts included.

    The stream is read forward only. See the module's docstring for the safety rules; raises
    ImageError when the layer is unreadable, unsafe in a way that cannot be skipped, or over
    the budget. What was applied before the error stays: the caller discards the whole rootfs.
    """
    unpacker = _Unpacker(Path(rootfs), budget)
    try:
        with tarfile.open(
            fileobj=_CountedReader(stream, budget), mode="r|", tarinfo=_GuardedTarInfo
        ) as archive:
            while (member := archive.next()) is not None:
                # `tarfile` keeps every member it has read; a layer may hold many thousands.
                archive.members.clear()
                unpacker.apply(member, archive)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ImageError(f"A layer is not a readable tar archive ({exc}).") from None
    except OSError as exc:
        raise ImageError(f"A layer could not be unpacked: {exc.strerror or exc}.") from None


def _name_parts(name: str) -> list[str]:
    """A member name's components, leading "/" and "." dropped ('..' stays: it is resolved)."""
    if "\0" in name:
        raise ImageError("A layer has a file name containing a NUL character.")
    return [part for part in name.split("/") if part not in ("", ".")]


def _remove(path: str) -> None:
    """Remove whatever is at `path` (a whole tree for a folder), never following a link."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _folder_mode(mode: int) -> int:
    return (mode & 0o1777) | 0o700


def _set_folder_mode(path: str, mode: int) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(descriptor, _folder_mode(mode))
    finally:
        os.close(descriptor)


class _Unpacker:
    """Applies one layer's members in order to the root filesystem."""

    def __init__(self, rootfs: Path, budget: Budget) -> None:
        self.rootfs = str(rootfs)
        self.budget = budget
        # Paths (components joined by "/") this layer wrote, with their ancestors: whiteouts
        # hide lower layers' files only, never the same layer's (the OCI layer spec's rule),
        # whatever order the members come in.
        self.written: set[str] = set()

    def _path(self, parts: Sequence[str]) -> str:
        return os.path.join(self.rootfs, *parts)

    def _mark(self, parts: Sequence[str]) -> None:
        for end in range(1, len(parts) + 1):
            self.written.add("/".join(parts[:end]))

    def resolve(self, parts: Sequence[str], *, create: bool) -> list[str] | None:
        """The real folder `parts` names inside the rootfs, as components below it.

        Symbolic links are followed chroot-style and `..` stops at the top. Missing folders are
        created (mode 0755) when `create`, else the answer is None, as it is for a component
        that is not a folder when not `create` (with `create` that is an error).
        """
        pending = list(reversed(parts))
        resolved: list[str] = []
        follows = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            path = self._path([*resolved, part])
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    return None
                os.mkdir(path, 0o700)
                _set_folder_mode(path, 0o755)
                resolved.append(part)
                continue
            if stat.S_ISLNK(info.st_mode):
                follows += 1
                if follows > MAX_SYMLINK_FOLLOWS:
                    raise ImageError(
                        f"A layer's path {'/'.join(parts)!r} goes through too many symbolic "
                        "links (a loop?)."
                    )
                target = os.readlink(path)
                if target.startswith("/"):
                    resolved = []
                pending.extend(reversed(target.split("/")))
                continue
            if not stat.S_ISDIR(info.st_mode):
                if not create:
                    return None
                raise ImageError(
                    f"A layer puts files under {'/'.join(parts)!r}, which is not a folder."
                )
            resolved.append(part)
        return resolved

    def apply(self, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        self.budget.count_file()
        parts = _name_parts(member.name)
        # The root itself, or a name ending in "..": a folder that already exists.
        if not parts or parts[-1] == "..":
            return
        name = parts[-1]
        if name.startswith(WHITEOUT_PREFIX):
            folder = self.resolve(parts[:-1], create=False)
            if folder is not None:
                self._whiteout(folder, name)
            return
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            return  # devices and FIFOs: the sandbox supplies /dev
        parent = self.resolve(parts[:-1], create=True)
        assert parent is not None
        entry = [*parent, name]
        path = self._path(entry)
        if member.isreg():
            self._regular(path, member, archive)
        elif member.isdir():
            self._folder(path, member.mode)
        elif member.issym():
            if "\0" in member.linkname:
                raise ImageError("A layer has a link target containing a NUL character.")
            if not member.linkname:
                return
            _remove(path)
            os.symlink(member.linkname, path)
        elif not self._hard_link(path, member.linkname):
            return
        self._mark(entry)

    def _regular(self, path: str, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        self.budget.count_bytes(member.size)
        _remove(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        source = archive.extractfile(member)
        with open(os.open(path, flags, 0o600), "wb") as sink:
            if source is not None:
                while chunk := source.read(CHUNK_BYTES):
                    sink.write(chunk)
            # Permission bits only: setuid, setgid and sticky bits are dropped.
            os.fchmod(sink.fileno(), member.mode & 0o777)

    def _folder(self, path: str, mode: int) -> None:
        """A folder: an existing one keeps its contents (its mode is updated); anything else
        there is replaced."""
        try:
            is_folder = stat.S_ISDIR(os.lstat(path).st_mode)
        except FileNotFoundError:
            is_folder = False
        if not is_folder:
            _remove(path)
            os.mkdir(path, 0o700)
        _set_folder_mode(path, mode)

    def _hard_link(self, path: str, target: str) -> bool:
        """Link `path` to `target` if that resolves to a regular file inside the rootfs."""
        parts = _name_parts(target)
        if not parts or parts[-1] == "..":
            return False
        folder = self.resolve(parts[:-1], create=False)
        if folder is None:
            return False
        source = self._path([*folder, parts[-1]])
        try:
            info = os.lstat(source)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(info.st_mode) or source == path:
            return False
        _remove(path)
        os.link(source, path, follow_symlinks=False)
        return True

    def _whiteout(self, parent: list[str], name: str) -> None:
        if name == OPAQUE_WHITEOUT:
            for child in os.listdir(self._path(parent)):
                self._hide_lower([*parent, child])
            return
        if name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other aufs bookkeeping (hard-link folders): nothing for an image
        hidden = name.removeprefix(WHITEOUT_PREFIX)
        if hidden not in ("", ".", ".."):
            self._hide_lower([*parent, hidden])

    def _hide_lower(self, parts: list[str]) -> None:
        """Remove what lower layers put at `parts`, keeping what this layer wrote there."""
        pending = [parts]
        while pending:
            parts = pending.pop()
            path = self._path(parts)
            if "/".join(parts) not in self.written:
                _remove(path)
                continue
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    pending.extend([*parts, child] for child in os.listdir(path))


def _unpack_blob(blob: IO[bytes], rootfs: Path, budget: Budget, what: str) -> None:
    """Unpack a downloaded layer, gzip-compressed or not (told by its first bytes)."""
    head = blob.read(len(ZSTD_MAGIC))
    blob.seek(0)
    if head == ZSTD_MAGIC:
        raise ImageError(f"{what} is zstd-compressed; Catwalk unpacks tar and gzip layers only.")
    if head.startswith(GZIP_MAGIC):
        with gzip.GzipFile(fileobj=blob, mode="rb") as stream:
            unpack_layer(stream, rootfs, budget=budget)
    else:
        unpack_layer(blob, rootfs, budget=budget)


# --- the registry ------------------------------------------------------------------------------


def _host_architecture() -> str:
    machine = host_platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


HOST_PLATFORM = ("linux", _host_architecture())


def _silent(_: str) -> None:
    pass


class _Retryable(Exception):
    """A rate limit, a server error or a broken connection: worth another attempt."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Refused(Exception):
    """Any other HTTP error status."""

    def __init__(self, code: int, headers: Any, url: str) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code
        self.headers = headers
        self.url = url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by `Registry._open`, which decides what credentials go along."""

    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default_port


def _retry_after(headers: Any) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except (TypeError, ValueError):
        return None  # absent, or an HTTP date: the usual delay does


def _bearer_challenge(header: str | None) -> dict[str, str] | None:
    """The parameters of a `WWW-Authenticate: Bearer realm=...,service=...,scope=...` header."""
    scheme, _, rest = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    parameters = {
        match[1].lower(): re.sub(r"\\(.)", r"\1", match[2]) if match[2] is not None else match[3]
        for match in _CHALLENGE_PARAMETER.finditer(rest)
    }
    return parameters if parameters.get("realm") else None


def _read_capped(response: IO[bytes], cap: int, what: str) -> bytes:
    try:
        body = response.read(cap + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise _Retryable(str(exc)) from None
    if len(body) > cap:
        raise ImageError(f"{what} is larger than the {_size_text(cap)} Catwalk reads.")
    return body


def _json(data: bytes) -> object:
    """Parsed JSON, or None for anything unparsable (deep nesting included)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _variant(entry: dict) -> object:
    platform = entry.get("platform")
    return platform.get("variant") if isinstance(platform, dict) else None


def _strings(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ImageError(f"The image's config is malformed: {what} is not a list of strings.")
    return list(value)


def _image_config(document: object) -> ImageConfig:
    """The run settings of an image config blob (null and missing fields are empty)."""
    settings = document.get("config") if isinstance(document, dict) else None
    if not isinstance(settings, dict):
        settings = {}
    env: dict[str, str] = {}
    for item in _strings(settings.get("Env"), "Env"):
        name, equals, value = item.partition("=")
        if name and equals:
            env[name] = value
    working_dir = settings.get("WorkingDir") or ""
    user = settings.get("User") or ""
    if not isinstance(working_dir, str) or not isinstance(user, str):
        raise ImageError("The image's config is malformed: WorkingDir or User is not a string.")
    return ImageConfig(
        entrypoint=_strings(settings.get("Entrypoint"), "Entrypoint"),
        cmd=_strings(settings.get("Cmd"), "Cmd"),
        env=env,
        working_dir=working_dir,
        user=user,
    )


@dataclass(frozen=True)
class _Descriptor:
    media_type: str
    digest: str
    size: int


def _descriptor(value: object, what: str) -> _Descriptor:
    if not isinstance(value, dict):
        raise ImageError(f"The image's manifest is malformed: {what} is missing.")
    digest, size = value.get("digest"), value.get("size")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ImageError(
            f"The image's manifest names {what} by {digest!r}; Catwalk pulls sha256 digests only."
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"The image's manifest gives {what} no valid size.")
    media_type = value.get("mediaType")
    return _Descriptor(media_type if isinstance(media_type, str) else "", digest, size)


class Registry:
    """An anonymous client of OCI registries (Distribution API v2)."""

    def __init__(
        self,
        urls: Mapping[str, str] | None = None,
        *,
        timeout: float = 60.0,
        limits: Limits = DEFAULT_LIMITS,
        platform: tuple[str, str] = HOST_PLATFORM,
        say: Callable[[str], None] = _silent,
    ) -> None:
        """`urls` maps a registry host (as in references) to its base URL; by default Docker
        Hub is https://registry-1.docker.io and any other host https://<host>."""
        self._urls = {host: url.rstrip("/") for host, url in (urls or {}).items()}
        self._timeout = timeout
        self._limits = limits
        self._platform = platform
        self._say = say
        self._tokens: dict[tuple[str, str], str] = {}
        self._opener = urllib.request.build_opener(_NoRedirects)
        self._deadline = time.monotonic() + PULL_DEADLINE_SECONDS

    def _base(self, registry: str) -> str:
        if registry in self._urls:
            return self._urls[registry]
        return DOCKER_HUB_URL if registry == DOCKER_HUB else f"https://{registry}"

    # -- HTTP ----------------------------------------------------------------------------------

    def _open(self, url: str, accept: str, credential: tuple[str, str] | None) -> Any:
        """One attempt at GET `url`, redirects followed; the response, open.

        `credential` is (base URL, Authorization value): sent only to that origin, so a blob
        redirected to a storage host never carries the registry's token there.
        """
        for _ in range(MAX_REDIRECTS + 1):
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise ImageError(f"The registry pointed Catwalk at {url[:200]!r}, not an HTTP URL.")
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})  # noqa: S310 - http(s) only, checked above
            if accept:
                request.add_header("Accept", accept)
            if credential is not None and _origin(url) == _origin(credential[0]):
                request.add_header("Authorization", credential[1])
            try:
                return self._opener.open(request, timeout=self._timeout)
            except urllib.error.HTTPError as exc:
                exc.close()
                location = exc.headers.get("Location")
                if exc.code in REDIRECT_STATUSES and location:
                    url = urllib.parse.urljoin(url, location)
                    continue
                if exc.code == 429 or exc.code >= 500:
                    raise _Retryable(f"HTTP {exc.code}", _retry_after(exc.headers)) from None
                raise _Refused(exc.code, exc.headers, url) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise _Retryable(str(reason)) from None
        raise ImageError("The registry redirected Catwalk too many times.")

    def _retrying(self, attempt: Callable[[], T], what: str) -> T:
        """Run `attempt`, again after a short wait when it meets a retryable failure."""
        for number in range(len(RETRY_DELAYS) + 1):
            self._check_deadline()
            try:
                return attempt()
            except _Retryable as problem:
                if number == len(RETRY_DELAYS):
                    raise ImageError(
                        f"The registry kept failing while Catwalk downloaded {what} "
                        f"({problem}); try again later."
                    ) from None
                delay = RETRY_DELAYS[number] if problem.retry_after is None else problem.retry_after
                time.sleep(min(delay, MAX_RETRY_AFTER_SECONDS))
        raise AssertionError("unreachable")

    def _check_deadline(self) -> None:
        if time.monotonic() > self._deadline:
            raise ImageError("The image download is too slow; try again later.")

    def _fetch(
        self,
        ref: Reference,
        path: str,
        what: str,
        consume: Callable[[Any], T],
        accept: str = "",
    ) -> T:
        """GET `path` from `ref`'s registry and hand the response to `consume`, with retries
        and anonymous Bearer authentication. `consume` may raise _Retryable (a broken body)."""
        base = self._base(ref.registry)
        url = base + path
        key = (ref.registry, ref.repository)

        def attempt() -> T:
            token = self._tokens.get(key)
            credential = (base, f"Bearer {token}") if token else None
            with self._open(url, accept, credential) as response:
                return consume(response)

        for authenticated in (False, True):
            try:
                return self._retrying(attempt, what)
            except _Refused as refusal:
                on_registry = _origin(refusal.url) == _origin(base)
                challenge = _bearer_challenge(refusal.headers.get("WWW-Authenticate"))
                if refusal.code != 401 or not on_registry or challenge is None or authenticated:
                    raise self._refusal(refusal, ref, what, on_registry) from None
                self._tokens[key] = self._token(ref, challenge)
        raise AssertionError("unreachable")

    @staticmethod
    def _refusal(refusal: _Refused, ref: Reference, what: str, on_registry: bool) -> ImageError:
        if refusal.code in (401, 403) and on_registry:
            return ImageError(
                f"The registry refused access to {ref} (HTTP {refusal.code}): Catwalk pulls "
                "public images only; private images are not supported."
            )
        if refusal.code == 404:
            return ImageError(f"{what[0].upper()}{what[1:]} was not found in its registry.")
        return ImageError(f"The registry answered HTTP {refusal.code} for {what}.")

    def _token(self, ref: Reference, challenge: dict[str, str]) -> str:
        """An anonymous pull token from the challenge's realm."""
        realm = challenge["realm"]
        if urllib.parse.urlsplit(realm).scheme not in ("http", "https"):
            raise ImageError(f"The registry's token service {realm[:200]!r} is not an HTTP URL.")
        query = {"scope": challenge.get("scope") or f"repository:{ref.repository}:pull"}
        if challenge.get("service"):
            query["service"] = challenge["service"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        what = f"an access token for {ref}"

        def attempt() -> bytes:
            with self._open(url, "application/json", None) as response:
                return _read_capped(response, MAX_TOKEN_RESPONSE_BYTES, what)

        try:
            body = self._retrying(attempt, what)
        except _Refused as refusal:
            raise ImageError(
                f"The registry's token service refused {ref} (HTTP {refusal.code}): Catwalk "
                "pulls public images only; private images are not supported."
            ) from None
        answer = _json(body)
        token = None
        if isinstance(answer, dict):
            token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not token.isascii() or not token.isprintable():
            raise ImageError(f"The registry's token service sent no usable token for {ref}.")
        return token

    # -- manifests and blobs -------------------------------------------------------------------

    def _manifest(self, ref: Reference, reference: str) -> tuple[dict, bool, str]:
        """The manifest or index `reference` names: (document, is an index, its digest)."""
        what = f"the manifest of {ref}"

        def consume(response: Any) -> tuple[bytes, str, str]:
            body = _read_capped(response, MAX_MANIFEST_BYTES, what)
            headers = response.headers
            return body, headers.get("Content-Type", ""), headers.get("Docker-Content-Digest", "")

        path = f"/v2/{ref.repository}/manifests/{reference}"
        body, content_type, announced = self._fetch(ref, path, what, consume, MANIFEST_ACCEPT)
        digest = _sha256(body)
        if reference.startswith("sha256:") and digest != reference:
            raise ImageError(
                f"The registry sent a manifest for {ref} that does not match its digest "
                f"{reference}."
            )
        if announced.startswith("sha256:") and announced != digest:
            raise ImageError(f"The manifest of {ref} does not match the digest the registry gave.")
        document = _json(body)
        if not isinstance(document, dict):
            raise ImageError(f"The manifest of {ref} is not a JSON object.")
        media_type = document.get("mediaType") or content_type.split(";")[0].strip()
        if document.get("schemaVersion") != 2:
            raise ImageError(
                f"{ref} has an old Docker schema 1 manifest; Catwalk pulls OCI and Docker "
                "schema 2 images."
            )
        if media_type in INDEX_TYPES or (not media_type and "manifests" in document):
            return document, True, digest
        if media_type in MANIFEST_TYPES or (not media_type and "layers" in document):
            return document, False, digest
        raise ImageError(
            f"The manifest of {ref} is of a type Catwalk does not pull: {media_type!r}."
        )

    def _choose(self, ref: Reference, index: dict) -> str:
        """The digest of the index entry for this runner's platform."""
        wanted_os, wanted_architecture = self._platform
        entries = [entry for entry in index.get("manifests") or [] if isinstance(entry, dict)]
        offered: list[str] = []
        matches: list[dict] = []
        for entry in entries:
            platform = entry.get("platform")
            annotations = entry.get("annotations")
            if not isinstance(platform, dict) or (
                isinstance(annotations, dict)
                and annotations.get("vnd.docker.reference.type") == "attestation-manifest"
            ):
                continue
            os_name, architecture = platform.get("os"), platform.get("architecture")
            if "unknown" in (os_name, architecture):
                continue
            offered.append(
                "/".join(str(v) for v in (os_name, architecture, platform.get("variant")) if v)
            )
            if (os_name, architecture) == (wanted_os, wanted_architecture):
                matches.append(entry)
        if not matches and len(entries) == 1 and "platform" not in entries[0]:
            matches = entries  # a one-image index without platforms: its config says (checked)
        if not matches:
            raise ImageError(
                f"{ref} has no {wanted_os}/{wanted_architecture} image; it offers "
                f"{', '.join(offered) or 'no platform Catwalk can use'}."
            )
        # amd64 "v2"/"v3" and arm64 "v8" variants are refinements: prefer the plain entry.
        plain = [entry for entry in matches if _variant(entry) in (None, "", "v8")]
        return _descriptor((plain or matches)[0], "the platform's manifest").digest

    def _download(self, ref: Reference, blob: _Descriptor, sink: IO[bytes], what: str) -> None:
        """Stream a blob into `sink`, checking its size and digest."""
        path = f"/v2/{ref.repository}/blobs/{blob.digest}"

        def consume(response: Any) -> str:
            sink.seek(0)
            sink.truncate()
            hasher = hashlib.sha256()
            received = 0
            while True:
                self._check_deadline()
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retryable(str(exc)) from None
                if not chunk:
                    return "sha256:" + hasher.hexdigest()
                received += len(chunk)
                if received > blob.size:
                    raise ImageError(f"{what} is larger than its manifest says.")
                hasher.update(chunk)
                sink.write(chunk)

        digest = self._fetch(ref, path, what, consume)
        if sink.tell() != blob.size or digest != blob.digest:
            raise ImageError(
                f"{what[0].upper()}{what[1:]} does not match its digest {blob.digest}: the "
                "download is corrupt."
            )

    def _config(self, ref: Reference, blob: _Descriptor) -> ImageConfig:
        what = f"the config of {ref}"
        if blob.size > MAX_CONFIG_BYTES:
            raise ImageError(
                f"{what} is larger than the {_size_text(MAX_CONFIG_BYTES)} Catwalk reads."
            )
        path = f"/v2/{ref.repository}/blobs/{blob.digest}"
        body = self._fetch(ref, path, what, lambda r: _read_capped(r, MAX_CONFIG_BYTES, what))
        if len(body) != blob.size or _sha256(body) != blob.digest:
            raise ImageError(f"The config of {ref} does not match its digest {blob.digest}.")
        document = _json(body)
        if not isinstance(document, dict):
            raise ImageError(f"The config of {ref} is not a JSON object.")
        wanted = "/".join(self._platform)
        if document.get("os") and document.get("architecture"):
            built_for = f"{document['os']}/{document['architecture']}"
            if built_for != wanted:
                raise ImageError(f"{ref} is built for {built_for}; this runner needs {wanted}.")
        return _image_config(document)

    # -- pulling -------------------------------------------------------------------------------

    def pull(self, ref: Reference, folder: Path) -> PulledImage:
        """Pull `ref` into `folder`: `rootfs/`, `config.json` and, last, the pulled marker.

        Whatever it wrote in `folder` is removed when it fails (the folder too, if it made it).
        """
        folder = Path(folder)
        made_folder = not folder.exists()
        self._deadline = time.monotonic() + PULL_DEADLINE_SECONDS
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _discard_pull(folder)
            return self._pull(ref, folder)
        except BaseException as exc:
            if made_folder:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                _discard_pull(folder)
            if isinstance(exc, OSError):
                raise ImageError(
                    f"The image could not be written to disk: {exc.strerror or exc}."
                ) from None
            raise

    def _pull(self, ref: Reference, folder: Path) -> PulledImage:
        self._say(f"Pulling {ref}")
        document, is_index, digest = self._manifest(ref, ref.reference)
        for _ in range(MAX_INDEX_DEPTH):
            if not is_index:
                break
            document, is_index, _ = self._manifest(ref, self._choose(ref, document))
        if is_index:
            raise ImageError(f"{ref} has indexes nested deeper than Catwalk follows.")
        config = self._config(ref, _descriptor(document.get("config"), "its config"))
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise ImageError(f"The manifest of {ref} lists no layers.")
        if len(layers) > self._limits.max_layers:
            raise ImageError(
                f"{ref} has {len(layers)} layers; Catwalk accepts at most "
                f"{self._limits.max_layers}."
            )
        blobs = [_descriptor(layer, f"layer {n}") for n, layer in enumerate(layers, 1)]
        for n, blob in enumerate(blobs, 1):
            if blob.media_type not in LAYER_TYPES:
                raise ImageError(
                    f"Layer {n} of {ref} is {blob.media_type!r}; Catwalk unpacks tar and gzip "
                    "layers only (zstd and other formats are not supported)."
                )
        total = sum(blob.size for blob in blobs)
        if total > self._limits.max_compressed_bytes:
            raise ImageError(
                f"{ref} is {_size_text(total)} to download; Catwalk downloads at most "
                f"{_size_text(self._limits.max_compressed_bytes)}."
            )
        rootfs = folder / ROOTFS
        rootfs.mkdir(mode=0o755)
        budget = Budget(self._limits)
        for n, blob in enumerate(blobs, 1):
            what = f"layer {n} of {ref}"
            self._say(f"Layer {n}/{len(blobs)}: {_size_text(blob.size)}")
            download = folder / f".layer-{n}{DOWNLOAD_SUFFIX}"
            with open(download, "x+b") as sink:
                self._download(ref, blob, sink, what)
                sink.seek(0)
                _unpack_blob(sink, rootfs, budget, what[0].upper() + what[1:])
            download.unlink()
        saved = {"reference": str(ref), "digest": digest, **dataclasses.asdict(config)}
        _write_atomically(folder / SAVED_CONFIG, json.dumps(saved, indent=2).encode())
        _write_atomically(folder / PULLED_MARKER, f"{digest}\n".encode())
        self._say(f"Pulled {ref} ({digest}, {budget.files} files)")
        return PulledImage(folder, rootfs, digest, config)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{path.name}{DOWNLOAD_SUFFIX}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _discard_pull(folder: Path) -> None:
    """Remove what a pull writes in `folder`, the marker first so no half state looks done."""
    for name in (PULLED_MARKER, SAVED_CONFIG, ROOTFS):
        _remove(str(folder / name))
    for leftover in folder.glob(f"*{DOWNLOAD_SUFFIX}"):
        _remove(str(leftover))


def load(folder: Path) -> PulledImage | None:
    """A pulled image read back from `folder`; None unless a pull there finished (or when
    what it saved is unreadable, so that it is pulled again)."""
    folder = Path(folder)
    if not (folder / PULLED_MARKER).is_file():
        return None
    try:
        saved = json.loads((folder / SAVED_CONFIG).read_text())
        config = ImageConfig(
            entrypoint=_strings(saved["entrypoint"], "entrypoint"),
            cmd=_strings(saved["cmd"], "cmd"),
            env={str(k): str(v) for k, v in saved["env"].items()},
            working_dir=str(saved["working_dir"]),
            user=str(saved["user"]),
        )
        digest = str(saved["digest"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImageError):
        return None
    return PulledImage(folder, folder / ROOTFS, digest, config)


def _cache_key(ref: Reference) -> str:
    return hashlib.sha256(str(ref).encode()).hexdigest()[:32]


def cached(ref: Reference, images: Path) -> PulledImage | None:
    """The image `ref` names if `pull_once` already pulled it into `images` (no network)."""
    return load(Path(images) / _cache_key(ref))


def pull_once(ref: Reference, images: Path, registry: Registry) -> PulledImage:
    """The image `ref` names, pulled into `images/<key>` the first time and reused after.

    The key is a digest of the reference, so a tag is resolved at the first pull and kept
    until the reference changes; a new reference's image replaces every other in `images`.
    """
    images = Path(images)
    key = _cache_key(ref)
    final = images / key
    pulled = load(final)
    if pulled is not None:
        return pulled
    images.mkdir(parents=True, exist_ok=True)
    partial = images / f"{key}.partial-{secrets.token_hex(8)}"
    try:
        image = registry.pull(ref, partial)
        _remove(str(final))
        partial.rename(final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    for entry in images.iterdir():
        if entry.name != key:
            _remove(str(entry))
    return dataclasses.replace(image, folder=final, rootfs=final / ROOTFS)
