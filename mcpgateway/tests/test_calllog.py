"""The tool-call log: what a request body and its answer tell, and how batches are written."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone

from catwalk.testing import make_deployment, make_token, make_user
from deployments.models import AccessToken, Deployment, ToolCall
from mcpgateway.calllog import CallRecord, SseAnswerScanner, _write, error_codes_in, requests_in


def test_requests_name_their_target_and_skip_notifications():
    body = json.dumps(
        [
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
             "params": {"name": "echo", "arguments": {"secret": "x"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": "r", "method": "resources/read", "params": {"uri": "file:///a"}},
        ]
    ).encode()  # fmt: skip
    assert requests_in(body) == [(1, "tools/call", "echo"), ("r", "resources/read", "file:///a")]
    assert requests_in(b"not json") == []


def test_answers_give_error_codes():
    answers = error_codes_in(
        b'[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":2,"error":{"code":-32601}}]'
    )
    assert answers == {1: None, 2: -32601}


def test_the_sse_scanner_finds_answers_split_across_chunks():
    scanner = SseAnswerScanner({7})
    scanner.feed(b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n')
    scanner.feed(b'data: {"jsonrpc":"2.0","id":7,"err')
    scanner.feed(b'or":{"code":-32000,"message":"x"}}\n\n')
    assert scanner.answers == {7: -32000}


@pytest.mark.django_db
def test_a_batch_is_written_with_activity_timestamps():
    deployment = make_deployment(make_user())
    token, _ = make_token(deployment)
    now = timezone.now()
    records = [
        CallRecord(str(deployment.pk), token.pk, "s1", "tools/call", "echo", n, now, 1.5, "ok")
        for n in range(3)
    ]
    records.append(
        CallRecord("00000000-0000-0000-0000-000000000000", None, "", "ping", "", 9, now)
    )  # a deployment deleted meanwhile loses its own row only
    records.append(
        CallRecord(str(deployment.pk), None, "s\x00", "tools/call", "x", 10, now, error_code=2**40)
    )  # out-of-range codes and NUL characters never reach the database
    _write(records, {str(deployment.pk): now}, {token.pk: now})
    assert (
        ToolCall.objects.filter(deployment=deployment, target="echo", session_id="s1").count() == 3
    )
    assert AccessToken.objects.get(pk=token.pk).last_used_at == now
    assert Deployment.objects.get(pk=deployment.pk).last_active_at == now
    cleaned = ToolCall.objects.get(deployment=deployment, target="x")
    assert (cleaned.session_id, cleaned.error_code) == ("s", None)
    assert ToolCall.objects.count() == 4  # the deleted deployment's row alone was dropped


def test_a_huge_answer_is_read_by_pattern_in_linear_time():
    body = (
        b'{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"'
        + b"x" * (8 * 2**20)
        + b'"}]}}'
    )
    assert error_codes_in(body) == {42: None}
    scanner = SseAnswerScanner({42})
    scanner.feed(b"event: message\ndata: ")
    for start in range(0, len(body), 65536):
        scanner.feed(body[start : start + 65536])
    scanner.feed(b"\n\n")
    assert scanner.answers == {42: None}


def test_deeply_nested_json_is_no_crash():
    assert requests_in(b"[" * 50_000) == []
    assert error_codes_in(b"[" * 50_000) == {}


def test_error_codes_outside_32_bits_are_dropped():
    assert error_codes_in(b'{"jsonrpc":"2.0","id":1,"error":{"code":1099511627776}}') == {1: None}
    assert error_codes_in(b'{"jsonrpc":"2.0","id":1,"error":{"code":true}}') == {1: None}
