"""The Fly stand-in speaks Fly's API, really runs machines, and injects the faults tests need.

Machines here run a tiny runner of this file's own (FAKE_RUNNER): an HTTP server on
CATWALK_RUNNER_LISTEN answering /healthz, showing its environment, keeping a note in the file
FAKE_NOTE names, streaming SSE on demand and exiting or ignoring SIGTERM when its config asks, so
these tests do not depend on the real runner.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest

from deployments.runtimes.fly_api import FlyClient, FlyError
from deployments.tests.fly_standin import FlyStandin

FAKE_RUNNER = r"""
import json, os, signal, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

host, port = os.environ["CATWALK_RUNNER_LISTEN"].removeprefix("tcp:").rsplit(":", 1)
if os.environ.get("FAKE_EXIT_AT_BOOT"):
    print("exiting at boot", file=sys.stderr, flush=True)
    sys.exit(int(os.environ["FAKE_EXIT_AT_BOOT"]))

def on_term(signum, frame):
    print("got SIGTERM", flush=True)
    os._exit(0)

signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("FAKE_IGNORE_TERM") else on_term)
release = threading.Event()

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/healthz":
            self.answer(200, {"ok": True})
        elif self.path == "/env":
            self.answer(200, dict(os.environ))
        elif self.path == "/pid":
            self.answer(200, os.getpid())
        elif self.path == "/note":
            note = os.environ["FAKE_NOTE"]
            self.answer(200, open(note).read() if os.path.exists(note) else None)
        elif self.path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b"data: one\n\n")
            self.wfile.flush()
            release.wait(300)
            self.wfile.write(b"data: two\n\n")
        elif self.path.startswith("/exit/"):
            self.answer(200, {"exiting": True})
            self.wfile.flush()
            os._exit(int(self.path.rsplit("/", 1)[1]))
        else:
            self.answer(404, {"path": self.path})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/release":
            release.set()
        elif self.path == "/note":
            os.makedirs(os.path.dirname(os.environ["FAKE_NOTE"]), exist_ok=True)
            with open(os.environ["FAKE_NOTE"], "w") as note:
                note.write(body.decode())
        self.answer(200, {"path": self.path, "body": body.decode(), "headers": dict(self.headers)})

print("fake runner listening on", port, flush=True)
print("a line on stderr", file=sys.stderr, flush=True)
ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
"""
FAKE_COMMAND = [sys.executable, "-c", FAKE_RUNNER]
IDLE_STOP_SECONDS = 1.0
SECRET_VALUE = "s3cret-value-that-must-not-leak"


def machine_config(*, autostop: bool = False, max_retries: int = 3, **env: str) -> dict:
    """A machine config shaped as the Fly runtime sends it, with extra env for the fake runner."""
    return {
        "image": "registry.fly.io/catwalk-runner:test",
        "init": {"cmd": ["python", "-m", "mcpgateway.runner"]},
        "env": {
            "CATWALK_SERVER_COMMAND": json.dumps(["python", "-m", "mcpgateway.fixture_server"]),
            "CATWALK_BRIDGE_MODE": "shared",
            "CATWALK_DEPLOYMENT": "dep-1",
            **env,
        },
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 512},
        "restart": {"policy": "on-failure", "max_retries": max_retries},
        "metadata": {"catwalk_deployment": "dep-1", "catwalk_machine_key": "key-1"},
        "stop_config": {"signal": "SIGTERM", "timeout": "10s"},
        "services": [
            {
                "protocol": "tcp",
                "internal_port": 8080,
                "autostart": True,
                "autostop": "stop" if autostop else "off",
                "min_machines_running": 0,
                "ports": [{"port": 80, "handlers": ["http"]}],
            }
        ],
        "checks": {
            "bridge": {"type": "http", "port": 8080, "path": "/healthz", "method": "GET"},
        },
    }


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def eventually(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


@pytest.fixture
def fly() -> Iterator[FlyStandin]:
    threads_before = set(threading.enumerate())
    standin = FlyStandin(
        runner_command=FAKE_COMMAND,
        unsandboxed=True,
        idle_stop_seconds=IDLE_STOP_SECONDS,
        proxy_start_timeout=30,
        foreign_apps=["someone-elses-app"],
    )
    try:
        yield standin
    finally:
        standin.close()
    assert not [pid for pid in standin.launched_pids if alive(pid)]
    assert set(threading.enumerate()) <= threads_before


@pytest.fixture
def api(fly: FlyStandin) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {fly.token}"}
    with httpx.Client(base_url=fly.api_url, headers=headers, trust_env=False, timeout=60) as c:
        yield c


@pytest.fixture
def client(fly: FlyStandin) -> Iterator[FlyClient]:
    """The Fly runtime's own API client, retrying quickly."""
    with FlyClient(
        api_url=fly.api_url, logs_url=fly.logs_api_url, token=fly.token, retries=3, backoff=0.01
    ) as client:
        yield client


@pytest.fixture
def proxy(fly: FlyStandin) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fly.proxy_url, trust_env=False, timeout=60) as client:
        yield client


def create_app(api: httpx.Client, name: str = "cw-app", *, flycast: bool = True) -> str:
    assert api.post("/apps", json={"app_name": name, "org_slug": "personal"}).status_code == 201
    if flycast:
        assert api.post(f"/apps/{name}/ip_assignments", json={"type": "private_v6"}).is_success
    return name


def launch(api: httpx.Client, app: str, config: dict | None = None, **body: Any) -> dict:
    """Create a machine and wait until it is started."""
    answer = api.post(f"/apps/{app}/machines", json={"config": config or machine_config(), **body})
    assert answer.status_code == 200, answer.text
    machine = answer.json()
    wait(api, app, machine["id"], "started")
    return machine


def mounted(config: dict, volume_id: str, path: str = "/data") -> dict:
    return {**config, "mounts": [{"volume": volume_id, "path": path}]}


def wait(api: httpx.Client, app: str, machine_id: str, state: str) -> None:
    answer = api.get(
        f"/apps/{app}/machines/{machine_id}/wait", params={"state": state, "timeout": 30}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"ok": True, "state": state}


def events(api: httpx.Client, app: str, machine_id: str) -> list[dict]:
    answer = api.get(f"/apps/{app}/machines/{machine_id}/events")
    assert answer.status_code == 200
    return answer.json()


def runner_pid(proxy: httpx.Client, app: str) -> int:
    answer = proxy.get(f"/{app}/pid")
    assert answer.status_code == 200, answer.text
    return answer.json()


def error(answer: httpx.Response, status_code: int, status: str) -> str:
    """Assert Fly's error shape and return its message."""
    assert answer.status_code == status_code, answer.text
    body = answer.json()
    assert set(body) == {"error", "status"} and body["status"] == status
    assert body["error"]
    return body["error"]


# ---- apps, auth, input -------------------------------------------------------------------


def test_apps_are_created_read_and_deleted(fly, api):
    created = api.post("/apps", json={"app_name": "cw-one", "org_slug": "personal"})
    assert created.status_code == 201
    app = api.get("/apps/cw-one")
    assert app.status_code == 200
    assert app.json()["name"] == "cw-one"
    assert app.json()["organization"]["slug"] == "personal"
    assert app.json()["machine_count"] == 0
    assert api.post("/apps", json={"name": "cw-two", "org_slug": "personal"}).status_code == 201
    assert fly.apps() == ["cw-one", "cw-two"]

    assert api.delete("/apps/cw-one", params={"force": "true"}).status_code == 202
    error(api.get("/apps/cw-one"), 404, "not_found")
    assert fly.apps() == ["cw-two"]


def test_a_taken_app_name_is_422_name_taken(api):
    create_app(api, "cw-taken")
    error(
        api.post("/apps", json={"app_name": "cw-taken", "org_slug": "personal"}), 422, "name_taken"
    )
    error(
        api.post("/apps", json={"app_name": "someone-elses-app", "org_slug": "personal"}),
        422,
        "name_taken",
    )
    error(api.get("/apps/someone-elses-app"), 403, "unauthorized")


def test_a_wrong_or_missing_token_is_401_on_both_apis(fly):
    for headers in ({"Authorization": "Bearer wrong"}, {}):
        with httpx.Client(headers=headers, trust_env=False) as client:
            error(client.get(f"{fly.api_url}/apps/anything"), 401, "unauthenticated")
            error(client.get(f"{fly.logs_api_url}/apps/anything/logs"), 401, "unauthenticated")
    with httpx.Client(headers={"Authorization": f"FlyV1 {fly.token}"}, trust_env=False) as client:
        error(client.get(f"{fly.api_url}/apps/anything"), 404, "not_found")


def test_bad_input_is_a_clear_400(api):
    app = create_app(api)
    bad_json = api.post(
        f"/apps/{app}/machines", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert "JSON" in error(bad_json, 400, "invalid_argument")
    no_image = api.post(f"/apps/{app}/machines", json={"config": {"env": {}}})
    assert "image" in error(no_image, 400, "invalid_argument")
    config = machine_config()
    config["guest"]["memory_mb"] = 300
    assert "memory_mb" in error(
        api.post(f"/apps/{app}/machines", json={"config": config}), 400, "invalid_argument"
    )
    config = machine_config()
    config["env"]["NUMBER"] = 5
    assert "env" in error(
        api.post(f"/apps/{app}/machines", json={"config": config}), 400, "invalid_argument"
    )
    assert "app_name" in error(api.post("/apps", json={"app_name": "No!"}), 400, "invalid_argument")
    machine = api.post(
        f"/apps/{app}/machines", json={"config": machine_config(), "skip_launch": True}
    )
    wait_url = f"/apps/{app}/machines/{machine.json()['id']}/wait"
    error(api.get(wait_url, params={"state": "started", "timeout": 90}), 400, "invalid_argument")
    error(api.get(wait_url, params={"state": "dancing"}), 400, "invalid_argument")
    error(api.get("/apps/nope/machines"), 404, "not_found")
    error(api.get("/no/such/route"), 404, "not_found")


# ---- machines ----------------------------------------------------------------------------


def test_a_started_machine_runs_the_runner_with_the_environment_fly_gives(fly, api, proxy):
    app = create_app(api)
    secrets = api.post(f"/apps/{app}/secrets", json={"values": {"CATWALK_ENV_TOKEN": SECRET_VALUE}})
    version = secrets.json()["version"]
    created = api.post(
        f"/apps/{app}/machines",
        json={"name": f"{app}-1", "region": "ams", "config": machine_config(),
              "min_secrets_version": version},
    )  # fmt: skip
    assert created.status_code == 200
    machine = created.json()
    assert len(machine["id"]) == 14 and int(machine["id"], 16) >= 0
    assert machine["state"] == "created"
    assert machine["name"] == f"{app}-1" and machine["region"] == "ams"
    assert machine["private_ip"].startswith("fdaa:")
    assert machine["config"]["services"][0]["autostop"] is False
    wait(api, app, machine["id"], "started")

    env = proxy.get(f"/{app}/env").json()
    assert env["CATWALK_ENV_TOKEN"] == SECRET_VALUE
    assert env["CATWALK_BRIDGE_MODE"] == "shared"
    assert env["FLY_APP_NAME"] == app
    assert env["FLY_MACHINE_ID"] == env["FLY_ALLOC_ID"] == machine["id"]
    assert env["FLY_REGION"] == "ams"
    assert env["FLY_PRIVATE_IP"] == machine["private_ip"]
    assert env["FLY_IMAGE_REF"] == "registry.fly.io/catwalk-runner:test"
    assert env["FLY_PUBLIC_IP"]
    assert env["CATWALK_RUNNER_LISTEN"].startswith("tcp:127.0.0.1:")
    assert env["CATWALK_RUNNER_ROOT"] and env["CATWALK_RUNNER_SANDBOX_UID"].isdigit()
    assert env["CATWALK_UNSAFE_NO_SANDBOX"] == "1"
    assert "PYTEST_CURRENT_TEST" not in env  # nothing of this host's environment but PATH/LANG
    assert fly.boot_env(app, machine["id"])["CATWALK_ENV_TOKEN"] == SECRET_VALUE

    got = api.get(f"/apps/{app}/machines/{machine['id']}").json()
    assert got["state"] == "started"
    assert got["checks"] == [
        {"name": "bridge", "status": "passing", "output": "200 OK", "updated_at": got["updated_at"]}
    ]
    assert [e["status"] for e in events(api, app, machine["id"])][:2] == ["started", "requested"]
    machine_bodies = [r.body for r in fly.requests if "/machines" in r.path and r.body]
    assert machine_bodies and all(SECRET_VALUE not in json.dumps(b) for b in machine_bodies)


def test_machines_are_listed_by_metadata_and_destroyed_ones_on_request(fly, api):
    app = create_app(api)
    first = machine_config()
    second = machine_config()
    second["metadata"]["catwalk_machine_key"] = "key-2"
    one = api.post(f"/apps/{app}/machines", json={"config": first, "skip_launch": True}).json()
    two = api.post(f"/apps/{app}/machines", json={"config": second, "skip_launch": True}).json()
    assert one["state"] == two["state"] == "created"

    def listed(**params: str) -> list[str]:
        answer = api.get(f"/apps/{app}/machines", params=params)
        assert answer.status_code == 200
        return sorted(m["id"] for m in answer.json())

    assert listed() == sorted([one["id"], two["id"]])
    assert listed(**{"metadata.catwalk_machine_key": "key-2"}) == [two["id"]]
    assert (
        listed(**{"metadata.catwalk_deployment": "dep-1", "metadata.catwalk_machine_key": "no"})
        == []
    )
    assert api.delete(f"/apps/{app}/machines/{one['id']}").status_code == 200
    assert listed() == [two["id"]]
    assert listed(include_deleted="true") == sorted([one["id"], two["id"]])
    assert api.get(f"/apps/{app}/machines/{one['id']}").json()["state"] == "destroyed"
    error(api.post(f"/apps/{app}/machines/{one['id']}/start"), 404, "not_found")
    assert [m["state"] for m in fly.machines(app)] == ["destroyed", "created"]


def test_stop_sends_the_stop_signal_and_start_boots_again(fly, api, proxy):
    app = create_app(api)
    machine = launch(api, app)
    first_pid = runner_pid(proxy, app)
    assert api.post(f"/apps/{app}/machines/{machine['id']}/stop").json() == {"ok": True}
    wait(api, app, machine["id"], "stopped")
    assert not alive(first_pid)
    assert "got SIGTERM" in fly.logs(app)
    exit_event = next(e for e in events(api, app, machine["id"]) if e["type"] == "exit")
    assert exit_event["request"]["exit_event"]["exit_code"] == 0
    assert exit_event["request"]["exit_event"]["requested_stop"] is True

    started = api.post(f"/apps/{app}/machines/{machine['id']}/start")
    assert started.json()["previous_state"] == "stopped"
    wait(api, app, machine["id"], "started")
    assert runner_pid(proxy, app) != first_pid


def test_a_process_ignoring_the_stop_signal_is_killed_after_the_timeout(fly, api, proxy):
    app = create_app(api)
    machine = launch(api, app, machine_config(FAKE_IGNORE_TERM="1"))
    pid = runner_pid(proxy, app)
    stop = api.post(f"/apps/{app}/machines/{machine['id']}/stop", json={"timeout": "1s"})
    assert stop.status_code == 200
    wait(api, app, machine["id"], "stopped")
    assert not alive(pid)
    exit_event = next(e for e in events(api, app, machine["id"]) if e["type"] == "exit")
    assert exit_event["request"]["exit_event"]["signal"] == signal.SIGKILL
    assert "got SIGTERM" not in fly.logs(app)


def test_a_crashing_process_is_restarted_per_policy_then_fails(fly, api):
    app = create_app(api)
    created = api.post(
        f"/apps/{app}/machines",
        json={"config": machine_config(FAKE_EXIT_AT_BOOT="3", max_retries=2)},
    )
    machine_id = created.json()["id"]
    wait(api, app, machine_id, "failed")
    history = events(api, app, machine_id)
    exits = [e["request"]["exit_event"] for e in history if e["type"] == "exit"]
    assert [e["exit_code"] for e in exits] == [3, 3, 3]
    assert [e["restarting"] for e in exits] == [False, True, True]  # newest first
    assert sum(e["type"] == "restart" for e in history) == 2
    assert fly.logs(app).count("exiting at boot") == 3


def test_a_started_machine_whose_process_dies_is_restarted(fly, api, proxy):
    app = create_app(api)
    machine = launch(api, app)
    pid = runner_pid(proxy, app)
    assert proxy.get(f"/{app}/exit/4").json() == {"exiting": True}
    eventually(
        lambda: any(e["type"] == "restart" for e in events(api, app, machine["id"])), "a restart"
    )
    wait(api, app, machine["id"], "started")
    assert runner_pid(proxy, app) not in (pid, -1)
    assert len(fly.launched_pids) == 2


def test_update_checks_the_version_and_reboots_with_the_new_config(fly, api, proxy):
    app = create_app(api)
    machine = launch(api, app)
    url = f"/apps/{app}/machines/{machine['id']}"
    stale = api.post(url, json={"config": machine_config(), "current_version": "01STALE"})
    error(stale, 412, "failed_precondition")
    updated = api.post(
        url,
        json={"config": machine_config(EXTRA="new"), "current_version": machine["instance_id"]},
    )
    assert updated.status_code == 200
    assert updated.json()["instance_id"] != machine["instance_id"]
    wait(api, app, machine["id"], "started")
    assert proxy.get(f"/{app}/env").json()["EXTRA"] == "new"


def test_destroying_a_started_machine_needs_force(fly, api, proxy):
    app = create_app(api)
    machine = launch(api, app)
    pid = runner_pid(proxy, app)
    url = f"/apps/{app}/machines/{machine['id']}"
    error(api.delete(url), 412, "failed_precondition")
    assert api.delete(url, params={"force": "true"}).json() == {"ok": True}
    wait(api, app, machine["id"], "destroyed")
    assert not alive(pid)


def test_secrets_are_set_and_unset_in_bulk_and_never_shown(api):
    app = create_app(api)
    url = f"/apps/{app}/secrets"
    first = api.post(url, json={"values": {"CATWALK_BRIDGE_SECRET": SECRET_VALUE, "OLD": "x"}})
    assert first.json()["version"] == 1
    second = api.post(url, json={"values": {"OLD": None}})
    assert second.json()["version"] == 2
    assert [s["name"] for s in second.json()["secrets"]] == ["CATWALK_BRIDGE_SECRET"]
    listed = api.get(url)
    assert [(s["name"], bool(s["digest"])) for s in listed.json()["secrets"]] == [
        ("CATWALK_BRIDGE_SECRET", True)
    ]
    assert SECRET_VALUE not in first.text + second.text + listed.text
    error(api.post(url, json={"values": {"BAD": 1}}), 400, "invalid_argument")
    too_new = api.post(
        f"/apps/{app}/machines", json={"config": machine_config(), "min_secrets_version": 3}
    )
    error(too_new, 422, "invalid_argument")


def test_ip_assignments_are_listed_allocated_and_released(api):
    app = create_app(api, flycast=False)
    assert api.get(f"/apps/{app}/ip_assignments").json() == {"ips": []}
    allocated = api.post(f"/apps/{app}/ip_assignments", json={"type": "private_v6"})
    assert allocated.status_code == 200
    address = allocated.json()["ip"]
    assert address.startswith("fdaa:")
    assert [ip["ip"] for ip in api.get(f"/apps/{app}/ip_assignments").json()["ips"]] == [address]
    assert api.delete(f"/apps/{app}/ip_assignments/{address}").status_code == 200
    assert api.get(f"/apps/{app}/ip_assignments").json() == {"ips": []}
    error(api.delete(f"/apps/{app}/ip_assignments/{address}"), 404, "not_found")


def test_the_logs_api_pages_machine_output_with_next_token(fly, api):
    app = create_app(api)
    machine = launch(api, app)
    eventually(lambda: "a line on stderr" in fly.logs(app), "the runner's stderr in the logs")
    with httpx.Client(headers={"Authorization": f"Bearer {fly.token}"}, trust_env=False) as client:
        url = f"{fly.logs_api_url}/apps/{app}/logs"
        page = client.get(url).json()
        messages = [entry["attributes"]["message"] for entry in page["data"]]
        assert "a line on stderr" in messages
        assert any(m.startswith("fake runner listening on") for m in messages)
        entry = page["data"][0]
        assert entry["type"] == "logs"
        assert entry["attributes"]["instance"] == machine["id"]
        assert {"timestamp", "level", "region", "meta"} <= set(entry["attributes"])
        token = page["meta"]["next_token"]
        assert client.get(url, params={"next_token": token}).json()["data"] == []
        api.post(f"/apps/{app}/machines/{machine['id']}/stop")
        wait(api, app, machine["id"], "stopped")
        later = client.get(url, params={"next_token": token}).json()
        assert [e["attributes"]["message"] for e in later["data"]] == ["got SIGTERM"]


# ---- volumes -----------------------------------------------------------------------------


def test_volumes_are_created_listed_read_and_deleted(fly, api, client):
    app = create_app(api)
    volume = client.create_volume(app, "catwalk_data", "ams", 3)
    assert volume["id"].startswith("vol_") and len(volume["id"]) == 20
    assert volume["id"][4:].isalnum() and volume["id"][4:].islower()
    assert {key: volume[key] for key in ("name", "state", "size_gb", "region", "encrypted")} == {
        "name": "catwalk_data",
        "state": "created",
        "size_gb": 3,
        "region": "ams",
        "encrypted": True,
    }
    assert volume["zone"] and volume["created_at"]
    assert volume["attached_machine_id"] is None and volume["attached_alloc_id"] is None
    default = client.create_volume(app, "catwalk_data", "", 1)  # Fly lets two volumes share a name
    assert default["region"] == fly.region and default["id"] != volume["id"]
    assert "region" not in fly.requests[-1].body

    assert [v["id"] for v in client.list_volumes(app)] == [volume["id"], default["id"]]
    assert fly.volumes(app) == client.list_volumes(app)
    assert api.get(f"/apps/{app}/volumes/{volume['id']}").json() == volume
    client.delete_volume(app, volume["id"])
    assert [v["id"] for v in client.list_volumes(app)] == [default["id"]]
    error(api.get(f"/apps/{app}/volumes/{volume['id']}"), 404, "not_found")
    error(api.delete(f"/apps/{app}/volumes/{volume['id']}"), 404, "not_found")
    client.delete_volume(app, volume["id"])  # already gone: no error
    assert client.list_volumes("cw-no-such-app") == []
    assert fly.calls[("POST", "/v1/apps/{app}/volumes")] == 2
    assert fly.calls[("GET", "/v1/apps/{app}/volumes/{volume}")] == 2
    assert fly.calls[("DELETE", "/v1/apps/{app}/volumes/{volume}")] == 3


def test_volume_names_and_sizes_are_checked(api, client):
    app = create_app(api)
    url = f"/apps/{app}/volumes"
    for name in ("Data", "my-data", "a" * 31, "", None, 7):
        answer = api.post(url, json={"name": name, "size_gb": 1})
        assert "name" in error(answer, 400, "invalid_argument"), name
    for size in (0, -1, "1", 1.5, True, None, 501):
        answer = api.post(url, json={"name": "data", "size_gb": size})
        assert "size_gb" in error(answer, 400, "invalid_argument"), size
    error(
        api.post(url, json={"name": "data", "size_gb": 1, "region": "Ams!"}),
        400,
        "invalid_argument",
    )
    error(api.post(url, json=["data"]), 400, "invalid_argument")
    assert api.get(url).json() == []
    error(api.post("/apps/cw-nope/volumes", json={"name": "data", "size_gb": 1}), 404, "not_found")
    error(api.get("/apps/cw-nope/volumes"), 404, "not_found")
    error(api.get(f"{url}/vol_0123456789abcdef"), 404, "not_found")
    with pytest.raises(FlyError) as raised:
        client.create_volume(app, "Not_Valid", "", 1)
    assert raised.value.status == 400 and not raised.value.ambiguous
    assert client.create_volume(app, "a" * 30, "", 1)["name"] == "a" * 30
    assert client.create_volume(app, "data_2", "", 1)["name"] == "data_2"


def test_a_mounted_volume_is_attached_and_the_machine_takes_its_region(fly, api, client):
    app = create_app(api)
    volume = client.create_volume(app, "data", "syd", 1)
    config = mounted(machine_config(), volume["id"])
    created = api.post(
        f"/apps/{app}/machines", json={"config": config, "region": "ams", "skip_launch": True}
    )
    assert created.status_code == 200, created.text
    machine = created.json()
    assert machine["region"] == "syd"
    assert machine["config"]["mounts"] == [{"volume": volume["id"], "path": "/data"}]
    assert fly.volumes(app)[0]["attached_machine_id"] == machine["id"]

    def refused(config: dict, fragment: str) -> None:
        answer = api.post(f"/apps/{app}/machines", json={"config": config, "skip_launch": True})
        assert fragment in error(answer, 422, "invalid_argument")

    refused(mounted(machine_config(), volume["id"]), "attached")
    spare = client.create_volume(app, "spare", "", 1)
    refused(mounted(machine_config(), spare["id"], "/"), "path")
    refused(mounted(machine_config(), spare["id"], "data"), "path")
    refused(mounted(machine_config(), spare["id"], "/data/../etc"), "path")
    refused(mounted(machine_config(), "vol_0123456789abcdef"), "not found")
    two = machine_config()
    two["mounts"] = [{"volume": spare["id"], "path": "/a"}, {"volume": volume["id"], "path": "/b"}]
    refused(two, "at most one")
    assert len(fly.machines(app)) == 1
    assert fly.volumes(app)[1]["attached_machine_id"] is None

    assert "attached" in error(
        api.delete(f"/apps/{app}/volumes/{volume['id']}"), 422, "invalid_argument"
    )
    with pytest.raises(FlyError) as raised:
        client.delete_volume(app, volume["id"])
    assert raised.value.status == 422

    # An update may keep its own volume, or move to another one and let the first go.
    url = f"/apps/{app}/machines/{machine['id']}"
    kept = api.post(url, json={"config": config, "skip_launch": True})
    assert kept.status_code == 200, kept.text
    moved = api.post(
        url, json={"config": mounted(machine_config(), spare["id"]), "skip_launch": True}
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["region"] == fly.region
    attached = {v["id"]: v["attached_machine_id"] for v in fly.volumes(app)}
    assert attached == {volume["id"]: None, spare["id"]: machine["id"]}

    assert api.delete(url).status_code == 200  # a destroyed machine lets its volume go
    assert all(v["attached_machine_id"] is None for v in client.list_volumes(app))
    client.delete_volume(app, spare["id"])
    assert [v["id"] for v in client.list_volumes(app)] == [volume["id"]]


def test_data_under_the_mount_survives_stop_start_and_update(fly, api, client, proxy):
    app = create_app(api)
    volume = client.create_volume(app, "data", "", 1)
    local = fly.volume_path(volume["id"])
    config = mounted(
        machine_config(FAKE_NOTE="/data/notes/note.txt", MOUNT="/data", OTHER="/database"),
        volume["id"],
    )
    machine = launch(api, app, config)
    env = proxy.get(f"/{app}/env").json()
    assert env["FAKE_NOTE"] == f"{local}/notes/note.txt"
    assert env["MOUNT"] == str(local)
    assert env["OTHER"] == "/database"  # only the mount path itself and what lies under it
    assert not env["CATWALK_RUNNER_ROOT"].startswith(str(local))
    assert proxy.get(f"/{app}/note").json() is None
    assert proxy.post(f"/{app}/note", content=b"kept").status_code == 200
    assert (local / "notes" / "note.txt").read_text() == "kept"

    url = f"/apps/{app}/machines/{machine['id']}"
    assert api.post(f"{url}/stop").status_code == 200
    wait(api, app, machine["id"], "stopped")
    assert api.post(f"{url}/start").status_code == 200
    wait(api, app, machine["id"], "started")
    assert proxy.get(f"/{app}/note").json() == "kept"

    updated = api.post(url, json={"config": {**config, "env": {**config["env"], "EXTRA": "new"}}})
    assert updated.status_code == 200, updated.text
    wait(api, app, machine["id"], "started")
    assert proxy.get(f"/{app}/env").json()["EXTRA"] == "new"
    assert proxy.get(f"/{app}/note").json() == "kept"
    assert len(fly.launched_pids) == 3


def test_deleting_an_app_deletes_its_volumes(fly, api, client):
    for app, delete in (
        ("cw-deleted", lambda app: client.delete_app(app)),
        ("cw-vanished", fly.delete_app_behind_the_back),
    ):
        create_app(api, app)
        volume = client.create_volume(app, "data", "", 1)
        launch(api, app, mounted(machine_config(), volume["id"]))
        assert fly.volume_path(volume["id"]).is_dir()
        delete(app)
        assert app not in fly.apps()
        assert not fly.volume_path(volume["id"]).exists()
        assert client.list_volumes(app) == []
        create_app(api, app)  # the name again: a new app, without the old one's volumes
        assert client.list_volumes(app) == []
        error(api.get(f"/apps/{app}/volumes/{volume['id']}"), 404, "not_found")


# ---- faults ------------------------------------------------------------------------------


def test_fail_next_answers_a_storm_of_429_then_the_real_thing(fly, api):
    app = create_app(api)
    fly.fail_next("GET", rf"^/v1/apps/{app}$", 429, count=3)
    answers = [api.get(f"/apps/{app}").status_code for _ in range(4)]
    assert answers == [429, 429, 429, 200]
    assert fly.calls[("GET", "/v1/apps/{app}")] == 4
    fly.fail_next("*", r"/secrets$", 500, body="flaps is having a moment")
    assert error(api.get(f"/apps/{app}/secrets"), 500, "internal") == "flaps is having a moment"


def test_an_ambiguous_create_leaves_a_machine_that_listing_finds(fly, api):
    app = create_app(api)
    fly.fail_next("POST", r"/machines$", 503, after=True)
    created = api.post(f"/apps/{app}/machines", json={"config": machine_config()})
    error(created, 503, "unavailable")
    found = api.get(f"/apps/{app}/machines", params={"metadata.catwalk_machine_key": "key-1"})
    assert len(found.json()) == 1
    wait(api, app, found.json()[0]["id"], "started")
    fly.fail_next("POST", r"/machines$", 408)
    error(
        api.post(f"/apps/{app}/machines", json={"config": machine_config()}),
        408,
        "deadline_exceeded",
    )
    assert len(fly.machines(app)) == 1


def test_an_ambiguous_volume_create_is_not_retried_and_listing_finds_it(fly, api, client):
    app = create_app(api)
    fly.fail_next("POST", r"/volumes$", 503, after=True)
    with pytest.raises(FlyError) as raised:
        client.create_volume(app, "catwalk_data", "", 1)
    assert raised.value.status == 503 and raised.value.ambiguous
    assert fly.calls[("POST", "/v1/apps/{app}/volumes")] == 1
    assert [v["name"] for v in client.list_volumes(app)] == ["catwalk_data"]  # adopt, not redo

    fly.fail_next("POST", r"/volumes$", 429)
    with pytest.raises(FlyError):
        client.create_volume(app, "catwalk_data", "", 1)
    assert fly.calls[("POST", "/v1/apps/{app}/volumes")] == 2
    assert len(fly.volumes(app)) == 1

    # Listing and deleting are idempotent: retried through a storm.
    fly.fail_next("GET", r"/volumes$", 503, count=2)
    assert len(client.list_volumes(app)) == 1
    assert fly.calls[("GET", "/v1/apps/{app}/volumes")] == 4
    volume_id = fly.volumes(app)[0]["id"]
    fly.fail_next("DELETE", r"/volumes/", 502, after=True)
    client.delete_volume(app, volume_id)  # the retry finds it gone
    assert fly.calls[("DELETE", "/v1/apps/{app}/volumes/{volume}")] == 2
    assert fly.volumes(app) == []


def test_never_start_keeps_machines_starting_and_wait_times_out(fly, api):
    app = create_app(api)
    fly.never_start(app)
    machine_id = api.post(f"/apps/{app}/machines", json={"config": machine_config()}).json()["id"]
    answer = api.get(
        f"/apps/{app}/machines/{machine_id}/wait", params={"state": "started", "timeout": 1}
    )
    assert "starting" in error(answer, 408, "deadline_exceeded")
    assert [m["state"] for m in fly.machines(app)] == ["starting"]
    pending = next(e for e in events(api, app, machine_id) if e["status"] == "pending")
    assert "never_start" in pending["request"]["reason"]
    assert fly.launched_pids == []


def test_an_app_deleted_behind_the_back_is_gone_with_its_processes(fly, api, proxy):
    app = create_app(api)
    machine = launch(api, app)
    pid = runner_pid(proxy, app)
    fly.delete_app_behind_the_back(app)
    error(api.get(f"/apps/{app}"), 404, "not_found")
    error(api.get(f"/apps/{app}/machines/{machine['id']}"), 404, "not_found")
    assert not alive(pid)
    assert proxy.get(f"/{app}/healthz").status_code == 503


# ---- the proxy ---------------------------------------------------------------------------


def test_the_proxy_forwards_method_path_query_headers_and_body(fly, api, proxy):
    app = create_app(api)
    launch(api, app)
    answer = proxy.post(
        f"/{app}/mcp/x?session=1",
        content=b'{"jsonrpc":"2.0"}',
        headers={"X-Catwalk-Bridge-Secret": "s"},
    )
    assert answer.status_code == 200
    echoed = answer.json()
    assert echoed["path"] == "/mcp/x?session=1"
    assert echoed["body"] == '{"jsonrpc":"2.0"}'
    headers = {name.lower(): value for name, value in echoed["headers"].items()}
    assert headers["x-catwalk-bridge-secret"] == "s"
    assert headers["fly-request-id"] and headers["x-forwarded-proto"] == "http"
    assert proxy.get(f"/{app}/missing").status_code == 404  # the machine's own answer
    assert fly.calls[("POST", "/proxy/{app}/{path}")] == 1


def test_the_proxy_has_nothing_to_route_to_without_an_address_or_a_machine(api, proxy):
    no_ip = create_app(api, "cw-no-ip", flycast=False)
    launch(api, no_ip)
    error(proxy.get(f"/{no_ip}/healthz"), 503, "unavailable")
    empty = create_app(api, "cw-empty")
    error(proxy.get(f"/{empty}/healthz"), 503, "unavailable")
    error(proxy.get("/cw-unknown/healthz"), 503, "unavailable")


def test_an_idle_machine_stops_and_the_proxy_starts_it_again(fly, api, proxy):
    app = create_app(api)
    machine = launch(api, app, machine_config(autostop=True))
    first_pid = runner_pid(proxy, app)
    wait(api, app, machine["id"], "stopped")  # after IDLE_STOP_SECONDS with nothing in flight
    assert not alive(first_pid)
    stop_event = next(e for e in events(api, app, machine["id"]) if e["type"] == "stop")
    assert stop_event["source"] == "proxy"

    answer = proxy.get(f"/{app}/pid")  # waits while the proxy starts the machine
    assert answer.status_code == 200
    assert answer.json() != first_pid
    start_sources = [
        e["source"] for e in events(api, app, machine["id"]) if e["status"] == "requested"
    ]
    assert start_sources == ["proxy", "user"]


def test_server_sent_events_stream_through_the_proxy_and_keep_the_machine_awake(fly, api, proxy):
    app = create_app(api)
    machine = launch(api, app, machine_config(autostop=True))
    # A proxy that buffered would give nothing before the runner is released: a read timeout.
    with proxy.stream("GET", f"/{app}/events", timeout=20) as stream:
        assert stream.headers["content-type"] == "text/event-stream"
        lines = stream.iter_lines()
        assert next(lines) == "data: one"  # arrives while the machine still holds the stream open
        time.sleep(IDLE_STOP_SECONDS * 3)
        assert [m["state"] for m in fly.machines(app)] == ["started"]  # an open stream is in flight
        assert proxy.post(f"/{app}/release").status_code == 200
        assert [line for line in lines if line] == ["data: two"]
    wait(api, app, machine["id"], "stopped")


def test_a_machine_that_never_starts_makes_the_proxy_give_up_with_503():
    with FlyStandin(runner_command=FAKE_COMMAND, unsandboxed=True, proxy_start_timeout=1) as fly:
        headers = {"Authorization": f"Bearer {fly.token}"}
        with httpx.Client(base_url=fly.api_url, headers=headers, trust_env=False) as client:
            app = create_app(client)
            fly.never_start(app)
            client.post(
                f"/apps/{app}/machines", json={"config": machine_config(), "skip_launch": True}
            )
            answer = httpx.get(f"{fly.relay_url(app)}/healthz", trust_env=False, timeout=30)
            error(answer, 503, "unavailable")
            assert [m["state"] for m in fly.machines(app)] == ["starting"]


# ---- teardown ----------------------------------------------------------------------------


def test_close_ends_every_process_thread_and_the_port_even_mid_stream():
    threads_before = set(threading.enumerate())
    fly = FlyStandin(runner_command=FAKE_COMMAND, unsandboxed=True)
    headers = {"Authorization": f"Bearer {fly.token}"}
    with httpx.Client(base_url=fly.api_url, headers=headers, trust_env=False, timeout=60) as api:
        app = create_app(api)
        for _ in range(2):
            launch(api, app, machine_config(FAKE_IGNORE_TERM="1"))
    pids = fly.launched_pids
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    with (
        httpx.Client(trust_env=False, timeout=60) as client,
        client.stream("GET", f"{fly.relay_url(app)}/events") as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines) == "data: one"
        fly.close()
        with contextlib.suppress(httpx.HTTPError):
            assert "data: two" not in list(lines)
    assert not [pid for pid in pids if alive(pid)]
    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(fly.base_url.rsplit(":", 1)[1])), timeout=5)
    fly.close()  # a second close is harmless
