"""Reading repositories from GitHub: which URLs are accepted, and the client against a stand-in."""

from __future__ import annotations

import gzip
import io
import re
import socket
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from analysis.github import (
    ArchiveTooLarge,
    ExtractionLimits,
    GitHubClient,
    GitHubUnavailable,
    InvalidRepositoryURL,
    PrivateRepository,
    RateLimited,
    RefNotFound,
    RepoRef,
    RepositoryNotFound,
    SubdirectoryNotFound,
    TokenRejected,
    UnsafeArchive,
    parse_repository_url,
)
from analysis.tests.github_standin import GitHubStandin

PLATFORM_TOKEN = "platform-token"
USER_TOKEN = "user-token"
SMALL = ExtractionLimits(
    max_tarball_bytes=1024 * 1024, max_files=50, max_file_bytes=4096, max_total_bytes=16_384
)
FILES = {
    "README.md": b"# Everything\n",
    "package.json": b'{"name": "monorepo", "private": true}\n',
    "src/everything/package.json": b'{"name": "@modelcontextprotocol/server-everything"}\n',
    "src/everything/index.ts": b"console.log('hello')\n",
    "src/time/pyproject.toml": b'[project]\nname = "mcp-server-time"\n',
}


# --- URL parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://github.com/acme/weather", RepoRef("acme", "weather")),
        ("https://github.com/acme/weather/", RepoRef("acme", "weather")),
        ("https://github.com/acme/weather.git", RepoRef("acme", "weather")),
        ("  https://github.com/acme/weather\n", RepoRef("acme", "weather")),
        ("https://www.github.com/acme/weather", RepoRef("acme", "weather")),
        ("https://GitHub.com/Acme/Weather", RepoRef("Acme", "Weather")),
        ("https://github.com/a-b/c.d_e-f", RepoRef("a-b", "c.d_e-f")),
        ("https://github.com/acme/weather/tree/v1.2.0", RepoRef("acme", "weather", "v1.2.0")),
        (
            "https://github.com/modelcontextprotocol/servers/tree/main/src/everything",
            RepoRef("modelcontextprotocol", "servers", "main", "src/everything"),
        ),
        (
            "https://github.com/acme/mono/tree/main/packages/@scope/server/",
            RepoRef("acme", "mono", "main", "packages/@scope/server"),
        ),
    ],
)
def test_accepted_urls(url: str, expected: RepoRef) -> None:
    assert parse_repository_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "Paste the repository"),
        ("github.com/acme/weather", "Only https://"),
        ("http://github.com/acme/weather", "Only https://"),
        ("ssh://git@github.com/acme/weather.git", "Only https://"),
        ("https://gitlab.com/acme/weather", "github.com"),
        ("https://github.com.evil.example/acme/weather", "github.com"),
        ("https://api.github.com/repos/acme/weather", "github.com"),
        ("https://github.com:8443/acme/weather", "github.com"),
        ("https://user:ghp_secret@github.com/acme/weather", "Remove the user name or token"),
        ("https://ghp_secret@github.com/acme/weather", "Remove the user name or token"),
        ("https://github.com/acme/weather?tab=readme", "query string"),
        ("https://github.com/acme/weather?", "query string"),
        ("https://github.com/acme/weather#readme", "query string"),
        ("https://github.com/acme", "owner and a repository"),
        ("https://github.com/", "owner and a repository"),
        ("https://github.com//weather", "owner and a repository"),
        ("https://github.com/acme//weather", "owner and a repository"),
        ("https://github.com/acme/weather/tree/main//src", "owner and a repository"),
        ("https://github.com/-acme/weather", "not a valid GitHub user"),
        ("https://github.com/ac--me/weather", "not a valid GitHub user"),
        ("https://github.com/" + "a" * 40 + "/weather", "not a valid GitHub user"),
        ("https://github.com/acme/we$ther", "not a valid GitHub repository"),
        ("https://github.com/acme/..", "not a valid GitHub repository"),
        ("https://github.com/acme/weather/blob/main/README.md", "not another page"),
        ("https://github.com/acme/weather/issues", "not another page"),
        ("https://github.com/acme/weather/tree", "not another page"),
        ("https://github.com/acme/weather/tree/main/src/../../etc", "folder name '..'"),
        ("https://github.com/acme/weather/tree/main/./src", "folder name '.'"),
        ("https://github.com/acme/weather/tree/main/src/%2e%2e", "encoded"),
        ("https://github.com/acme/weather/tree/main/a\\b", "encoded or unusual"),
        ("https://github.com/acme/weather/tree/main/sr;c", "folder name"),
        ("https://github.com/acme/weather/tree/ma..in", "not a valid branch"),
        ("https://github.com/acme/weather/tree/.hidden", "not a valid branch"),
        ("https://github.com/acme/weather/tree/-rf", "not a valid branch"),
        ("https://github.com/acme/weather/tree/topic.lock", "not a valid branch"),
        ("https://github.com/acme/weather/tree/ma~in", "characters"),
        ("https://github.com/acme/wea ther", "spaces or control"),
        ("https://github.com/acme/wea\x00ther", "spaces or control"),
        ("https://github.com/acme/" + "w" * 2000, "too long"),
        ("https://[::1/acme/weather", "not a valid URL"),
    ],
)
def test_refused_urls(url: str, reason: str) -> None:
    with pytest.raises(InvalidRepositoryURL, match=re.escape(reason)):
        parse_repository_url(url)


# --- The client against the stand-in -------------------------------------------------------------


@pytest.fixture(scope="module")
def running_standin() -> Iterator[GitHubStandin]:
    server = GitHubStandin()
    yield server
    server.close()


@pytest.fixture
def standin(running_standin: GitHubStandin, settings) -> GitHubStandin:
    running_standin.reset()
    running_standin.valid_tokens |= {PLATFORM_TOKEN, USER_TOKEN}
    settings.GITHUB_API_URL = running_standin.api_url
    settings.GITHUB_TOKEN = PLATFORM_TOKEN
    return running_standin


@pytest.fixture
def servers_sha(standin: GitHubStandin) -> str:
    return standin.add_repository("modelcontextprotocol", "servers", FILES)


def client(owner: str = "modelcontextprotocol", name: str = "servers", **kwargs) -> GitHubClient:
    return GitHubClient(RepoRef(owner, name), **kwargs)


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_repository_reports_default_branch_and_visibility(standin, servers_sha) -> None:
    with client() as github:
        info = github.repository()
    assert info.default_branch == "main"
    assert info.private is False
    assert info.full_name == "modelcontextprotocol/servers"


def test_commit_sha_resolves_a_branch(standin, servers_sha) -> None:
    with client() as github:
        assert github.commit_sha("main") == servers_sha
    commits = [r for r in standin.requests if "/commits/" in r.path]
    assert commits[0].headers["accept"] == "application/vnd.github+json"


def test_unknown_ref_is_reported_as_such(standin, servers_sha) -> None:
    with client() as github, pytest.raises(RefNotFound, match="no branch, tag or commit 'nope'"):
        github.commit_sha("nope")


def test_unknown_repository_is_not_found(standin) -> None:
    with client("acme", "ghost") as github, pytest.raises(RepositoryNotFound, match="acme/ghost"):
        github.repository()


def test_download_strips_the_top_folder(standin, servers_sha, tmp_path) -> None:
    destination = tmp_path / "checkout"
    with client() as github:
        folder = github.download(servers_sha, destination)
    assert folder == destination.resolve()
    assert files_under(destination) == FILES


def test_download_returns_the_requested_subdirectory(standin, servers_sha, tmp_path) -> None:
    with client() as github:
        folder = github.download(servers_sha, tmp_path / "checkout", "src/everything")
    assert folder == (tmp_path / "checkout" / "src" / "everything").resolve()
    assert sorted(files_under(folder)) == ["index.ts", "package.json"]


def test_missing_subdirectory_is_reported_and_cleaned_up(standin, servers_sha, tmp_path) -> None:
    with client() as github, pytest.raises(SubdirectoryNotFound, match="no folder 'src/nope'"):
        github.download(servers_sha, tmp_path / "checkout", "src/nope")
    assert not (tmp_path / "checkout").exists()


def test_download_follows_the_redirect_without_sending_the_token_to_codeload(
    standin, servers_sha, tmp_path
) -> None:
    with client() as github:
        github.download(servers_sha, tmp_path / "checkout")
    api = [r for r in standin.requests if r.host == "api"]
    codeload = [r for r in standin.requests if r.host == "codeload"]
    assert all(r.headers.get("authorization") == f"Bearer {PLATFORM_TOKEN}" for r in api)
    assert len(codeload) == 1
    assert "authorization" not in codeload[0].headers


def test_download_refuses_a_destination_with_files(standin, servers_sha, tmp_path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with client() as github, pytest.raises(ValueError, match="not empty"):
        github.download(servers_sha, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_private_repository_without_a_user_token_reads_as_not_found(standin, tmp_path) -> None:
    standin.add_repository("acme", "secret", {"a.txt": b"a"}, private=True)
    with client("acme", "secret") as github, pytest.raises(RepositoryNotFound, match="private"):
        github.repository()


def test_platform_token_is_never_used_to_read_a_private_repository(standin, tmp_path) -> None:
    sha = standin.add_repository("acme", "secret", {"a.txt": b"a"}, private=True)
    standin.private_readers.add(PLATFORM_TOKEN)
    with client("acme", "secret") as github:
        with pytest.raises(PrivateRepository, match="Connect a GitHub token"):
            github.commit_sha("main")
        with pytest.raises(PrivateRepository):
            github.download(sha, tmp_path / "checkout")
    assert [r.path for r in standin.requests] == ["/repos/acme/secret"]
    assert not (tmp_path / "checkout").exists()


def test_user_token_reads_a_private_repository(standin, tmp_path) -> None:
    standin.add_repository("acme", "secret", {"server.py": b"print(1)\n"}, private=True)
    standin.private_readers.add(USER_TOKEN)
    with client("acme", "secret", user_token=USER_TOKEN) as github:
        assert github.repository().private is True
        sha = github.commit_sha("main")
        github.download(sha, tmp_path / "checkout")
    assert files_under(tmp_path / "checkout") == {"server.py": b"print(1)\n"}
    sent = [r.headers.get("authorization") for r in standin.requests if r.host == "api"]
    assert sent == [f"Bearer {USER_TOKEN}"] * 3


def test_user_token_without_access_reads_as_not_found(standin) -> None:
    standin.add_repository("acme", "secret", {"a.txt": b"a"}, private=True)
    with (
        client("acme", "secret", user_token=USER_TOKEN) as github,
        pytest.raises(RepositoryNotFound, match="your GitHub token cannot read it"),
    ):
        github.repository()


def test_rejected_token_says_so(standin, servers_sha) -> None:
    with (
        client(user_token="revoked") as github,
        pytest.raises(TokenRejected, match="invalid or expired"),
    ):
        github.repository()


@pytest.mark.parametrize("status", [403, 429])
def test_rate_limit_names_the_reset_time(standin, servers_sha, status) -> None:
    standin.rate_limited, standin.rate_limit_status = True, status
    standin.rate_limit_reset = int(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())
    with client() as github, pytest.raises(RateLimited, match="2030-01-02 03:04:05 UTC") as caught:
        github.repository()
    assert caught.value.reset_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_dropped_connection_is_a_network_failure(standin, servers_sha) -> None:
    standin.drop_connections = True
    with client() as github, pytest.raises(GitHubUnavailable, match="Could not reach GitHub"):
        github.repository()


def test_unreachable_api_is_a_network_failure(settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.GITHUB_API_URL = f"http://127.0.0.1:{port}"
    with client() as github, pytest.raises(GitHubUnavailable, match="Could not reach GitHub"):
        github.repository()


# --- Size limits and hostile tarballs ------------------------------------------------------------

TOP = "acme-tricky-0123456"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def tricky(standin: GitHubStandin) -> GitHubStandin:
    standin.add_repository("acme", "tricky", {})
    standin.repositories["acme/tricky"].refs["main"] = SHA
    return standin


def entry(name: str, content: bytes = b"", **attributes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    for key, value in attributes.items():
        setattr(info, key, value)
    return info, content


def tarball(*entries: tuple[tarfile.TarInfo, bytes], top: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        if top:
            archive.addfile(entry(TOP + "/", type=tarfile.DIRTYPE, mode=0o755)[0])
        for info, content in entries:
            archive.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return buffer.getvalue()


def raw_headers(*infos: tarfile.TarInfo) -> bytes:
    """Bare headers, gzipped, declaring whatever sizes they like with no data behind them."""
    headers = b"".join(info.tobuf(tarfile.USTAR_FORMAT) for info in infos)
    return gzip.compress(headers + b"\0" * 1024)


def download(tmp_path: Path, limits: ExtractionLimits | None = None) -> Path:
    with client("acme", "tricky", limits=limits) as github:
        return github.download(SHA, tmp_path / "work" / "checkout")


def assert_nothing_written(tmp_path: Path) -> None:
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert left == ["work"], left


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([entry(f"{TOP}/../escape.txt", b"x")], "outside the destination"),
        ([entry(f"{TOP}/a/../../../escape.txt", b"x")], "outside the destination"),
        ([entry("/tmp/absolute-escape.txt", b"x")], "outside its top folder"),
        ([entry("../escape.txt", b"x")], "outside its top folder"),
        ([entry("other-top/file.txt", b"x")], "outside its top folder"),
        ([entry(f"{TOP}/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)], "device file"),
        ([entry(f"{TOP}/disk", type=tarfile.BLKTYPE, devmajor=8, devminor=0)], "device file"),
        ([entry(f"{TOP}/pipe", type=tarfile.FIFOTYPE)], "device file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "leading-dotdot", "two-tops", "chr", "blk", "fifo"],
)
def test_hostile_paths_are_refused_and_nothing_is_left_behind(
    tricky, tmp_path, entries, reason
) -> None:
    # A harmless file first, so a late refusal would have left it behind.
    tricky.set_tarball("acme", "tricky", SHA, tarball(entry(f"{TOP}/ok.txt", b"ok"), *entries))
    with pytest.raises(UnsafeArchive, match=reason):
        download(tmp_path)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "link",
    [
        entry(f"{TOP}/up", type=tarfile.SYMTYPE, linkname="../../.."),
        entry(f"{TOP}/up", type=tarfile.SYMTYPE, linkname=str(Path.cwd().anchor) + "tmp"),
        entry(f"{TOP}/up", type=tarfile.LNKTYPE, linkname="../../outside.txt"),
        entry(f"{TOP}/up", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
    ],
    ids=["symlink-relative", "symlink-absolute", "hardlink-relative", "hardlink-absolute"],
)
def test_links_are_skipped_so_nothing_lands_outside(tricky, tmp_path, link) -> None:
    (tmp_path / "outside.txt").write_text("untouched")
    payload = entry(f"{TOP}/up/planted.txt", b"through the link")
    tricky.set_tarball("acme", "tricky", SHA, tarball(entry(f"{TOP}/ok.txt", b"ok"), link, payload))
    folder = download(tmp_path)
    assert not (folder / "up").is_symlink()
    assert files_under(folder) == {"ok.txt": b"ok", "up/planted.txt": b"through the link"}
    assert (tmp_path / "outside.txt").read_text() == "untouched"
    outside = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert {p for p in outside if not p.startswith("work/checkout/")} == {
        "outside.txt",
        "work",
        "work/checkout",
    }


def test_extracted_modes_drop_setuid_and_world_write(tricky, tmp_path) -> None:
    tricky.set_tarball(
        "acme", "tricky", SHA, tarball(entry(f"{TOP}/run.sh", b"#!/bin/sh\n", mode=0o6777))
    )
    folder = download(tmp_path)
    assert (folder / "run.sh").stat().st_mode & 0o7777 == 0o755


def test_a_file_declaring_two_gigabytes_is_refused_from_its_header(tricky, tmp_path) -> None:
    huge = entry(f"{TOP}/huge.bin")[0]
    huge.size = 2 * 1024**3
    tricky.set_tarball("acme", "tricky", SHA, raw_headers(entry(TOP + "/")[0], huge))
    with pytest.raises(ArchiveTooLarge, match=r"'huge\.bin' is larger than the 10 MiB"):
        download(tmp_path)
    assert_nothing_written(tmp_path)


def test_an_extended_header_declaring_two_gigabytes_is_not_read(tricky, tmp_path) -> None:
    pax = entry(f"{TOP}/PaxHeader", type=tarfile.XHDTYPE)[0]
    pax.size = 2 * 1024**3
    tricky.set_tarball("acme", "tricky", SHA, raw_headers(entry(TOP + "/")[0], pax))
    with pytest.raises(ArchiveTooLarge, match="unpacks to more data"):
        download(tmp_path, SMALL)
    assert_nothing_written(tmp_path)


def test_files_adding_up_past_the_total_are_refused(tricky, tmp_path) -> None:
    files = [entry(f"{TOP}/part{n}.bin", b"\0" * 4096) for n in range(5)]
    tricky.set_tarball("acme", "tricky", SHA, tarball(*files))
    with pytest.raises(ArchiveTooLarge, match="unpacks to more than 16384 bytes"):
        download(tmp_path, SMALL)
    assert_nothing_written(tmp_path)


def empty_files(count: int) -> bytes:
    """A tarball of `count` empty files, made from one header template (tarfile is too slow)."""
    template = bytearray(tarfile.TarInfo(f"{TOP}/f000000").tobuf(tarfile.USTAR_FORMAT))
    template[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    digits = slice(len(TOP) + 2, len(TOP) + 8)
    headers = [entry(TOP + "/", type=tarfile.DIRTYPE)[0].tobuf(tarfile.USTAR_FORMAT)]
    for n in range(count):
        header = template.copy()
        header[digits] = b"%06d" % n
        header[148:155] = b"%06o\0" % sum(header)
        headers.append(bytes(header))
    return gzip.compress(b"".join(headers) + b"\0" * 1024, compresslevel=1)


def test_empty_files_builds_a_valid_tarball() -> None:
    with tarfile.open(fileobj=io.BytesIO(empty_files(3)), mode="r:gz") as archive:
        assert archive.getnames() == [TOP, f"{TOP}/f000000", f"{TOP}/f000001", f"{TOP}/f000002"]


def test_too_many_files_are_refused_before_any_is_written(tricky, tmp_path) -> None:
    tricky.set_tarball("acme", "tricky", SHA, empty_files(100_000))
    with pytest.raises(ArchiveTooLarge, match="more than 20000 files"):
        download(tmp_path)
    assert_nothing_written(tmp_path)


def test_a_tarball_declared_too_large_is_not_downloaded(tricky, tmp_path) -> None:
    tricky.set_tarball("acme", "tricky", SHA, b"\0" * (SMALL.max_tarball_bytes + 1))
    with pytest.raises(ArchiveTooLarge, match="larger than the 1 MiB Catwalk downloads"):
        download(tmp_path, SMALL)
    assert tricky.codeload_bytes_sent <= SMALL.max_tarball_bytes + 1
    assert_nothing_written(tmp_path)


def test_an_endless_streamed_tarball_is_cut_off_at_the_cap(tricky, tmp_path) -> None:
    chunk = b"\0" * (256 * 1024)
    gigabyte_of_zeros = lambda: (chunk for _ in range(4096))  # noqa: E731 - lazily, never stored
    tricky.set_tarball("acme", "tricky", SHA, gigabyte_of_zeros)
    with pytest.raises(ArchiveTooLarge, match="larger than the 1 MiB"):
        download(tmp_path, SMALL)
    # What the server had pushed into socket buffers when the client hung up, not a gigabyte.
    assert tricky.codeload_bytes_sent < 64 * 1024 * 1024
    assert_nothing_written(tmp_path)


def test_a_download_past_its_deadline_is_abandoned(tricky, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("analysis.github.DOWNLOAD_DEADLINE_SECONDS", -1.0)
    chunk = b"\0" * 1024
    tricky.set_tarball("acme", "tricky", SHA, lambda: (chunk for _ in range(100)))
    with pytest.raises(GitHubUnavailable, match="too slow"):
        download(tmp_path)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "body",
    [b"not a tarball at all", gzip.compress(b"not a tar inside", mtime=0), b""],
    ids=["plain-text", "gzip-of-text", "empty"],
)
def test_a_download_that_is_not_a_tarball_is_refused(tricky, tmp_path, body) -> None:
    tricky.set_tarball("acme", "tricky", SHA, body)
    with pytest.raises(UnsafeArchive, match=r"not a readable tarball|archive is empty"):
        download(tmp_path)
    assert_nothing_written(tmp_path)


def test_a_truncated_tarball_is_refused_and_cleaned_up(tricky, tmp_path) -> None:
    whole = tarball(entry(f"{TOP}/a.txt", b"a" * 3000), entry(f"{TOP}/b.txt", b"b" * 3000))
    truncated = gzip.compress(gzip.decompress(whole)[:2048])
    tricky.set_tarball("acme", "tricky", SHA, truncated)
    with pytest.raises(UnsafeArchive, match="not a readable tarball"):
        download(tmp_path)
    assert_nothing_written(tmp_path)
