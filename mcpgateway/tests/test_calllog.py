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
    )  # a deployment deleted meanwhile is skipped, not an error
    _write(records)
    assert (
        ToolCall.objects.filter(deployment=deployment, target="echo", session_id="s1").count() == 3
    )
    assert AccessToken.objects.get(pk=token.pk).last_used_at == now
    assert Deployment.objects.get(pk=deployment.pk).last_active_at == now
