"""The sandbox launcher: runs one untrusted MCP server process under bubblewrap.

    python -I -S mcpgateway/sandbox.py --profile PROFILE.json -- COMMAND ARG...

The bridge runs this file as its child command (and again for every restart), so the bridge
stays outside the sandbox and talks to the server over the stdio it hands down. Standard
library only, no project imports: it starts in a few milliseconds and the Fly runner can use it
as it is. It must run as root; the server never does.

What the server gets (the profile, written by the local runtime, says the details):

* its own uid and gid (never root, never Catwalk's), no capabilities, no new privileges;
* its own mount, PID, IPC, UTS and cgroup namespaces: the host system read-only and only what
  a server needs of it (/usr, the interpreters, TLS roots), a private /proc, /dev and /tmp,
  Catwalk's data folder hidden, and one writable tmpfs of a fixed size for its home, work and
  temporary folders (it lives as long as the process, like a Fly Machine's root filesystem);
* shared package caches through overlayfs: read from the shared copy, writes land in its own
  tmpfs, so nothing one deployment writes reaches another;
* its own network namespace whose only way out is slirp4netns with host loopback disabled, and
  nftables rules inside that namespace refusing loopback, private, link-local and the host's
  own addresses; DNS goes through slirp4netns' resolver only;
* limits: rlimits always (open files, processes of its uid, file size, no core dumps) and cgroup
  memory, CPU and pids limits where the host offers cgroups.

The launcher watches the cgroup counters and the size of the writable folder. When the server
blows a limit it kills the whole sandbox, writes one line saying which limit to stderr (which
the bridge keeps as the server's log) and exits with LIMIT_EXIT_STATUS, which the bridge treats
as fatal rather than restarting. Otherwise it exits with the server's own status. SIGTERM and
SIGINT are passed to the server; if the launcher dies, the kernel kills the sandbox with it.
"""

from __future__ import annotations

# Imports are few and cheap on purpose: the launcher's own start-up is part of every server's.
import _socket
import contextlib
import ctypes
import fcntl
import json
import os
import resource
import select
import signal
import sys
import time

# The bridge is told (--fatal-exit-status) not to restart a child that exits with this.
LIMIT_EXIT_STATUS = 125
# Setup failures (bad profile, missing tool, no permission) exit with this, after one line
# saying what is wrong.
SETUP_EXIT_STATUS = 126
MESSAGE_PREFIX = "catwalk-sandbox:"
MAX_FD = 1 << 20
WATCH_INTERVAL_SECONDS = 0.25
STOP_GRACE_SECONDS = 5.0
SLIRP_READY_TIMEOUT_SECONDS = 10.0

# Address ranges no deployment may reach, besides the host's own addresses and networks, which
# the profile lists: "this network", private, carrier-grade NAT, loopback, link-local (cloud
# metadata), IETF protocol assignments, benchmarking, multicast and reserved.
ALWAYS_BLOCKED = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
)
# slirp4netns' fixed resolver address inside the namespace.
SLIRP_DNS = "10.0.2.3"
# The host files a server may read, besides /usr; /etc/resolv.conf, /etc/passwd and /etc/group
# are the launcher's own.
ETC_ENTRIES = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "ssl",
)
PR_SET_PDEATHSIG = 1
# Orphaned descendants come to the launcher rather than to init (see `_reap_orphans`).
PR_SET_CHILD_SUBREAPER = 36
REAP_ORPHANS_SECONDS = 1.0
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
MS_NOSUID = 2
MS_NODEV = 4
MS_REC = 16384
MS_PRIVATE = 1 << 18
# Where the host's /usr (and its /bin, /lib... links) appear in an image's sandbox, for the
# tools that set it up.
HOST_MOUNT = "/.catwalk-host"


class SetupError(Exception):
    """The sandbox cannot be built; the message says why."""


def say(message: str) -> None:
    print(f"{MESSAGE_PREFIX} {message}", file=sys.stderr, flush=True)


# --- The profile ----------------------------------------------------------------------------


class Profile:
    """The launcher's instructions, as deployments/runtimes/sandbox.py writes them."""

    def __init__(self, data: dict) -> None:
        try:
            self.name = str(data["name"])
            self.uid = int(data["uid"])
            self.gid = int(data["gid"])
            writable = data["writable"]
            self.area = str(writable["mount"])
            self.area_bytes = int(writable["size_bytes"])
            self.binds = {str(k): str(v) for k, v in writable["binds"].items()}
            self.readonly = [str(p) for p in data.get("readonly", [])]
            self.hidden = [str(p) for p in data.get("hidden", [])]
            self.caches = [(str(c["shared"]), str(c["target"])) for c in data.get("caches", [])]
            # Host folders bound read-write (only `warm_cache` uses one: the shared caches).
            self.shared_writable = [
                (str(b["source"]), str(b["target"])) for b in data.get("shared_writable", [])
            ]
            limits = data["limits"]
            self.memory_bytes = int(limits["memory_bytes"])
            self.cpus = float(limits["cpus"])
            self.pids = int(limits["pids"])
            # All processes of the uid, every launch of the deployment together (isolated mode
            # starts one per session); the pids cgroup caps each launch at `pids`.
            self.uid_processes = int(limits.get("uid_processes", self.pids))
            self.open_files = int(limits["open_files"])
            self.blocked = [str(n) for n in data.get("blocked", [])]
            self.cgroup_root = str(data.get("cgroup_root", "/sys/fs/cgroup"))
            self.tools = {str(k): str(v) for k, v in data["tools"].items()}
            # The server's whole environment, as `NAME='value'` lines (see the runtime).
            self.environment_file = str(data.get("environment_file", "/dev/null"))
            # An image's root filesystem to run in, instead of the host's system (OCI packages).
            root = data.get("root")
            self.root_image = str(root["image"]) if root else ""
            self.root_workdir = str(root.get("workdir") or "/") if root else ""
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SetupError(f"bad profile: {exc!r}") from exc
        for tool in ("bwrap", "setpriv", "nft", "slirp4netns", "mount"):
            if not os.access(self.tools.get(tool, ""), os.X_OK):
                raise SetupError(f"bad profile: {tool} is not an executable program")
        if self.uid <= 0 or self.gid <= 0 or self.uid == os.geteuid():
            raise SetupError(f"refusing to run the server as uid {self.uid}")
        if (
            min(self.area_bytes, self.memory_bytes, self.pids, self.uid_processes, self.open_files)
            <= 0
        ):
            raise SetupError("every limit must be positive")
        if not self.cpus > 0:
            raise SetupError("the CPU limit must be positive")
        if self.root_image and not (
            os.path.isabs(self.root_image)
            and os.path.isdir(self.root_image)
            and os.path.isabs(self.root_workdir)
            and "\0" not in self.root_workdir
        ):
            raise SetupError("bad profile: the root image must be a folder, its workdir absolute")
        for network in self.blocked:
            # nft parses these; refuse anything that is not a plain IPv4 address or prefix.
            address, _, length = network.partition("/")
            parts = address.split(".")
            if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
                raise SetupError(f"bad blocked network {network!r}")
            if length and not (length.isdigit() and int(length) <= 32):
                raise SetupError(f"bad blocked network {network!r}")


# --- Processes ------------------------------------------------------------------------------


def spawn(argv: list[str], *, keep: tuple[int, ...] = (), before_exec=None, quiet=False) -> int:
    """fork + exec, keeping only stdio and `keep` open; returns the pid.

    `before_exec` runs in the child (cgroup joining, rlimits, entering a namespace). An exec
    failure is reported on stderr and the child exits with SETUP_EXIT_STATUS.
    """
    pid = os.fork()
    if pid:
        return pid
    try:
        # A group of its own: a signal for the launcher's group (the bridge stopping it) must
        # reach the launcher alone, which passes it to the server and waits for it.
        os.setpgid(0, 0)
        if quiet:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
        low = 3
        for fd in sorted(set(keep)):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, MAX_FD)
        for fd in keep:
            os.set_inheritable(fd, True)
        if before_exec is not None:
            before_exec()
        os.execv(argv[0], argv)  # noqa: S606 - argv comes from the profile, not a shell
    except BaseException as exc:  # nothing may escape a forked child
        try:
            say(f"cannot start {argv[0]}: {exc}")
        finally:
            os._exit(SETUP_EXIT_STATUS)
    raise AssertionError("unreachable")


def exit_status(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


# --- Mounts (in the launcher's own mount namespace) ----------------------------------------


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    result = _libc.mount(
        source.encode(),
        os.fsencode(target),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if result != 0:
        errno = ctypes.get_errno()
        raise SetupError(f"mount {fstype or source} on {target}: {os.strerror(errno)}")


def prepare_writable_area(profile: Profile) -> dict[str, str]:
    """A private tmpfs of the profile's size, owned by the server's uid, with its folders.

    Mounted in a mount namespace of the launcher's own, so it vanishes with the launcher and
    the sandbox; several launchers of one deployment (isolated sessions) each get their own.
    Returns the binds: folder in the area -> path in the sandbox.
    """
    os.unshare(os.CLONE_NEWNS)
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    os.makedirs(profile.area, mode=0o700, exist_ok=True)
    # 0755: bubblewrap enters these folders after dropping its capabilities. Nobody else sees
    # them: the mount lives in this private namespace.
    options = f"size={profile.area_bytes},mode=0755,uid={profile.uid},gid={profile.gid}"
    _mount("catwalk-sandbox", profile.area, "tmpfs", MS_NOSUID | MS_NODEV, options)
    binds = {}
    for name, target in profile.binds.items():
        folder = os.path.join(profile.area, name)
        os.mkdir(folder, 0o755)
        os.chown(folder, profile.uid, profile.gid)
        binds[folder] = target
    etc = os.path.join(profile.area, ".etc")
    os.mkdir(etc, 0o755)
    home = profile.binds.get("home", "/")
    files = {
        "resolv.conf": f"nameserver {SLIRP_DNS}\n",
        "passwd": (
            "root:x:0:0::/:/usr/sbin/nologin\n"
            f"server:x:{profile.uid}:{profile.gid}::{home}:/bin/sh\n"
        ),
        "group": f"root:x:0:\nserver:x:{profile.gid}:\n",
    }
    for name, text in files.items():
        with open(os.path.join(etc, name), "w") as handle:
            handle.write(text)
    if profile.root_image:
        prepare_root(profile, files)
    for index, (shared, target) in enumerate(profile.caches):
        if not os.path.isdir(shared):
            continue
        # The cache's parents inside a writable folder (~/.cache) must be the server's, or it
        # could not create anything beside the cache there.
        for name, folder_target in profile.binds.items():
            if target.startswith(folder_target.rstrip("/") + "/"):
                parent = os.path.join(profile.area, name)
                for part in os.path.relpath(os.path.dirname(target), folder_target).split("/"):
                    if part in ("", "."):
                        continue
                    parent = os.path.join(parent, part)
                    if not os.path.isdir(parent):
                        os.mkdir(parent, 0o755)
                        os.chown(parent, profile.uid, profile.gid)
        layer = os.path.join(profile.area, f".cache-{index}")
        upper, work, merged = (os.path.join(layer, part) for part in ("upper", "work", "merged"))
        for folder in (upper, work, merged):
            os.makedirs(folder, 0o755)
        os.chown(upper, profile.uid, profile.gid)
        _mount(
            "overlay",
            merged,
            "overlay",
            MS_NOSUID | MS_NODEV,
            f"lowerdir={shared},upperdir={upper},workdir={work}",
        )
        binds[merged] = target
    return binds


def root_folder(profile: Profile) -> str:
    """Where the image's root filesystem is mounted, writable, for the sandbox's `/`."""
    return os.path.join(profile.area, ".root", "merged")


def _replace_file(folder_fd: int, name: str, text: str) -> None:
    """Write `name` in the open folder, whatever the image put there (never following it)."""
    try:
        os.unlink(name, dir_fd=folder_fd)
    except FileNotFoundError:
        pass
    except (IsADirectoryError, PermissionError):
        raise SetupError(f"the image's /etc/{name} is a folder") from None
    fd = os.open(
        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder_fd
    )
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def prepare_root(profile: Profile, etc_files: dict[str, str]) -> None:
    """The image's files as the sandbox's root: read-only below, a writable layer of the
    server's tmpfs on top, so whatever it writes vanishes with it, as in a container.

    Everything here works on the merged folder as root, so nothing follows a link the image
    made: /etc must be a real folder, and the files written into it replace the image's own
    entries without reading them. Besides the server's user, group and resolver, an empty
    /etc/ld.so.preload: the host tools that set the sandbox up (see `bwrap_arguments`) run
    inside it with privileges, and must not load a library the image names.
    """
    layer = os.path.join(profile.area, ".root")
    upper, work, merged = (os.path.join(layer, part) for part in ("upper", "work", "merged"))
    for folder in (upper, work, merged):
        os.makedirs(folder, 0o755)
    _mount(
        "overlay",
        merged,
        "overlay",
        MS_NOSUID | MS_NODEV,
        f"lowerdir={profile.root_image},upperdir={upper},workdir={work}",
    )
    root_fd = os.open(merged, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("etc", HOST_MOUNT.strip("/")):
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=root_fd)
        # Whatever the image has at the host tools' place goes, links unfollowed.
        host = os.path.join(merged, HOST_MOUNT.strip("/"))
        if os.path.isdir(host) and not os.path.islink(host):
            import shutil  # only an image's sandbox needs it

            shutil.rmtree(host)
        else:
            os.unlink(host)
        os.mkdir(host, 0o755)
        try:
            etc_fd = os.open("etc", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
        except OSError:
            raise SetupError("the image's /etc is not a folder") from None
        try:
            for name, text in {**etc_files, "ld.so.preload": ""}.items():
                _replace_file(etc_fd, name, text)
        finally:
            os.close(etc_fd)
        # The working folder is the server's, as an image's user owns it in a container: made
        # where missing, never through a link.
        folder_fd = os.dup(root_fd)
        try:
            for part in [p for p in profile.root_workdir.split("/") if p not in ("", ".")]:
                if part == "..":
                    raise SetupError(f"bad working folder {profile.root_workdir!r}")
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=folder_fd)
                try:
                    inner = os.open(
                        part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder_fd
                    )
                except OSError:
                    return  # a link or a file: the server gets it as the image made it
                os.close(folder_fd)
                folder_fd = inner
            if profile.root_workdir.strip("/"):
                os.fchown(folder_fd, profile.uid, profile.gid)
        finally:
            os.close(folder_fd)
    finally:
        os.close(root_fd)


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def host_program(profile: Profile, path: str) -> list[str]:
    """How a host tool runs inside the sandbox. On the host's system, as it is; in an image's
    root, through the host's own dynamic loader and libraries, mounted at HOST_MOUNT, so it
    never loads the image's libraries."""
    if not profile.root_image:
        return [path]
    loader = elf_interpreter(path)
    libraries = ":".join(
        f"{HOST_MOUNT}{folder}" for folder in _library_folders() if os.path.isdir(folder)
    )
    return [f"{HOST_MOUNT}{loader}", "--library-path", libraries, f"{HOST_MOUNT}{path}"]


def _library_folders() -> list[str]:
    triplet = getattr(sys.implementation, "_multiarch", "")
    folders = [f"/usr/lib/{triplet}", f"/lib/{triplet}"] if triplet else []
    return [*folders, "/usr/lib64", "/lib64", "/usr/lib", "/lib"]


def elf_interpreter(path: str) -> str:
    """The dynamic loader an ELF program names (its PT_INTERP), as a real path."""
    import struct  # only an image's sandbox needs it

    with open(path, "rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            raise SetupError(f"{path} is not a 64-bit ELF program")
        endian = "<" if header[5] == 1 else ">"
        (phoff,) = struct.unpack_from(endian + "Q", header, 32)
        phentsize, phnum = struct.unpack_from(endian + "HH", header, 54)
        for index in range(phnum):
            handle.seek(phoff + index * phentsize)
            (kind,) = struct.unpack(endian + "I", handle.read(4))
            if kind == 3:  # PT_INTERP
                handle.seek(phoff + index * phentsize + 8)
                (offset,) = struct.unpack(endian + "Q", handle.read(8))
                handle.seek(phoff + index * phentsize + 32)
                (size,) = struct.unpack(endian + "Q", handle.read(8))
                handle.seek(offset)
                name = handle.read(size).rstrip(b"\0").decode()
                return os.path.realpath(name)
    raise SetupError(f"{path} names no dynamic loader")


def bwrap_arguments(
    profile: Profile, binds: dict[str, str], info_fd: int, block_fd: int, env_fd: int
):
    """bubblewrap's command line: namespaces, the read-only system, the writable binds.

    With an image (`root_image`), its files are `/` and the host's system is only at
    HOST_MOUNT, for the set-up stages; nothing else of the host is shown.
    """
    root = bool(profile.root_image)
    host = HOST_MOUNT if root else ""
    args = [
        profile.tools["bwrap"],
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
    ]
    if root:
        args += ["--bind", root_folder(profile), "/"]
    args += ["--ro-bind", "/usr", f"{host}/usr"]
    for name in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
        path = f"/{name}"
        if os.path.islink(path):
            target = os.readlink(path)
            args += ["--symlink", f"{host}{target}" if target.startswith("/") else target]
            args += [f"{host}{path}"]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, f"{host}{path}"]
    created: set[str] = {"/"}

    def parents_of(target: str) -> list[str]:
        # bubblewrap would create missing parents with mode 0700, which the server's uid could
        # not traverse.
        out: list[str] = []
        parent = os.path.dirname(target)
        chain = []
        while parent not in created:
            chain.append(parent)
            parent = os.path.dirname(parent)
        for folder in reversed(chain):
            created.add(folder)
            out += ["--perms", "0755", "--dir", folder]
        return out

    if not root:  # an image brings its own /etc, with the launcher's files written in
        for entry in ETC_ENTRIES:
            path = f"/etc/{entry}"
            if os.path.exists(path):
                args += [*parents_of(path), "--ro-bind", path, path]
        etc = os.path.join(profile.area, ".etc")
        for entry in ("resolv.conf", "passwd", "group"):
            source = f"{etc}/{entry}"
            args += [*parents_of(f"/etc/{entry}"), "--ro-bind", source, f"/etc/{entry}"]
    # A private /tmp first: read-only folders below /tmp stay visible on top of it.
    for source, target in binds.items():
        if target == "/tmp":  # noqa: S108
            args += ["--bind", source, target]
    for path in [] if root else profile.readonly:
        if os.path.exists(path):
            args += [*parents_of(path), "--ro-bind", path, path]
    for path in [] if root else profile.hidden:
        # Only where a read-only folder would show it; elsewhere it does not exist in there.
        inside = any(path.startswith(folder.rstrip("/") + "/") for folder in profile.readonly)
        if inside and os.path.exists(path):
            args += [*parents_of(path), "--tmpfs", path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for source, target in binds.items():
        if target != "/tmp":  # noqa: S108
            args += [*parents_of(target), "--bind", source, target]
    for source, target in profile.shared_writable:
        args += [*parents_of(target), "--bind", source, target]
    workdir = profile.binds.get("work", profile.binds.get("home", "/"))
    args += ["--chdir", profile.root_workdir if root else workdir]
    # The host's shell, mount and setpriv, whatever the image holds (see `host_program`);
    # with an image, mount is given the source too, so it reads no fstab of the image's.
    shell = host_program(profile, "/bin/sh")
    remount = [*host_program(profile, profile.tools["mount"]), "-o", "remount,hidepid=2"]
    remount += ["-n", "proc", "/proc"] if root else ["/proc"]
    args += [
        # The first stage, a fixed shell line, remounts /proc so the server sees only its own
        # processes (not bubblewrap's reaper, whose command line describes the sandbox), then
        # setpriv takes the server's uid, which clears every capability for good.
        "--cap-drop",
        "ALL",
        "--cap-add",
        "CAP_SYS_ADMIN",
        "--cap-add",
        "CAP_SETUID",
        "--cap-add",
        "CAP_SETGID",
        "--cap-add",
        "CAP_SETPCAP",
        "--info-fd",
        str(info_fd),
        "--block-fd",
        str(block_fd),
        "--clearenv",
        "--",
        *shell,
        "-c",
        f'{" ".join(map(_quote, remount))} && exec "$@"',
        "sh",
        *host_program(profile, profile.tools["setpriv"]),
        f"--reuid={profile.uid}",
        f"--regid={profile.gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
        # Only now, as the server's uid with no capabilities left, does its environment (the
        # deployment's credentials, shell-quoted by the runtime) come in, read from an open
        # descriptor that is closed before the server runs: no root process ever has it.
        *shell,
        "-c",
        f'set -a; . /dev/fd/{env_fd}; set +a; exec {env_fd}<&-; exec "$@"',
        "sh",
    ]
    return args


# --- Limits ---------------------------------------------------------------------------------


class Cgroups:
    """This launch's cgroup (v1 controllers or v2), or none where the host offers none."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.folders: dict[str, str] = {}
        root = profile.cgroup_root
        self.v2 = os.path.exists(os.path.join(root, "cgroup.controllers"))
        self.applied: set[str] = set()  # controllers whose limits were written
        relative = os.path.join("catwalk", profile.name, str(os.getpid()))
        if self.v2:
            self.candidates = {"all": (root, os.path.join(root, relative))}
        else:
            self.candidates = {
                c: (os.path.join(root, c), os.path.join(root, c, relative))
                for c in ("memory", "cpu", "pids")
            }

    def create(self) -> None:
        self._remove_stale()
        period = 100_000
        quota = max(1000, int(self.profile.cpus * period))
        memory, pids = self.profile.memory_bytes, self.profile.pids
        limits = {
            "memory": [
                ("memory.limit_in_bytes", memory),
                ("memory.memsw.limit_in_bytes", memory),
            ],
            "cpu": [("cpu.cfs_period_us", period), ("cpu.cfs_quota_us", quota)],
            "pids": [("pids.max", pids)],
            "all": [
                ("memory.max", memory),
                ("memory.swap.max", 0),
                ("cpu.max", f"{quota} {period}"),
                ("pids.max", pids),
            ],
        }
        for controller, (base, folder) in self.candidates.items():
            if not os.access(base, os.W_OK):
                continue
            # Another launch of this deployment that is ending may remove the shared parent
            # folders between our steps: start over then.
            for _ in range(5):
                try:
                    os.makedirs(folder, exist_ok=True)
                    if self.v2:
                        self._delegate_v2(base, folder)
                    applied = set()
                    for name, value in limits[controller]:
                        path = os.path.join(folder, name)
                        if os.path.exists(path):
                            with open(path, "w") as handle:
                                handle.write(str(value))
                            applied.add(name.partition(".")[0])
                except FileNotFoundError:
                    continue
                except OSError:
                    break
                self.folders[controller] = folder
                self.applied |= applied
                break
        missing = [c for c in ("memory", "cpu", "pids") if c not in self.applied]
        if missing:
            fallback = " (memory as RLIMIT_DATA)" if "memory" in missing else ""
            say(f"warning: no {', '.join(missing)} cgroup here; limits by rlimits only{fallback}")

    def _delegate_v2(self, root: str, leaf: str) -> None:
        """cgroup v2: enable memory, cpu and pids for the children of every level down to ours."""
        with open(os.path.join(root, "cgroup.controllers")) as handle:
            available = set(handle.read().split()) & {"memory", "cpu", "pids"}
        if not available:
            return
        enable = " ".join(f"+{name}" for name in sorted(available))
        level = root
        for part in os.path.relpath(os.path.dirname(leaf), root).split("/"):
            control = os.path.join(level, "cgroup.subtree_control")
            with open(control, "w") as handle:
                handle.write(enable)
            level = os.path.join(level, part)
        with open(os.path.join(level, "cgroup.subtree_control"), "w") as handle:
            handle.write(enable)

    def _remove_stale(self) -> None:
        """Empty cgroups of earlier launches of this deployment, killed before cleaning up."""
        for _, folder in self.candidates.values():
            parent = os.path.dirname(folder)
            try:
                entries = os.listdir(parent)
            except OSError:
                continue
            for entry in entries:
                if entry.isdigit() and not os.path.exists(f"/proc/{entry}"):
                    try:  # noqa: SIM105 - see kill_all
                        os.rmdir(os.path.join(parent, entry))
                    except OSError:  # still has processes, or not ours to remove
                        pass

    def join(self) -> None:
        """Runs in the forked child before bubblewrap: everything it starts is counted."""
        for folder in self.folders.values():
            with open(os.path.join(folder, "cgroup.procs"), "w") as handle:
                handle.write("0")

    def _counter(self, controller: str, filename: str, key: str) -> int:
        folder = self.folders.get(controller)
        if folder is None:
            return 0
        try:
            with open(os.path.join(folder, filename)) as handle:
                for line in handle:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def oom_kills(self) -> int:
        if self.v2:
            return self._counter("all", "memory.events", "oom_kill")
        return self._counter("memory", "memory.oom_control", "oom_kill")

    def pid_limit_hits(self) -> int:
        return self._counter("all" if self.v2 else "pids", "pids.events", "max")

    def kill_all(self) -> None:
        for folder in self.folders.values():
            try:
                with open(os.path.join(folder, "cgroup.procs")) as handle:
                    pids = handle.read().split()
            except OSError:
                continue
            for pid in pids:
                try:  # noqa: SIM105 - contextlib's import would cost every start
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass

    def remove(self) -> None:
        for folder in self.folders.values():
            for _ in range(40):
                try:
                    os.rmdir(folder)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # the last processes are still exiting
                    time.sleep(0.025)
            for parent in (os.path.dirname(folder), os.path.dirname(os.path.dirname(folder))):
                try:
                    os.rmdir(parent)  # only once no other launch uses it
                except OSError:
                    break


def set_rlimits(profile: Profile, memory_cgroup: bool = True) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (profile.open_files, profile.open_files))
    # Per uid, and the uid is this deployment's own: its processes, all launches together.
    resource.setrlimit(resource.RLIMIT_NPROC, (profile.uid_processes, profile.uid_processes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (profile.area_bytes, profile.area_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not memory_cgroup:  # a coarser stand-in: the private writable memory of each process
        resource.setrlimit(resource.RLIMIT_DATA, (profile.memory_bytes, profile.memory_bytes))


# --- Network --------------------------------------------------------------------------------


def firewall_rules(profile: Profile) -> str:
    """nftables rules for the sandbox's namespace: the public internet only."""
    networks = ", ".join(sorted(set(ALWAYS_BLOCKED) | set(profile.blocked)))
    return (
        "table inet catwalk {\n"
        "  chain out {\n"
        "    type filter hook output priority 0; policy accept;\n"
        '    oif "lo" accept\n'
        f"    ip daddr {SLIRP_DNS} udp dport 53 accept\n"
        f"    ip daddr {SLIRP_DNS} tcp dport 53 accept\n"
        f"    ip daddr {{ {networks} }} reject with icmp type admin-prohibited\n"
        "    meta nfproto ipv6 reject with icmpv6 type admin-prohibited\n"
        "  }\n"
        "}\n"
    )


def loopback_up() -> None:
    """Bring up `lo` in this (new) network namespace; the kernel gives it 127.0.0.1."""
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        # struct ifreq: the name in 16 bytes, then the flags (a native short) in a 24-byte union.
        name = b"lo".ljust(16, b"\0")
        answer = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, name + bytes(24))
        flags = int.from_bytes(answer[16:18], sys.byteorder) | IFF_UP
        fcntl.ioctl(
            sock.fileno(), SIOCSIFFLAGS, name + flags.to_bytes(2, sys.byteorder) + bytes(22)
        )
    finally:
        sock.close()


def start_firewall(profile: Profile, pid: int) -> int:
    """Load the rules into the sandbox's network namespace; returns nft's pid."""
    path = os.path.join(profile.area, ".etc", "firewall.nft")
    with open(path, "w") as handle:
        handle.write(firewall_rules(profile))
    netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        return spawn(
            [profile.tools["nft"], "-f", path],
            keep=(netns,),
            before_exec=lambda: os.setns(netns, os.CLONE_NEWNET),
        )
    finally:
        os.close(netns)


def start_slirp(profile: Profile, pid: int) -> tuple[int, int, int]:
    """slirp4netns for the namespace: its pid, the fd that says when it is ready, and the fd to
    hold open for as long as it should live."""
    ready_read, ready_write = os.pipe()
    # slirp4netns exits when this pipe closes: when the launcher exits, however it dies.
    exit_read, exit_write = os.pipe()
    os.set_inheritable(exit_write, False)
    slirp = spawn(
        [
            profile.tools["slirp4netns"],
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-sandbox",
            "--enable-seccomp",
            f"--ready-fd={ready_write}",
            f"--exit-fd={exit_read}",
            str(pid),
            "tap0",
        ],
        keep=(ready_write, exit_read),
        quiet=True,
    )
    os.close(ready_write)
    os.close(exit_read)
    return slirp, ready_read, exit_write


def wait_ready(ready_read: int) -> None:
    try:
        readable, _, _ = select.select([ready_read], [], [], SLIRP_READY_TIMEOUT_SECONDS)
        if not readable or os.read(ready_read, 1) != b"1":
            raise SetupError("slirp4netns did not bring up the network")
    finally:
        os.close(ready_read)


# --- Running --------------------------------------------------------------------------------


def _single_digit(fd: int) -> int:
    """The same file on a descriptor below 10, which is all a POSIX shell's `<&N` takes."""
    if fd < 10:
        return fd
    for candidate in range(3, 10):
        try:
            fcntl.fcntl(candidate, fcntl.F_GETFD)
        except OSError:  # free
            os.dup2(fd, candidate, inheritable=False)
            os.close(fd)
            return candidate
    raise SetupError("no descriptor below 10 is free for the environment")


def read_child_pid(fd: int) -> int:
    """The sandbox's PID 1 (as this namespace sees it), from bubblewrap's --info-fd JSON."""
    data = b""
    while b"}" not in data:
        chunk = os.read(fd, 4096)
        if not chunk:
            raise SetupError("bubblewrap exited before the sandbox was ready")
        data += chunk
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        raise SetupError(f"unexpected bubblewrap info: {data[:200]!r}") from None


def _megabytes(count: int) -> str:
    return f"{count / (1 << 20):g} MiB"


class Launcher:
    def __init__(self, profile: Profile, command: list[str]) -> None:
        self.profile = profile
        self.command = command
        self.cgroups = Cgroups(profile)
        self.sandbox: int | None = None
        self.slirp: int | None = None
        self.slirp_lifeline: int | None = None  # slirp4netns exits when this closes
        self.inner_pid: int | None = None
        self.stopping = False
        self.kill_at = 0.0

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self._cleanup()

    def _run(self) -> int:
        profile = self.profile
        # First, while low descriptors are still free.
        env_fd = _single_digit(os.open(profile.environment_file, os.O_RDONLY | os.O_NOFOLLOW))
        # The server's uid reads it through /dev/fd (a reopen, so the file must be its own; the
        # folder it lies in stays closed to it).
        os.fchown(env_fd, profile.uid, profile.gid)
        binds = prepare_writable_area(profile)
        self.cgroups.create()
        info_read, info_write = os.pipe()
        block_read, block_write = os.pipe()
        net_read, net_write = os.pipe()

        def in_child() -> None:
            self.cgroups.join()
            set_rlimits(profile, memory_cgroup="memory" in self.cgroups.applied)
            # The network namespace is made here rather than by bubblewrap, whose own loopback
            # set-up fails now and then when sandboxes start side by side; and made first, so
            # its firewall and slirp4netns are set up while bubblewrap builds the rest.
            os.unshare(os.CLONE_NEWNET)
            loopback_up()
            os.write(net_write, b"1")
            os.close(net_write)

        self.sandbox = spawn(
            [*bwrap_arguments(profile, binds, info_write, block_read, env_fd), *self.command],
            keep=(info_write, block_read, net_write, env_fd),
            before_exec=in_child,
        )
        for fd in (info_write, block_read, net_write, env_fd):
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._forward)
        try:
            if os.read(net_read, 1) != b"1":
                raise SetupError("the network namespace could not be made")
            firewall = start_firewall(profile, self.sandbox)
            self.slirp, ready, self.slirp_lifeline = start_slirp(profile, self.sandbox)
            self.inner_pid = read_child_pid(info_read)
            if exit_status(os.waitpid(firewall, 0)[1]) != 0:
                raise SetupError("the firewall rules could not be loaded")
            wait_ready(ready)
        except (SetupError, OSError) as exc:
            if os.waitpid(self.sandbox, os.WNOHANG)[0]:
                self.sandbox = None
                raise SetupError("bubblewrap could not build the sandbox (see above)") from exc
            raise
        finally:
            os.close(info_read)
            os.close(net_read)
        baseline = (self.cgroups.oom_kills(), self.cgroups.pid_limit_hits())
        exited = os.pidfd_open(self.sandbox)
        os.write(block_write, b"go")
        os.close(block_write)
        while True:
            select.select([exited], [], [], WATCH_INTERVAL_SECONDS)
            # Exited first, then the counters: a server the OOM killer ended is seen as such.
            pid, status = os.waitpid(self.sandbox, os.WNOHANG)
            reason = self._breach(baseline)
            if pid:
                self.sandbox = None
                if reason is not None and not self.stopping:
                    say(f"stopped: {reason}")
                    return LIMIT_EXIT_STATUS
                status = exit_status(status)
                # The server's own 125 or 126 must not pass for the launcher's verdicts.
                return 1 if status in (LIMIT_EXIT_STATUS, SETUP_EXIT_STATUS) else status
            if reason is not None:
                self.cgroups.kill_all()
                say(f"stopped: {reason}")
                return LIMIT_EXIT_STATUS
            if self.stopping and time.monotonic() > self.kill_at:
                self.cgroups.kill_all()  # asked to stop, and the server did not in time
                os.kill(self.sandbox, signal.SIGKILL)
                self.kill_at = float("inf")

    def _breach(self, baseline: tuple[int, int]) -> str | None:
        profile = self.profile
        if self.cgroups.oom_kills() > baseline[0]:
            return f"memory limit ({_megabytes(profile.memory_bytes)}) reached"
        if self.cgroups.pid_limit_hits() > baseline[1]:
            return f"process limit ({profile.pids} processes) reached"
        stats = os.statvfs(profile.area)
        if stats.f_bavail == 0 or stats.f_favail == 0:
            return f"disk limit ({_megabytes(profile.area_bytes)}) reached"
        return None

    def _forward(self, sig: int, _frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            self.kill_at = time.monotonic() + STOP_GRACE_SECONDS
        if self.inner_pid is None:
            if self.sandbox is not None:
                os.kill(self.sandbox, signal.SIGKILL)
            return
        # The sandbox's PID 1 is bubblewrap's reaper; the server is its child.
        try:
            with open(f"/proc/{self.inner_pid}/task/{self.inner_pid}/children") as handle:
                children = handle.read().split()
        except OSError:
            return
        for pid in children:
            try:  # noqa: SIM105 - see kill_all
                os.kill(int(pid), sig)
            except (ProcessLookupError, ValueError):
                pass

    def _cleanup(self) -> None:
        self.cgroups.kill_all()
        for pid in (self.sandbox, self.slirp):
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.cgroups.kill_all()
        self._reap_orphans()
        self.cgroups.remove()

    @staticmethod
    def _reap_orphans() -> None:
        """Reap what bubblewrap left: with a PID namespace, its outer process exits without
        waiting for the namespace's init, which the launcher (a subreaper) inherits. Reaping it
        here keeps the sandbox's CPU time in the launcher's children's time, so whoever started
        the launcher accounts for everything the server ran (rusage, /proc), exited or not."""
        deadline = time.monotonic() + REAP_ORPHANS_SECONDS
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return  # none left
            if pid == 0:
                if time.monotonic() > deadline:
                    return  # still running after kill_all: init reaps it once the launcher exits
                time.sleep(0.01)


USAGE = "usage: sandbox.py --profile PROFILE.json -- COMMAND [ARG...]"


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--profile" or argv[2] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    # If the bridge dies, stop as if told to: the server gets SIGTERM, then everything goes.
    parent = os.getppid()
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        return SETUP_EXIT_STATUS
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        if os.geteuid() != 0:
            raise SetupError("the sandbox launcher must run as root to give the server its own uid")
        with open(argv[1]) as handle:
            profile = Profile(json.load(handle))
        return Launcher(profile, argv[3:]).run()
    except (SetupError, OSError, ValueError) as exc:
        say(f"cannot start the sandbox: {exc}")
        return SETUP_EXIT_STATUS


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
