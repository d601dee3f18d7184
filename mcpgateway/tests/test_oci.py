"""OCI images for the Fly runner (`mcpgateway.oci`): references, pulls through a stand-in
registry that speaks the Distribution API, and the unpacking of untrusted layers, which runs
as root on the host and must never write, link or delete outside the root filesystem.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from mcpgateway import oci
from mcpgateway.oci import (
    HOST_PLATFORM,
    PULLED_MARKER,
    Budget,
    ImageConfig,
    ImageError,
    Limits,
    Reference,
    Registry,
    load,
    parse_reference,
    pull_once,
    unpack_layer,
)
from mcpgateway.tests.oci_standin import (
    FIXTURE_CONFIG,
    FIXTURE_ENV,
    FIXTURE_PROTOCOL_VERSION,
    FIXTURE_SERVER,
    FIXTURE_TOOLS,
    OCI_LAYER_ZSTD,
    Entry,
    RegistryStandIn,
    dash_libraries,
    device,
    directory,
    fixture_image,
    fixture_layers,
    hardlink,
    opaque,
    regular,
    sha256_digest,
    symlink,
    tar,
    tar_gz,
    whiteout,
)

DIGEST = "sha256:" + "ab" * 32
OTHER_ARCHITECTURE = "arm64" if HOST_PLATFORM[1] != "arm64" else "amd64"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def no_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oci, "RETRY_DELAYS", (0.0, 0.0, 0.0))


@pytest.fixture
def standin() -> Iterator[RegistryStandIn]:
    with RegistryStandIn() as running:
        yield running


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    folder = tmp_path / "rootfs"
    folder.mkdir()
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host folder beside the rootfs, with a file the image must not reach."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("the host's\n")
    return folder


def client(standin: RegistryStandIn, **options) -> Registry:
    return Registry({standin.host: standin.url}, **options)


def pull(standin: RegistryStandIn, text: str, folder: Path, **options) -> oci.PulledImage:
    return client(standin, **options).pull(parse_reference(text), folder)


def unpack(rootfs: Path, *layers: Sequence[Entry], limits: Limits = oci.DEFAULT_LIMITS) -> None:
    budget = Budget(limits)
    for entries in layers:
        unpack_layer(io.BytesIO(tar(entries)), rootfs, budget=budget)


def image_config(**changes) -> dict:
    return {**FIXTURE_CONFIG, **changes}


def push_small(standin: RegistryStandIn, repository: str, tag: str, text: str, **config) -> str:
    layer = tar_gz([regular("srv/what.txt", text.encode())])
    return standin.push(repository, tag, [layer], image_config(**config))


# --- references --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("alpine", "docker.io/library/alpine:latest"),
        ("alpine:3.20", "docker.io/library/alpine:3.20"),
        ("acme/weather", "docker.io/acme/weather:latest"),
        ("index.docker.io/acme/weather:1", "docker.io/acme/weather:1"),
        ("docker.io/alpine", "docker.io/library/alpine:latest"),
        ("ghcr.io/acme/weather:1.2", "ghcr.io/acme/weather:1.2"),
        ("ghcr.io/acme/tools/weather", "ghcr.io/acme/tools/weather:latest"),
        ("localhost/weather", "localhost/weather:latest"),
        ("127.0.0.1:5000/acme/weather:v2", "127.0.0.1:5000/acme/weather:v2"),
        ("acme/weather_app__x.y-z--w", "docker.io/acme/weather_app__x.y-z--w:latest"),
    ],
)
def test_references_are_normalised_as_docker_does(text: str, canonical: str) -> None:
    assert str(parse_reference(text)) == canonical


def test_the_version_is_the_tag_only_when_the_reference_has_none() -> None:
    assert parse_reference("acme/weather", "2.0").tag == "2.0"
    assert parse_reference("acme/weather:1.0", "2.0").tag == "1.0"
    pinned = parse_reference(f"acme/weather@{DIGEST}", "2.0")
    assert (pinned.tag, pinned.digest) == ("", DIGEST)


def test_a_digest_names_the_manifest_even_beside_a_tag() -> None:
    ref = parse_reference(f"ghcr.io/acme/weather:1.2@{DIGEST}")
    assert ref == Reference("ghcr.io", "acme/weather", "1.2", DIGEST)
    assert ref.reference == DIGEST
    assert str(ref) == f"ghcr.io/acme/weather:1.2@{DIGEST}"
    assert parse_reference("ghcr.io/acme/weather:1.2").reference == "1.2"
    assert str(parse_reference(f"alpine@{DIGEST}")) == f"docker.io/library/alpine@{DIGEST}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " alpine",
        "alpine ",
        "al pine",
        "alp\0ine",
        "alpine\n",
        "Alpine",
        "acme/Weather",
        "alpine:",
        "alpine:-1",
        "alpine:" + "a" * 129,
        "alpine@",
        "alpine@sha256:abc",
        "alpine@sha256:" + "A" * 64,
        "alpine@sha512:" + "a" * 128,
        "acme//weather",
        "acme/weather/",
        "/acme/weather",
        "-acme/weather",
        "acme/_weather",
        "acme/weather.",
        "ghcr.io:port/acme/weather",
        "ghcr..io/acme/weather",
        "acme/" + "w" * 251,
    ],
)
def test_invalid_references_are_refused(text: str) -> None:
    with pytest.raises(ImageError):
        parse_reference(text)


@pytest.mark.parametrize("version", ["bad tag", "1.0+build", "-1", "v\0"])
def test_an_invalid_version_is_refused(version: str) -> None:
    with pytest.raises(ImageError):
        parse_reference("acme/weather", version)


@pytest.mark.parametrize(
    "text", ["alpine", "ghcr.io/a/b:1", f"localhost:5000/x@{DIGEST}", f"x:1@{DIGEST}"]
)
def test_a_reference_reads_back_from_its_canonical_text(text: str) -> None:
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref


# --- what an image runs ------------------------------------------------------------------------


def test_the_command_is_the_entrypoint_then_the_arguments_or_else_cmd() -> None:
    config = ImageConfig(["/bin/server"], ["--port", "80"], {}, "", "")
    assert config.argv() == ["/bin/server", "--port", "80"]
    assert config.argv(["--stdio"]) == ["/bin/server", "--stdio"]
    assert ImageConfig([], ["node", "x.js"], {}, "", "").argv() == ["node", "x.js"]


def test_an_image_without_a_command_cannot_run() -> None:
    with pytest.raises(ImageError, match="no command"):
        ImageConfig([], [], {}, "", "").argv()


# --- pulling -----------------------------------------------------------------------------------


def test_pulling_the_fixture_image_applies_its_layers_in_order(
    standin: RegistryStandIn, tmp_path: Path
) -> None:
    text = fixture_image(standin)
    messages: list[str] = []
    image = pull(standin, text, tmp_path / "image", say=messages.append)

    root = image.rootfs
    assert image.folder == tmp_path / "image" and root == image.folder / "rootfs"
    assert (root / "bin/sh").read_bytes() == Path(os.path.realpath("/bin/dash")).read_bytes()
    assert stat.S_IMODE((root / "bin/sh").stat().st_mode) == 0o755
    for library in dash_libraries():
        assert (root / library.lstrip("/")).is_file()
        assert not (root / library.lstrip("/")).is_symlink()
    assert (root / "srv/server.sh").read_text() == FIXTURE_SERVER
    assert os.readlink(root / "srv/link") == "/srv/server.sh"
    assert not (root / "srv/stale.txt").exists()
    assert sorted(p.name for p in (root / "srv/cache").iterdir()) == ["fresh.txt"]
    assert not list(root.rglob(".wh.*"))

    assert image.digest == sha256_digest(standin.manifests[("catwalk/fixture", "1.0")][1])
    assert image.config == ImageConfig(
        entrypoint=["/bin/sh", "/srv/server.sh"],
        cmd=["--greeting", "hello"],
        env=FIXTURE_ENV,
        working_dir="/srv",
        user="",
    )
    assert sorted(p.name for p in image.folder.iterdir()) == [
        PULLED_MARKER,
        "config.json",
        "rootfs",
    ]
    assert load(image.folder) == image
    saved = json.loads((image.folder / "config.json").read_text())
    assert saved["reference"] == f"{standin.host}/catwalk/fixture:1.0"
    assert messages[0] == f"Pulling {standin.host}/catwalk/fixture:1.0"


def test_docker_schema_2_images_are_pulled(standin: RegistryStandIn, tmp_path: Path) -> None:
    layer = tar_gz([regular("srv/what.txt", b"docker")])
    config = json.dumps(image_config()).encode()
    standin.put_manifest(
        "acme/docker",
        "1",
        {
            "schemaVersion": 2,
            "mediaType": oci.DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": standin.put_blob(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": standin.put_blob(layer),
                    "size": len(layer),
                }
            ],
        },
    )
    image = pull(standin, f"{standin.host}/acme/docker:1", tmp_path / "image")
    assert (image.rootfs / "srv/what.txt").read_text() == "docker"


@pytest.mark.anyio
async def test_the_pulled_image_runs_its_mcp_server(
    standin: RegistryStandIn, tmp_path: Path
) -> None:
    """The unpacked dash, loaded by the unpacked loader with the unpacked libc, serves MCP to
    the SDK client (no sandbox here: the image's paths are mapped into the rootfs)."""
    image = pull(standin, fixture_image(standin), tmp_path / "image")
    root = str(image.rootfs)
    libraries = dash_libraries()
    loader = next(path for path in libraries if os.path.basename(path).startswith("ld-"))
    library_path = ":".join(root + os.path.dirname(path) for path in libraries if path != loader)
    argv = [root + arg if arg.startswith("/") else arg for arg in image.config.argv()]
    parameters = StdioServerParameters(
        command=root + loader,
        args=["--library-path", library_path, *argv],
        env=image.config.env,
        cwd=root + image.config.working_dir,
    )
    async with session(parameters) as connected:
        assert await call_text(connected, "echo", text="__argv__") == "--greeting hello"
        assert await call_text(connected, "echo", text="__pwd__") == root + "/srv"
        assert await call_text(connected, "getenv", name="FIXTURE_IMAGE_VARIABLE") == (
            "from-the-image"
        )


def test_pull_once_reuses_the_image_without_asking_the_registry(
    standin: RegistryStandIn, tmp_path: Path
) -> None:
    ref = parse_reference(fixture_image(standin))
    images = tmp_path / "images"
    assert oci.cached(ref, images) is None
    first = pull_once(ref, images, client(standin))
    asked = len(standin.requests)
    assert asked > 0

    again = pull_once(ref, images, client(standin))

    assert len(standin.requests) == asked
    assert again == first == oci.cached(ref, images)
    assert [p.name for p in images.iterdir()] == [first.folder.name]


def test_a_new_reference_replaces_the_old_image(standin: RegistryStandIn, tmp_path: Path) -> None:
    push_small(standin, "acme/weather", "1", "one")
    push_small(standin, "acme/weather", "2", "two")
    images = tmp_path / "images"
    old = pull_once(parse_reference(f"{standin.host}/acme/weather:1"), images, client(standin))
    (images / "leftover.partial-0").mkdir()

    new = pull_once(parse_reference(f"{standin.host}/acme/weather:2"), images, client(standin))

    assert (new.rootfs / "srv/what.txt").read_text() == "two"
    assert [p.name for p in images.iterdir()] == [new.folder.name]
    assert not old.folder.exists()


def test_an_index_resolves_to_the_runners_platform(
    standin: RegistryStandIn, tmp_path: Path
) -> None:
    other = push_small(standin, "acme/multi", "", "other", architecture=OTHER_ARCHITECTURE)
    host = push_small(standin, "acme/multi", "", "host")
    index = standin.push_index(
        "acme/multi", "1", {("linux", OTHER_ARCHITECTURE): other, HOST_PLATFORM: host}
    )

    image = pull(standin, f"{standin.host}/acme/multi:1", tmp_path / "image")

    assert (image.rootfs / "srv/what.txt").read_text() == "host"
    assert image.digest == index
    assert ("GET", f"/v2/acme/multi/manifests/{host}") in standin.requests
    assert ("GET", f"/v2/acme/multi/manifests/{other}") not in standin.requests


def test_an_index_without_the_runners_platform_names_what_it_offers(
    standin: RegistryStandIn, tmp_path: Path
) -> None:
    other = push_small(standin, "acme/multi", "", "other", architecture=OTHER_ARCHITECTURE)
    host = push_small(standin, "acme/multi", "", "host")
    standin.push_index(
        "acme/multi", "1", {("linux", OTHER_ARCHITECTURE): other, HOST_PLATFORM: host}
    )

    with pytest.raises(ImageError, match="no linux/riscv64 image") as refused:
        pull(
            standin,
            f"{standin.host}/acme/multi:1",
            tmp_path / "image",
            platform=("linux", "riscv64"),
        )

    assert f"linux/{OTHER_ARCHITECTURE}" in str(refused.value)
    assert "unknown" not in str(refused.value)
    assert not (tmp_path / "image").exists()


def test_an_image_built_for_another_platform_is_refused(
    standin: RegistryStandIn, tmp_path: Path
) -> None:
    push_small(standin, "acme/foreign", "1", "x", architecture=OTHER_ARCHITECTURE)
    with pytest.raises(ImageError, match=f"built for linux/{OTHER_ARCHITECTURE}"):
        pull(standin, f"{standin.host}/acme/foreign:1", tmp_path / "image")


def test_anonymous_tokens_are_fetched_once_per_repository(tmp_path: Path) -> None:
    with RegistryStandIn(require_token=True) as standin:
        text = fixture_image(standin)
        registry = client(standin)
        registry.pull(parse_reference(text), tmp_path / "first")
        registry.pull(parse_reference(text), tmp_path / "second")

        assert standin.requests.count(("GET", "/token")) == 1
        assert (tmp_path / "second/rootfs/srv/server.sh").is_file()


def test_blobs_redirected_to_storage_go_without_the_registry_token(tmp_path: Path) -> None:
    with RegistryStandIn(require_token=True, redirect_blobs=True) as standin:
        image = pull(standin, fixture_image(standin), tmp_path / "image")

        storage = [path for _, path in standin.requests if path.startswith("/_storage/")]
        assert len(storage) == 3  # the config and two layers
        assert standin.storage_authorizations == []
        assert (image.rootfs / "srv/server.sh").is_file()


def test_private_images_are_not_supported(standin: RegistryStandIn, tmp_path: Path) -> None:
    push_small(standin, "acme/secret", "1", "x")
    standin.private_repositories.add("acme/secret")
    with pytest.raises(ImageError, match="private images are not supported"):
        pull(standin, f"{standin.host}/acme/secret:1", tmp_path / "image")
    assert standin.requests.count(("GET", "/token")) == 1


def test_a_rate_limit_is_waited_out(standin: RegistryStandIn, tmp_path: Path) -> None:
    text = fixture_image(standin)
    standin.fail_next(429, 2)
    image = pull(standin, text, tmp_path / "image")
    manifest_path = "/v2/catwalk/fixture/manifests/1.0"
    assert standin.requests.count(("GET", manifest_path)) == 3
    assert (image.rootfs / "srv/server.sh").is_file()


def test_a_registry_that_keeps_failing_is_given_up_on(
    standin: RegistryStandIn, tmp_path: Path
) -> None:
    text = fixture_image(standin)
    standin.fail_next(500, 100)
    with pytest.raises(ImageError, match="kept failing"):
        pull(standin, text, tmp_path / "image")
    assert len(standin.requests) == len(oci.RETRY_DELAYS) + 1
    assert not (tmp_path / "image").exists()


def test_a_corrupt_layer_is_refused_and_nothing_is_left(
    standin: RegistryStandIn, tmp_path: Path
) -> None:
    text = fixture_image(standin)
    layer = sha256_digest(fixture_layers()[1])
    standin.corrupt_blob(layer)
    images = tmp_path / "images"

    with pytest.raises(ImageError, match=f"does not match its digest {layer}"):
        pull_once(parse_reference(text), images, client(standin))

    assert list(images.iterdir()) == []
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(ImageError):
        pull(standin, text, existing)
    assert list(existing.iterdir()) == []


def test_a_manifest_pinned_by_digest_must_match_it(
    standin: RegistryStandIn, tmp_path: Path
) -> None:
    pinned = push_small(standin, "acme/weather", "1", "one")
    other = push_small(standin, "acme/weather", "2", "two")
    standin.manifests[("acme/weather", pinned)] = standin.manifests[("acme/weather", other)]

    with pytest.raises(ImageError, match="does not match its digest"):
        pull(standin, f"{standin.host}/acme/weather@{pinned}", tmp_path / "image")


def test_a_pinned_digest_is_pulled(standin: RegistryStandIn, tmp_path: Path) -> None:
    pinned = push_small(standin, "acme/weather", "", "pinned")
    image = pull(standin, f"{standin.host}/acme/weather@{pinned}", tmp_path / "image")
    assert image.digest == pinned
    assert (image.rootfs / "srv/what.txt").read_text() == "pinned"


def test_an_unknown_image_is_not_found(standin: RegistryStandIn, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="was not found"):
        pull(standin, f"{standin.host}/acme/missing:1", tmp_path / "image")


def test_zstd_layers_are_refused_before_downloading(
    standin: RegistryStandIn, tmp_path: Path
) -> None:
    layer = b"\x28\xb5\x2f\xfd" + b"not really zstd"
    standin.push("acme/zstd", "1", [layer], image_config(), layer_media_type=OCI_LAYER_ZSTD)

    with pytest.raises(ImageError, match="zstd"):
        pull(standin, f"{standin.host}/acme/zstd:1", tmp_path / "image")

    assert ("GET", f"/v2/acme/zstd/blobs/{sha256_digest(layer)}") not in standin.requests


def test_a_zstd_blob_under_a_gzip_media_type_is_refused(
    standin: RegistryStandIn, tmp_path: Path
) -> None:
    standin.push("acme/zstd", "1", [b"\x28\xb5\x2f\xfd" + b"x" * 64], image_config())
    with pytest.raises(ImageError, match="zstd"):
        pull(standin, f"{standin.host}/acme/zstd:1", tmp_path / "image")
    assert not (tmp_path / "image").exists()


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(max_files=5), "more than 5 files"),
        (Limits(max_unpacked_bytes=1000), "unpacks to more than 1000 bytes"),
        (Limits(max_compressed_bytes=1000), "Catwalk downloads at most 1000 bytes"),
        (Limits(max_layers=1), "has 2 layers"),
    ],
)
def test_limits_refuse_large_images(
    standin: RegistryStandIn, tmp_path: Path, limits: Limits, message: str
) -> None:
    text = fixture_image(standin)
    with pytest.raises(ImageError, match=message):
        pull(standin, text, tmp_path / "image", limits=limits)
    assert not (tmp_path / "image").exists()
    if limits.max_compressed_bytes == 1000:
        assert len(standin.blob_requests()) == 1  # the config only


# --- unpacking untrusted layers ----------------------------------------------------------------


@pytest.mark.parametrize("target", ["/", "../../..", "../../../../../../../../..", "/.."])
def test_a_symlink_to_the_top_cannot_carry_files_out_of_the_rootfs(
    rootfs: Path, outside: Path, target: str
) -> None:
    landing = f"{outside}/pwned".lstrip("/")
    unpack(rootfs, [symlink("evil", target), regular(f"evil/{landing}", b"x")])

    assert not (outside / "pwned").exists()
    assert (rootfs / landing).read_bytes() == b"x"
    assert os.readlink(rootfs / "evil") == target


def test_a_symlink_from_a_lower_layer_cannot_carry_files_out(rootfs: Path, outside: Path) -> None:
    unpack(
        rootfs,
        [symlink("escape", str(outside))],
        [regular("escape/secret.txt", b"overwritten"), regular("escape/new.txt", b"x")],
    )
    assert (outside / "secret.txt").read_text() == "the host's\n"
    assert not (outside / "new.txt").exists()
    assert (rootfs / str(outside).lstrip("/") / "new.txt").read_bytes() == b"x"


def test_absolute_symlink_chains_resolve_inside_the_rootfs(rootfs: Path) -> None:
    unpack(
        rootfs,
        [symlink("a", "/b"), symlink("b", "../../c/"), directory("c"), symlink("c/d", "/e/./f")],
        [regular("a/x", b"x"), regular("a/d/y", b"y")],
    )
    assert (rootfs / "c/x").read_bytes() == b"x"
    assert (rootfs / "e/f/y").read_bytes() == b"y"
    assert os.readlink(rootfs / "c/d") == "/e/./f"


def test_a_symlink_loop_is_refused(rootfs: Path) -> None:
    with pytest.raises(ImageError, match="too many symbolic links"):
        unpack(rootfs, [symlink("a", "b"), symlink("b", "a"), regular("a/x")])


def test_dot_dot_members_stay_inside(rootfs: Path, outside: Path) -> None:
    unpack(
        rootfs,
        [
            regular("../../escape.txt", b"1"),
            regular(f"{'../' * 20}{outside}/dotdot.txt".replace("//", "/"), b"2"),
            regular("a/../../b.txt", b"3"),
            regular("/abs.txt", b"4"),
            regular("./dot.txt", b"5"),
            directory(".."),
        ],
    )
    assert not (outside / "dotdot.txt").exists()
    assert (rootfs / "escape.txt").read_bytes() == b"1"
    assert (rootfs / str(outside).lstrip("/") / "dotdot.txt").read_bytes() == b"2"
    assert (rootfs / "b.txt").read_bytes() == b"3"
    assert (rootfs / "abs.txt").read_bytes() == b"4"
    assert (rootfs / "dot.txt").read_bytes() == b"5"


def test_a_file_over_a_symlink_replaces_the_link(rootfs: Path, outside: Path) -> None:
    secret = outside / "secret.txt"
    unpack(rootfs, [symlink("etc/passwd", str(secret))], [regular("etc/passwd", b"image's")])
    assert secret.read_text() == "the host's\n"
    assert not (rootfs / "etc/passwd").is_symlink()
    assert (rootfs / "etc/passwd").read_bytes() == b"image's"


def test_hard_links_reach_only_regular_files_inside_the_rootfs(rootfs: Path, outside: Path) -> None:
    secret = outside / "secret.txt"
    unpack(
        rootfs,
        [
            regular("inside.txt", b"inside"),
            symlink("up", "/"),
            symlink("a-link", "inside.txt"),
            directory("folder"),
            hardlink("leak-absolute", str(secret)),
            hardlink("leak-relative", f"{'../' * 20}{str(secret).lstrip('/')}"),
            hardlink("leak-through-link", f"up{secret}"),
            hardlink("to-a-link", "a-link"),
            hardlink("to-a-folder", "folder"),
            hardlink("to-nothing", "missing.txt"),
            hardlink("good", "inside.txt"),
            hardlink("good-through-link", "up/inside.txt"),
        ],
    )
    assert secret.stat().st_nlink == 1
    for skipped in ("leak-absolute", "leak-relative", "leak-through-link", "to-a-link"):
        assert not os.path.lexists(rootfs / skipped)
    for skipped in ("to-a-folder", "to-nothing"):
        assert not os.path.lexists(rootfs / skipped)
    inside = (rootfs / "inside.txt").stat()
    assert (rootfs / "good").stat().st_ino == inside.st_ino
    assert (rootfs / "good-through-link").stat().st_ino == inside.st_ino
    assert not list((rootfs / "folder").iterdir())


def test_whiteouts_never_delete_outside_the_rootfs(rootfs: Path, outside: Path) -> None:
    secret = outside / "secret.txt"
    unpack(
        rootfs,
        [symlink("up", "/"), symlink("there", str(outside))],
        [
            whiteout(f"up{secret}"),
            whiteout(str(secret)),
            whiteout(f"{'../' * 20}{str(secret).lstrip('/')}"),
            opaque("there"),
            opaque(f"up{outside}"),
            whiteout("up/.."),
        ],
    )
    assert secret.read_text() == "the host's\n"
    assert os.path.islink(rootfs / "up") and os.path.islink(rootfs / "there")


def test_devices_and_fifos_are_skipped(rootfs: Path) -> None:
    unpack(
        rootfs,
        [
            device("dev/null"),
            device("dev/sda", tarfile.BLKTYPE),
            device("run/pipe", tarfile.FIFOTYPE),
            regular("after.txt", b"still unpacked"),
        ],
    )
    assert sorted(p.name for p in rootfs.iterdir()) == ["after.txt"]


def test_setuid_and_setgid_bits_are_dropped(rootfs: Path) -> None:
    unpack(
        rootfs,
        [
            regular("bin/su", b"", 0o4755),
            regular("bin/wall", b"", 0o2755),
            regular("bin/sticky", b"", 0o1755),
            regular("etc/shadow", b"", 0o640),
            directory("tmp", 0o1777),
            directory("shared", 0o2775),
            directory("locked", 0o500),
        ],
    )

    def mode(name: str) -> int:
        return stat.S_IMODE((rootfs / name).lstat().st_mode)

    assert [mode(n) for n in ("bin/su", "bin/wall", "bin/sticky", "etc/shadow")] == [
        0o755,
        0o755,
        0o755,
        0o640,
    ]
    assert (mode("tmp"), mode("shared"), mode("locked")) == (0o1777, 0o775, 0o700)
    assert (rootfs / "bin/su").stat().st_uid == os.getuid()


def test_a_folder_replaces_a_file_and_a_file_replaces_a_folder(rootfs: Path) -> None:
    unpack(
        rootfs,
        [directory("a"), regular("a/x"), regular("b", b"file"), symlink("c", "/elsewhere")],
        [regular("a", b"now a file"), directory("b"), regular("b/y"), directory("c")],
    )
    assert (rootfs / "a").read_bytes() == b"now a file"
    assert (rootfs / "b/y").is_file()
    assert (rootfs / "c").is_dir() and not (rootfs / "c").is_symlink()
    assert not (rootfs / "elsewhere").exists()


def test_an_existing_folder_keeps_its_contents(rootfs: Path) -> None:
    unpack(rootfs, [directory("etc"), regular("etc/hosts")], [directory("etc", 0o750)])
    assert (rootfs / "etc/hosts").is_file()
    assert stat.S_IMODE((rootfs / "etc").stat().st_mode) == 0o750


def test_whiteouts_hide_lower_layers_only(rootfs: Path) -> None:
    unpack(
        rootfs,
        [
            regular("gone.txt", b"lower"),
            regular("tree/deep/file"),
            regular("mixed/lower.txt"),
            regular("mixed/sub/lower.txt"),
            regular("kept.txt"),
        ],
        [
            # This layer's own entries come before its whiteouts here, the unusual order.
            regular("mixed/upper.txt"),
            regular("mixed/sub/upper.txt"),
            opaque("mixed"),
            regular("gone.txt", b"upper"),
            whiteout("gone.txt"),
            whiteout("tree"),
            whiteout("never-there"),
        ],
    )
    assert (rootfs / "gone.txt").read_bytes() == b"upper"
    assert not (rootfs / "tree").exists()
    assert sorted(str(p.relative_to(rootfs)) for p in (rootfs / "mixed").rglob("*")) == [
        "mixed/sub",
        "mixed/sub/upper.txt",
        "mixed/upper.txt",
    ]
    assert (rootfs / "kept.txt").exists()


def test_a_whiteout_in_a_later_layer_hides_an_earlier_layers_file(rootfs: Path) -> None:
    unpack(rootfs, [regular("a.txt")], [regular("b.txt")], [whiteout("a.txt"), whiteout("b.txt")])
    assert list(rootfs.iterdir()) == []


def test_a_name_with_a_nul_is_refused(rootfs: Path) -> None:
    with pytest.raises(ImageError, match="NUL"):
        unpack(rootfs, [regular("x" * 120 + "\0/../../etc/passwd")])


def test_an_oversized_extended_header_is_refused(rootfs: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("big")
        info.pax_headers = {"comment": "x" * (2 << 20)}
        archive.addfile(info, io.BytesIO(b""))
    with pytest.raises(ImageError, match="extended header"):
        unpack_layer(io.BytesIO(buffer.getvalue()), rootfs, budget=Budget())


def test_a_truncated_layer_is_refused(rootfs: Path) -> None:
    data = tar([regular("big.bin", b"x" * 100_000)])
    with pytest.raises(ImageError, match="not a readable tar"):
        unpack_layer(io.BytesIO(data[:50_000]), rootfs, budget=Budget())


def test_the_budget_spans_layers(rootfs: Path) -> None:
    with pytest.raises(ImageError, match="more than 3 files"):
        unpack(
            rootfs,
            [regular("a"), regular("b")],
            [regular("c"), regular("d")],
            limits=Limits(max_files=3),
        )
    with pytest.raises(ImageError, match="unpacks to more than 150 bytes"):
        unpack(
            rootfs,
            [regular("e", b"x" * 100)],
            [regular("f", b"x" * 100)],
            limits=Limits(max_unpacked_bytes=150),
        )


# --- the fixture image's MCP server -----------------------------------------------------------


def run_fixture_server(tmp_path: Path, messages: list[dict | str], **env: str) -> list[dict]:
    script = tmp_path / "server.sh"
    script.write_text(FIXTURE_SERVER)
    lines = "".join((m if isinstance(m, str) else json.dumps(m)) + "\n" for m in messages)
    result = subprocess.run(
        ["/bin/dash", str(script), "--greeting", "hello"],
        input=lines,
        capture_output=True,
        text=True,
        env={"PATH": "/nonexistent", **env},
        cwd=tmp_path,
        timeout=30,
        check=True,
    )
    assert result.stderr == ""
    return [json.loads(line) for line in result.stdout.splitlines()]


def call(id_: int | str, tool: str, **arguments: str) -> dict:
    params = {"name": tool, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": params}


def test_the_fixture_server_speaks_newline_delimited_json_rpc(tmp_path: Path) -> None:
    answers = run_fixture_server(
        tmp_path,
        [
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-03-26"},
            },
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": "a-string", "method": "ping"},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
            call(4, "echo", text='say "hi" \\ there'),
            call(5, "echo", text="__argv__"),
            call(6, "echo", text="__pwd__"),
            call(7, "getenv", name="FIXTURE_VARIABLE"),
            call(8, "getenv", name="UNSET_VARIABLE"),
            call(9, "getenv", name="X;exit"),
            call(10, "nope"),
            {"jsonrpc": "2.0", "id": 11, "method": "resources/list"},
            '{"jsonrpc": "2.0", "id" : 12, "method" : "initialize", "params": {}}',
        ],
        FIXTURE_VARIABLE="value",
    )

    def text(answer: dict) -> str:
        return answer["result"]["content"][0]["text"]

    assert [a["id"] for a in answers] == [1, "a-string", *range(3, 13)]
    assert answers[0]["result"] == {
        "protocolVersion": "2025-03-26",
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "catwalk-oci-fixture", "version": "1.0"},
    }
    assert answers[1]["result"] == {}
    assert answers[2]["result"]["tools"] == FIXTURE_TOOLS
    assert text(answers[3]) == 'say "hi" \\ there'
    assert text(answers[4]) == "--greeting hello"
    assert text(answers[5]) == str(tmp_path)
    assert (text(answers[6]), text(answers[7])) == ("value", "")
    assert answers[8]["result"]["isError"] is True
    assert answers[9]["error"]["code"] == -32602
    assert answers[10]["error"]["code"] == -32601
    assert answers[11]["result"]["protocolVersion"] == FIXTURE_PROTOCOL_VERSION


def test_the_fixture_server_escapes_environment_values(tmp_path: Path) -> None:
    value = 'quote " backslash \\ newline \n tab \t return \r end'
    answers = run_fixture_server(tmp_path, [call(1, "getenv", name="TRICKY")], TRICKY=value)
    assert answers[0]["result"]["content"][0]["text"] == value


@asynccontextmanager
async def session(parameters: StdioServerParameters) -> AsyncIterator[ClientSession]:
    async with (
        stdio_client(parameters) as (read_stream, write_stream),
        ClientSession(read_stream, write_stream, read_timeout_seconds=30) as connected,
    ):
        await connected.initialize()
        yield connected


async def call_text(connected: ClientSession, tool: str, **arguments: str) -> str:
    result = await connected.call_tool(tool, arguments)
    assert not result.is_error
    return result.content[0].text


@pytest.mark.anyio
async def test_the_sdk_client_talks_to_the_fixture_server(tmp_path: Path) -> None:
    script = tmp_path / "server.sh"
    script.write_text(FIXTURE_SERVER)
    parameters = StdioServerParameters(
        command="/bin/dash", args=[str(script), "--flag"], env={"FIXTURE_VARIABLE": "seen"}
    )
    async with session(parameters) as connected:
        assert connected.initialize_result.server_info.name == "catwalk-oci-fixture"
        await connected.send_ping()
        tools = await connected.list_tools()
        assert [tool.name for tool in tools.tools] == ["echo", "getenv"]
        assert await call_text(connected, "echo", text="hello from the SDK") == "hello from the SDK"
        assert await call_text(connected, "echo", text="__argv__") == "--flag"
        assert await call_text(connected, "getenv", name="FIXTURE_VARIABLE") == "seen"
        refused = await connected.call_tool("getenv", {"name": "$(reboot)"})
        assert refused.is_error
