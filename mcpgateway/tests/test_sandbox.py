"""The sandbox launcher on its own: what a process inside can and cannot do, and its limits.

Each test runs a short Python program through `mcpgateway/sandbox.py` as the bridge would, with
a profile like the local runtime writes. Needs root, bubblewrap, slirp4netns and nft; skipped
with the reason where the host lacks them (CI installs them).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from deployments.runtimes import sandbox as runtime_sandbox
from mcpgateway import sandbox

LAUNCHER = Path(sandbox.__file__).resolve()
TOOLS = runtime_sandbox.find_tools()[0]
pytestmark = pytest.mark.skipif(
    not runtime_sandbox.check().enabled, reason=f"no sandbox: {runtime_sandbox.check().problem}"
)
UID = 299_990


@pytest.fixture
def area(tmp_path_factory) -> Path:
    """A folder of Catwalk's: the tmpfs mount point and the bind targets live in it."""
    return tmp_path_factory.mktemp("sbx")


def make_profile(folder: Path, environment: dict[str, str] | None = None, **changes) -> Path:
    """A profile like the runtime's; the server's environment goes to a file, as there."""
    environment_file = folder / "server.env"
    environment_file.write_text(
        "".join(
            f"{name}={shlex.quote(value)}\n"
            for name, value in (
                environment or {"HOME": str(folder / "home"), "PATH": "/usr/bin:/bin"}
            ).items()
        )
    )
    data = {
        "name": f"test-{os.getpid()}",
        "uid": UID,
        "gid": UID,
        "writable": {
            "mount": str(folder / "area"),
            "size_bytes": 32 << 20,
            "binds": {"home": str(folder / "home"), "work": str(folder / "work"), "tmp": "/tmp"},
        },
        "readonly": [sys.base_prefix, sys.prefix],
        "hidden": [],
        "caches": [],
        "limits": {"memory_bytes": 192 << 20, "cpus": 1, "pids": 48, "open_files": 256},
        "blocked": [],
        "tools": TOOLS,
        "environment_file": str(environment_file),
    }
    for key, value in changes.items():
        if key in data["limits"]:
            data["limits"][key] = value
        else:
            data[key] = value
    path = folder / "profile.json"
    path.write_text(json.dumps(data))
    return path


def run(folder: Path, program: str, *, timeout: float = 60, environment=None, **changes):
    profile = make_profile(folder, environment, **changes)
    return subprocess.run(
        [sys.executable, "-I", "-S", str(LAUNCHER), "--profile", str(profile), "--",
         sys.executable, "-c", textwrap.dedent(program)],
        capture_output=True,
        text=True,
        timeout=timeout,
        # The launcher's own environment, which must not reach the server.
        env={"PATH": "/usr/bin:/bin", "LAUNCHER_ONLY": "not for the server"},
    )  # fmt: skip


def test_the_server_runs_as_its_own_uid_with_no_capabilities(area):
    result = run(area, """
        import os
        status = open("/proc/self/status").read()
        caps = [l.split()[1] for l in status.splitlines() if l.startswith(("CapEff", "CapPrm"))]
        nonew = [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs")]
        print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), caps, nonew, os.getcwd())
    """)  # fmt: skip

    assert result.returncode == 0, result.stderr
    work = str(area / "work")
    assert result.stdout.split() == [
        str(UID), str(UID), str(UID), "[]", "['0000000000000000',", "'0000000000000000']",
        "['1']", work,
    ]  # fmt: skip


def test_the_system_is_read_only_and_only_its_folders_are_writable(area):
    secret = area / "secret.txt"
    secret.write_text("catwalk's own")
    result = run(area, f"""
        import os
        outcomes = []
        for path in ["/usr/owned", "{sys.prefix}/owned", "/etc/owned", "/owned", "{area}/owned"]:
            try:
                open(path, "w").write("x")
                outcomes.append("WROTE " + path)
            except OSError as exc:
                outcomes.append(type(exc).__name__)
        for path in ["{secret}", "/etc/shadow", "/root/.bashrc"]:
            try:
                open(path).read()
                outcomes.append("READ " + path)
            except OSError as exc:
                outcomes.append(type(exc).__name__)
        for folder in [os.environ["HOME"], "/tmp", os.getcwd()]:
            open(os.path.join(folder, "mine"), "w").write("ok")
        print(outcomes)
    """)  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "WROTE" not in result.stdout and "READ" not in result.stdout, result.stdout
    assert not (area / "owned").exists()
    assert not (area / "home" / "mine").exists()  # its home was its own tmpfs, gone with it


def test_hidden_folders_show_empty(area):
    area.chmod(0o755)
    project = area / "project"  # a world-readable folder with Catwalk's data folder inside
    data = project / "data"
    data.mkdir(parents=True)
    (data / "keys").write_text("secret")
    (project / "code.py").write_text("")
    result = run(
        area,
        f"import os; print(os.listdir('{data}'), sorted(os.listdir('{project}')))",
        readonly=[sys.base_prefix, sys.prefix, str(project)],
        hidden=[str(data)],
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] ['code.py', 'data']"


def test_it_sees_only_its_own_processes(area):
    result = run(area, """
        import os, subprocess
        child = subprocess.Popen(["sleep", "5"])
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        outcomes = []
        for pid in (1, os.getppid()):
            try:
                open(f"/proc/{pid}/cmdline").read()
                outcomes.append("READ")
            except OSError as exc:
                outcomes.append(type(exc).__name__)
        child.kill()
        print(pids == sorted([os.getpid(), child.pid]), outcomes)
    """)  # fmt: skip

    assert result.returncode == 0, result.stderr
    # Not even bubblewrap's reaper (PID 1, its parent), whose command line describes the sandbox.
    assert result.stdout.strip() == "True ['FileNotFoundError', 'FileNotFoundError']"


@pytest.fixture
def listener():
    """A TCP server on all interfaces: the host's own services, as the sandbox would see them."""
    server = socket.create_server(("0.0.0.0", 0))  # noqa: S104 - the point of the test
    accepted = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()


def host_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("203.0.113.1", 9))  # no packet is sent; this picks the outgoing address
        return probe.getsockname()[0]


def test_loopback_private_metadata_and_host_addresses_are_refused(area, listener):
    port, accepted = listener
    targets = [("127.0.0.1", port), ("10.0.2.2", port), (host_address(), port),
               ("169.254.169.254", 80), ("192.168.1.1", 80), ("172.17.0.1", 80)]  # fmt: skip
    result = run(area, f"""
        import socket
        for host, port in {targets!r}:
            try:
                socket.create_connection((host, port), timeout=3).close()
                print("CONNECTED", host)
            except OSError as exc:
                print("refused", host, exc)
        try:
            socket.create_connection(("::1", {port}), timeout=3)
            print("CONNECTED ::1")
        except OSError as exc:
            print("refused ::1", exc)
    """, blocked=[f"{host_address()}/32"])  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "CONNECTED" not in result.stdout, result.stdout
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["refused"] * (
        len(targets) + 1
    )
    assert accepted == []


def test_public_internet_and_dns_still_work(area):
    result = run(area, """
        import urllib.request
        with urllib.request.urlopen("https://registry.npmjs.org/is-number", timeout=30) as r:
            print(r.status)
    """)  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "200"


def test_the_servers_environment_is_exactly_its_own(area):
    environment = {
        "HOME": str(area / "home"),
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "API_KEY": "s3cret",
        "QUOTED": "it's $(id) `id`\nline two",
    }
    result = run(
        area, "import os, json; print(json.dumps(dict(os.environ)))", environment=environment
    )

    assert result.returncode == 0, result.stderr
    # Not a variable of the launcher's; bubblewrap and the shell add only PWD.
    assert json.loads(result.stdout) == {**environment, "PWD": str(area / "work")}


def test_no_root_process_ever_has_the_servers_environment(area):
    marker = "credential-canary-5c1f"
    profile = make_profile(area, {"PATH": "/usr/bin:/bin", "CANARY": marker})
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", str(LAUNCHER), "--profile", str(profile), "--",
         sys.executable, "-c", "print('ready', flush=True); import time; time.sleep(30)"],
        stdout=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    try:
        holders = {}
        for member in [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]:
            with contextlib.suppress(psutil.Error):
                if marker in member.environ().get("CANARY", ""):
                    holders[member.pid] = member.uids().real
    finally:
        process.kill()
        process.wait()

    assert holders and set(holders.values()) == {UID}


def test_exit_status_is_the_servers_own(area):
    assert run(area, "raise SystemExit(7)").returncode == 7


def test_the_cpu_the_server_spent_counts_as_the_launchers_childrens_once_it_exits(area):
    # The launcher reaps what bubblewrap leaves of the PID namespace, so the CPU of a server
    # that has exited (a build step, an isolated session's server) is not lost to whoever
    # measures the launcher's tree: rusage and /proc's children times hold it.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run(
        area,
        """
        import time
        started = time.process_time()
        while time.process_time() - started < 0.5:
            pass
        """,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)

    assert result.returncode == 0, result.stderr
    spent = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert spent >= 0.49  # the server's own 0.5 s (in 10 ms ticks), besides the launcher's


@pytest.mark.parametrize(
    ("program", "limit"),
    [
        ("x = []\nwhile True: x.append(bytearray(8 << 20))", "memory limit (192 MiB) reached"),
        (
            "import os, time\n"
            "while True:\n"
            "    try:\n"
            "        if os.fork() == 0: time.sleep(30); os._exit(0)\n"
            "    except OSError: time.sleep(0.01)",
            "process limit (48 processes) reached",
        ),
        (
            "import os, time\n"
            "f = open(os.environ['HOME'] + '/fill', 'wb')\n"
            "try:\n"
            "    while True: f.write(bytes(1 << 20)); f.flush()\n"
            "except OSError: time.sleep(30)",
            "disk limit (32 MiB) reached",
        ),
    ],
    ids=["memory", "processes", "disk"],
)
def test_a_blown_limit_stops_the_whole_sandbox_and_says_which(area, program, limit):
    started = time.monotonic()
    result = run(area, program, timeout=60)

    assert result.returncode == sandbox.LIMIT_EXIT_STATUS, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"catwalk-sandbox: stopped: {limit}"
    assert time.monotonic() - started < 30  # stopped by the watch, not by the program's sleep
    leftovers = subprocess.run(["pgrep", "-u", str(UID)], capture_output=True, text=True)
    assert leftovers.stdout == ""


def test_sigterm_reaches_the_server_and_nothing_survives(area):
    profile = make_profile(area)
    program = textwrap.dedent("""
        import os, signal, sys, time
        if os.fork() == 0:
            time.sleep(300)
        def done(*_):
            # Not print(): the signal may land while print("ready") is still returning, and
            # a second print inside it is a reentrant call Python refuses.
            os.write(1, b"got SIGTERM\\n")
            os._exit(0)
        signal.signal(signal.SIGTERM, done)
        print("ready", flush=True)
        time.sleep(300)
    """)
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", str(LAUNCHER), "--profile", str(profile), "--",
         sys.executable, "-c", program],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={"HOME": str(area / "home"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert process.stdout.readline().strip() == "ready"

    # As the bridge stops its child: SIGTERM to the launcher's whole process group.
    os.killpg(process.pid, signal.SIGTERM)
    output, errors = process.communicate(timeout=20)

    assert "got SIGTERM" in output, f"status {process.returncode}; stderr: {errors}"
    assert process.returncode == 0
    leftovers = subprocess.run(["pgrep", "-u", str(UID)], capture_output=True, text=True)
    assert leftovers.stdout == ""


def test_killing_the_launcher_kills_the_sandbox_and_leaves_nothing_behind(area):
    profile = make_profile(area)
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", str(LAUNCHER), "--profile", str(profile), "--",
         sys.executable, "-c", "print('ready', flush=True); import time; time.sleep(300)"],
        stdout=subprocess.PIPE, text=True,
        env={"HOME": str(area / "home"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    helpers = psutil.Process(process.pid).children()
    cgroup = Path(f"/sys/fs/cgroup/pids/catwalk/test-{os.getpid()}/{process.pid}")
    had_cgroup = cgroup.is_dir()

    process.kill()
    process.wait()

    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-u", str(UID)], capture_output=True).returncode == 0 or any(
        helper.is_running() and helper.status() != psutil.STATUS_ZOMBIE for helper in helpers
    ):
        assert time.monotonic() < deadline, "the sandbox or slirp4netns outlived its launcher"
        time.sleep(0.1)
    # The next launch of the same deployment removes the cgroup the killed one left.
    assert run(area, "pass").returncode == 0
    assert had_cgroup == os.access("/sys/fs/cgroup/pids", os.W_OK)
    assert not cgroup.exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"uid": 0}, "refusing to run the server as uid 0"),
        ({"memory_bytes": 0}, "every limit must be positive"),
        ({"blocked": ["10.0.0.0/8; flush ruleset"]}, "bad blocked network"),
        ({"tools": {"bwrap": "/nonexistent"}}, "bad profile"),
    ],
)
def test_a_bad_profile_is_refused_before_anything_runs(area, changes, message):
    result = run(area, "print('ran')", **changes)

    assert result.returncode == sandbox.SETUP_EXIT_STATUS
    assert "ran" not in result.stdout
    assert message in result.stderr


def test_usage_error_without_a_command(area):
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(LAUNCHER), "--profile", str(make_profile(area))],
        capture_output=True, text=True,
    )  # fmt: skip

    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_rlimits_and_cgroup_limits_are_those_of_the_profile(area):
    profile = make_profile(area, cpus=0.5, open_files=128)
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", str(LAUNCHER), "--profile", str(profile), "--",
         sys.executable, "-c", textwrap.dedent("""
            import resource
            print(resource.getrlimit(resource.RLIMIT_NOFILE), flush=True)
            handles = []
            try:
                while True:
                    handles.append(open("/dev/null"))
            except OSError as exc:
                print(len(handles), type(exc).__name__, flush=True)
            input()
         """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={"HOME": str(area / "home"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert process.stdout.readline().strip() == "(128, 128)"
    opened, error = process.stdout.readline().split()
    cgroups = Path("/sys/fs/cgroup")
    relative = Path("catwalk") / f"test-{os.getpid()}" / str(process.pid)
    limits = {}
    if os.access(cgroups / "cpu", os.W_OK):
        limits = {
            "cpu": (cgroups / "cpu" / relative / "cpu.cfs_quota_us").read_text().strip(),
            "memory": (cgroups / "memory" / relative / "memory.limit_in_bytes").read_text().strip(),
            "pids": (cgroups / "pids" / relative / "pids.max").read_text().strip(),
        }
    process.communicate("\n", timeout=20)

    assert int(opened) < 128 and error == "OSError"
    if os.access(cgroups / "cpu", os.W_OK):
        assert limits == {"cpu": "50000", "memory": str(192 << 20), "pids": "48"}


def test_a_launcher_whose_bridge_dies_stops_its_server(area):
    profile = make_profile(area)
    launcher = [
        sys.executable,
        "-I",
        "-S",
        str(LAUNCHER),
        "--profile",
        str(profile),
        "--",
        sys.executable,
        "-c",
        "print('ready', flush=True); import time; time.sleep(300)",
    ]
    # A stand-in bridge: starts the launcher, reports its pid, then dies.
    bridge = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import subprocess, sys
            child = subprocess.Popen({launcher!r}, stdout=subprocess.PIPE, text=True,
                                     env={{"PATH": "/usr/bin:/bin"}})
            print(child.pid, child.stdout.readline().strip(), flush=True)
         """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    pid, ready = bridge.stdout.readline().split()
    bridge.wait()

    assert ready == "ready"
    deadline = time.monotonic() + 15
    while (
        psutil.pid_exists(int(pid))
        or subprocess.run(["pgrep", "-u", str(UID)], capture_output=True).returncode == 0
    ):
        assert time.monotonic() < deadline, "the launcher or its server outlived the bridge"
        time.sleep(0.1)


def test_a_layered_cache_leaves_its_parent_folder_writable(area):
    shared = area / "shared-cache"
    (shared / "wheels").mkdir(parents=True)
    home = str(area / "home")
    result = run(
        area,
        f"""
        import os
        os.makedirs("{home}/.cache/pip")
        print(sorted(os.listdir("{home}/.cache")), os.listdir("{home}/.cache/uv"))
        """,
        caches=[{"shared": str(shared), "target": f"{home}/.cache/uv"}],
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['pip', 'uv'] ['wheels']"


def test_without_cgroups_it_says_so_and_memory_falls_back_to_an_rlimit(area):
    no_cgroups = area / "no-cgroups"
    no_cgroups.mkdir()
    result = run(
        area,
        """
        import resource
        print(resource.getrlimit(resource.RLIMIT_DATA))
        x = bytearray(300 << 20)
        """,
        cgroup_root=str(no_cgroups),
    )

    assert "warning: no memory, cpu, pids cgroup here" in result.stderr
    assert f"({192 << 20}, {192 << 20})" in result.stdout
    assert result.returncode != 0 and "MemoryError" in result.stderr


def test_a_server_exiting_with_the_launchers_own_statuses_does_not_pass_for_them(area):
    assert run(area, "raise SystemExit(125)").returncode == 1
    assert run(area, "raise SystemExit(126)").returncode == 1


# --- An image's files as the root (OCI packages) -------------------------------------------


def image_root(folder: Path, script: str) -> Path:
    """A minimal image: the host's dash as /bin/sh with the libraries it loads, and a script."""
    root = folder / "image"
    for line in subprocess.run(["ldd", "/bin/dash"], capture_output=True, text=True).stdout.split(
        "\n"
    ):
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(path).resolve().read_bytes())
            target.chmod(0o755)
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / "bin" / "sh").write_bytes(Path("/bin/dash").resolve().read_bytes())
    (root / "bin" / "sh").chmod(0o755)
    (root / "etc").mkdir(exist_ok=True)
    (root / "srv").mkdir(exist_ok=True)
    (root / "srv" / "main.sh").write_text(textwrap.dedent(script))
    return root


def run_image(folder: Path, root: Path, script_args=(), workdir="/srv", **changes):
    profile = make_profile(
        folder,
        {"HOME": "/home/server", "PATH": "/bin", "API_KEY": "credential-for-the-image"},
        root={"image": str(root), "workdir": workdir},
        readonly=[],
        **changes,
    )
    return subprocess.run(
        [sys.executable, "-I", "-S", str(LAUNCHER), "--profile", str(profile), "--",
         "/bin/sh", "/srv/main.sh", *script_args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LAUNCHER_ONLY": "not for the server"},
    )  # fmt: skip


IMAGE_PROBE = """
    echo "pwd=$PWD key=$API_KEY launcher=${LAUNCHER_ONLY:-unset}"
    while read -r line; do
        case $line in Uid:*|CapEff:*|NoNewPrivs:*) echo "$line";; esac
    done < /proc/self/status
    for path in /usr/bin/python3 /usr /etc/shadow /lib64 /.catwalk-host/usr/bin/setpriv; do
        if [ -e "$path" ]; then echo "seen $path"; fi
    done
    preload=$(while read -r line; do echo "$line"; done < /etc/ld.so.preload)
    echo "preload=[$preload]"
    echo mine > ./written-by-the-server && echo "wrote-workdir"
    echo mine > /srv/main.sh 2>/dev/null || echo "image-file-refused"
    echo mine > /etc/owned 2>/dev/null || echo "etc-refused"
    while read -r line; do case $line in server:*) echo "passwd $line";; esac; done < /etc/passwd
"""


def test_an_image_is_the_servers_root_with_nothing_of_the_hosts_system(area):
    root = image_root(area, IMAGE_PROBE)
    # What an image may ship to subvert the tools that build its sandbox, and a password file.
    (root / "etc" / "ld.so.preload").write_text("/srv/evil.so\n")
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}

    result = run_image(area, root)

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "pwd=/srv key=credential-for-the-image launcher=unset" in out
    assert f"Uid:\t{UID}\t{UID}\t{UID}\t{UID}" in out
    assert "CapEff:\t0000000000000000" in out and "NoNewPrivs:\t1" in out
    # Nothing of the host but its /usr, read-only, where the set-up stages find their tools
    # (a server on the host's system sees /usr too); the image has no /lib64 of its own here.
    seen = [line for line in out.splitlines() if line.startswith("seen")]
    assert seen == ["seen /.catwalk-host/usr/bin/setpriv"] or seen == [
        "seen /lib64",
        "seen /.catwalk-host/usr/bin/setpriv",
    ], out
    assert "preload=[]" in out  # the image's preload never loads into a privileged tool
    assert "wrote-workdir" in out and "image-file-refused" in out and "etc-refused" in out
    assert f"passwd server:x:{UID}:{UID}::" in out
    # Every write landed in the sandbox's own layer: the image's files are as they were.
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert not (root / "srv" / "written-by-the-server").exists()


def test_an_image_whose_etc_is_a_link_is_refused(area):
    root = image_root(area, "echo ran")
    (root / "etc").rmdir()
    (root / "etc").symlink_to("/etc")

    result = run_image(area, root)

    assert result.returncode == sandbox.SETUP_EXIT_STATUS
    assert "ran" not in result.stdout
    assert "the image's /etc is not a folder" in result.stderr


def test_an_images_links_at_the_set_up_places_are_not_followed(area):
    outside = area / "outside"
    outside.mkdir()
    root = image_root(area, "echo ran in $PWD")
    # A link where the host's tools go, and a working folder that links to a host folder.
    (root / ".catwalk-host").symlink_to("/srv")
    (root / "srv" / "work").symlink_to(str(outside))

    ran = run_image(area, root)
    linked = run_image(area, root, workdir="/srv/work")

    assert ran.returncode == 0, ran.stderr
    assert "ran in /srv" in ran.stdout
    assert (root / ".catwalk-host").is_symlink()  # the image is untouched
    # The working folder's link is resolved in the image, where that host folder is not.
    assert linked.returncode != 0 and "ran" not in linked.stdout
    assert "Can't chdir to /srv/work" in linked.stderr
    assert outside.stat().st_uid == os.getuid()  # never handed to the server's uid
