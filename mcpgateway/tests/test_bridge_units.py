"""The bridge's small pure parts: configuration, version negotiation, envelopes, logs."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpgateway.bridge.app import BridgeApp
from mcpgateway.bridge.channels import Exchange
from mcpgateway.bridge.child import child_environment
from mcpgateway.bridge.config import Listen, parse_args, parse_listen
from mcpgateway.bridge.protocol import SUPPORTED_VERSIONS, classify, negotiate_version
from mcpgateway.bridge.stderr_log import StderrLog


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("unix:/run/catwalk/b.sock", Listen(unix_path="/run/catwalk/b.sock")),
        ("tcp:127.0.0.1:8080", Listen(host="127.0.0.1", port=8080)),
        ("tcp:[::1]:0", Listen(host="::1", port=0)),
    ],
)
def test_listen_addresses_parse(value: str, expected: Listen):
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["udp:1.2.3.4:5", "tcp:host", "tcp::80", "tcp:h:99999", "unix:"])
def test_bad_listen_addresses_are_rejected(value: str):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_listen(value)


def test_command_line_defaults_and_secret_from_environment():
    config = parse_args(
        ["--listen", "tcp:127.0.0.1:0", "--", "npx", "-y", "pkg", "--flag"],
        {"CATWALK_BRIDGE_SECRET": "k"},
    )
    assert config.command == ["npx", "-y", "pkg", "--flag"]
    assert (config.mode, config.request_timeout, config.max_body_bytes) == (
        "shared",
        300.0,
        4 << 20,
    )
    assert config.session_idle_timeout == 1800.0
    assert config.secret == "k"


def test_child_environment_drops_only_bridge_settings():
    env = {
        "PATH": "/bin",
        "CATWALK_BRIDGE_SECRET": "s",
        "CATWALK_BRIDGE_X": "1",
        "CATWALK_OTHER": "2",
    }
    assert child_environment(env) == {"PATH": "/bin", "CATWALK_OTHER": "2"}


@pytest.mark.parametrize(
    ("requested", "child", "expected"),
    [
        ("2025-06-18", "2025-11-25", "2025-06-18"),
        ("2025-11-25", "2025-03-26", "2025-03-26"),
        ("2030-01-01", "2025-06-18", "2025-06-18"),
        (None, "2025-06-18", "2025-06-18"),
        ("2025-03-26", "some-future-version", "2025-03-26"),
    ],
)
def test_version_negotiation_follows_the_child(requested, child, expected):
    assert negotiate_version(requested, child) == expected


@given(requested=st.one_of(st.none(), st.text(), st.sampled_from(SUPPORTED_VERSIONS)))
def test_negotiated_version_is_always_one_the_bridge_supports(requested):
    for child in SUPPORTED_VERSIONS:
        assert negotiate_version(requested, child) in SUPPORTED_VERSIONS


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, "request"),
        ({"jsonrpc": "2.0", "id": "a", "method": "x", "params": {}}, "request"),
        ({"jsonrpc": "2.0", "method": "notifications/initialized"}, "notification"),
        ({"jsonrpc": "2.0", "id": 1, "result": {}}, "response"),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "m"}}, "response"),
        ({"jsonrpc": "2.0", "id": True, "method": "x"}, None),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "x"}, None),
        ({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}, None),
        ({"jsonrpc": "2.0", "method": ""}, None),
        ({"id": 1, "method": "x"}, None),
        ([], None),
    ],
)
def test_envelope_classification(message, kind):
    assert classify(message) == kind


def test_stderr_log_keeps_a_tail_and_rotates_the_file(tmp_path: Path):
    path = tmp_path / "child.log"
    log = StderrLog(path, max_file_bytes=4096, memory_lines=10)
    for index in range(200):
        log.write(f"line {index:04d} " + "x" * 40)
    log.close()
    assert log.tail(2) == ["line 0198 " + "x" * 40, "line 0199 " + "x" * 40]
    assert len(log.tail(100)) == 10
    rotated = path.with_name("child.log.1")
    assert rotated.exists()
    assert path.stat().st_size + rotated.stat().st_size <= 4096 + 100
    assert path.read_text().splitlines()[-1].startswith("line 0199")


def test_stderr_log_dash_means_the_bridges_own_stderr():
    config = parse_args(["--listen", "tcp:127.0.0.1:0", "--stderr-log", "-", "--", "x"], {})
    default = parse_args(["--listen", "tcp:127.0.0.1:0", "--", "x"], {})

    assert (config.stderr_log, config.stderr_echo) == (None, True)
    assert (default.stderr_log, default.stderr_echo) == (None, False)


def test_stderr_log_echoes_each_line_as_it_comes(tmp_path: Path):
    echo = io.BytesIO()
    log = StderrLog(tmp_path / "child.log", echo=echo)

    log.write("first line\n")
    log.write("second line, café")

    assert echo.getvalue() == "first line\nsecond line, café\n".encode()
    assert log.tail(2) == ["first line", "second line, café"]
    assert (tmp_path / "child.log").read_bytes() == echo.getvalue()


def test_a_batch_whose_answers_all_arrive_before_the_reader_gets_them_all():
    """Both finals are queued before the POST's reader looks: the body must hold both."""

    async def scenario() -> list[dict]:
        exchange = Exchange()
        exchange.requests = 2
        exchange.put('{"jsonrpc":"2.0","id":1,"result":{}}', True)
        exchange.put('{"jsonrpc":"2.0","id":2,"result":{}}', True)
        sent: list[dict] = []

        async def send(message) -> None:
            sent.append(message)

        async def receive() -> dict:
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        await BridgeApp._respond(None, exchange, None, True, receive, send)  # type: ignore[arg-type]
        return sent

    sent = asyncio.run(scenario())
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert [item["id"] for item in json.loads(body)] == [1, 2]
