"""The tool-call log, written off the hot path.

The gateway appends one small record per JSON-RPC request to an in-process buffer; a background
task writes the buffer with one multi-row insert about once a second, and moves the tokens'
`last_used_at` and the deployments' `last_active_at` forward in the same pass (every relayed
request counts as activity, streams and notifications included). Records hold the method and
the tool, resource or prompt name, never arguments or results; a call made with an OAuth token
names its OAuth client (the token itself rotates on every refresh).

Bodies and answers can be megabytes, and everything here runs on the gateway's event loop, so
only small payloads are parsed; a large one is read for its id, method, name and error code by
pattern from its first and last few kilobytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime

from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from oauth2_provider.models import get_application_model

from deployments.models import AccessToken, CallOutcome, Deployment, ToolCall
from mcpgateway.access import database_work

logger = logging.getLogger(__name__)
FLUSH_SECONDS = 1.0
MAX_BUFFER = 50_000
PARSE_LIMIT = 64 * 1024
PEEK = 4096
INT32 = range(-(2**31), 2**31)
TARGET_KEYS = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "resources/subscribe": "uri",
    "resources/unsubscribe": "uri",
}
_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,200}")')
_METHOD = re.compile(rb'"method"\s*:\s*"([^"\\]{1,100})"')
_NAME = re.compile(rb'"(?:name|uri)"\s*:\s*"([^"\\]{1,255})"')
_ERROR_CODE = re.compile(rb'"error"\s*:\s*\{[^{}]*?"code"\s*:\s*(-?\d{1,10})')


@dataclass
class CallRecord:
    deployment_id: str
    token_id: int | None
    session_id: str
    method: str
    target: str
    request_id: object
    started_at: datetime
    duration_ms: float = 0.0
    outcome: str = CallOutcome.OK
    error_code: int | None = None
    oauth_client_id: int | None = None


def _loads(payload: bytes) -> object | None:
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


def _clean(text: str, limit: int) -> str:
    return text.replace("\x00", "")[:limit]


def _error_code(value: object) -> int | None:
    return value if type(value) is int and value in INT32 else None


def _hashable(value: object) -> object:
    return value if isinstance(value, (str, int, float, type(None))) else repr(value)


def _peeked_id(match: re.Match[bytes] | None) -> object:
    if match is None:
        return None
    return _loads(match.group(1))


def requests_in(body: bytes) -> list[tuple[object, str, str]]:
    """(id, method, target) of each JSON-RPC request in a POST body; notifications are skipped."""
    if len(body) > PARSE_LIMIT:
        head = body[:PEEK]
        method, request_id = _METHOD.search(head), _ID.search(head)
        if method is None or request_id is None:
            return []
        name = _NAME.search(head)
        target = name.group(1).decode("utf-8", "replace") if name else ""
        return [
            (_peeked_id(request_id), _clean(method.group(1).decode("utf-8", "replace"), 100),
             _clean(target, 255))
        ]  # fmt: skip
    message = _loads(body)
    messages = message if isinstance(message, list) else [message]
    found = []
    for item in messages:
        if (
            not isinstance(item, dict)
            or "id" not in item
            or not isinstance(item.get("method"), str)
        ):
            continue
        params = item.get("params")
        target = ""
        key = TARGET_KEYS.get(item["method"])
        if key and isinstance(params, dict) and isinstance(params.get(key), str):
            target = params[key]
        elif item["method"] == "completion/complete" and isinstance(params, dict):
            ref = params.get("ref")
            if isinstance(ref, dict):
                target = str(ref.get("name") or ref.get("uri") or "")
        found.append((item["id"], _clean(item["method"], 100), _clean(target, 255)))
    return found


def error_codes_in(payload: bytes) -> dict[object, int | None]:
    """Map response id → error code (None for a result) for JSON-RPC answers in a JSON body."""
    if len(payload) > PARSE_LIMIT:
        return _answer_by_pattern(payload[:PEEK], payload[-PEEK:])
    message = _loads(payload)
    messages = message if isinstance(message, list) else [message]
    answers: dict[object, int | None] = {}
    for item in messages:
        if isinstance(item, dict) and "id" in item and ("result" in item or "error" in item):
            error = item.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            answers[_hashable(item["id"])] = _error_code(code)
    return answers


def _answer_by_pattern(head: bytes, tail: bytes) -> dict[object, int | None]:
    """A big answer is a big result: its id opens it (or closes it), and an error is small."""
    request_id = _ID.search(head) or _ID.search(tail)
    if request_id is None:
        return {}
    code = _ERROR_CODE.search(head)
    return {_hashable(_peeked_id(request_id)): _error_code(int(code.group(1))) if code else None}


class SseAnswerScanner:
    """Finds the answers to given request ids in an SSE byte stream, chunk by chunk.

    A line is kept whole up to PARSE_LIMIT; beyond that only its first and last PEEK bytes, so
    a long stream costs time linear in its length.
    """

    def __init__(self, wanted: set[object]) -> None:
        self.wanted = {_hashable(w) for w in wanted}
        self.answers: dict[object, int | None] = {}
        self._pieces: list[bytes] = []
        self._size = 0
        self._head = self._tail = b""

    def feed(self, chunk: bytes) -> None:
        if not self.wanted:
            return
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            self._append(chunk[start:end])
            self._finish_line()
            start = end + 1
        if start < len(chunk):
            self._append(chunk[start:])

    def _append(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._size <= PARSE_LIMIT:
            self._pieces.append(piece)
            return
        if self._pieces:  # the line just outgrew the limit: keep its head, then a sliding tail
            piece = b"".join([*self._pieces, piece])
            self._pieces = []
            self._head = piece[:PEEK]
        self._head = self._head or piece[:PEEK]
        self._tail = (self._tail + piece[-PEEK:])[-PEEK:]

    def _finish_line(self) -> None:
        big = self._size > PARSE_LIMIT
        line = self._head if big else b"".join(self._pieces)
        tail = self._tail
        self._pieces, self._size, self._head, self._tail = [], 0, b"", b""
        if not line.startswith(b"data:"):
            return
        if big:
            found = _answer_by_pattern(line, tail)
        elif b'"result"' in line or b'"error"' in line:
            found = error_codes_in(line[5:].strip())
        else:
            return
        for answer_id, code in found.items():
            if answer_id in self.wanted:
                self.answers[answer_id] = code
                self.wanted.discard(answer_id)


class CallLog:
    def __init__(self) -> None:
        self._buffer: list[CallRecord] = []
        self._active: dict[str, datetime] = {}
        self._used: dict[int, datetime] = {}
        self._task: asyncio.Task | None = None

    def add(self, records: list[CallRecord]) -> None:
        if len(self._buffer) < MAX_BUFFER:
            self._buffer.extend(records)
        self._schedule()

    def touch(self, deployment_id: str, token_id: int | None) -> None:
        """Note activity on a deployment (and its token) without a call record."""
        now = timezone.now()
        self._active[deployment_id] = now
        if token_id is not None:
            self._used[token_id] = now
        self._schedule()

    def _schedule(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._buffer or self._active:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()

    async def flush(self) -> None:
        batch, self._buffer = self._buffer, []
        active, self._active = self._active, {}
        used, self._used = self._used, {}
        if not (batch or active):
            return
        try:
            await database_work(_write)(batch, active, used)
        except Exception:
            logger.exception("could not write %d tool-call records", len(batch))

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self.flush()


def _write(batch: list[CallRecord], active: dict[str, datetime], used: dict[int, datetime]) -> None:
    _insert(batch)
    _move_forward(active, used)


_COLUMNS = (
    "deployment_id", "token_id", "session_id", "method", "target",
    "started_at", "duration_ms", "outcome", "error_code", "oauth_client_id",
)  # fmt: skip


def _insert(batch: list[CallRecord]) -> None:
    """One multi-row insert (model instances would cost more than the relay itself at
    thousands of calls a second). Rows of deleted deployments are left out, and OAuth clients
    deleted since the call are forgotten (as their foreign key would do); if the batch still
    fails (a deployment deleted in the meantime), row by row, so a bad row loses only itself."""
    if not batch:
        return
    quote = connection.ops.quote_name
    # Identifiers come from model metadata; values are bound parameters.
    sql = (
        f"INSERT INTO {quote(ToolCall._meta.db_table)} "  # noqa: S608
        f"({', '.join(quote(c) for c in _COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))})"
    )
    pk = Deployment._meta.pk
    existing = {
        str(found)
        for found in Deployment.objects.filter(pk__in={r.deployment_id for r in batch}).values_list(
            "pk", flat=True
        )
    }
    wanted_clients = {r.oauth_client_id for r in batch if r.oauth_client_id is not None}
    clients = (
        set(
            get_application_model()
            .objects.filter(pk__in=wanted_clients)
            .values_list("pk", flat=True)
        )
        if wanted_clients
        else set()
    )
    rows = [
        (
            pk.get_db_prep_value(r.deployment_id, connection),
            r.token_id,
            _clean(r.session_id, 128),
            r.method,
            r.target,
            connection.ops.adapt_datetimefield_value(r.started_at),
            r.duration_ms,
            r.outcome,
            _error_code(r.error_code),
            r.oauth_client_id if r.oauth_client_id in clients else None,
        )
        for r in batch
        if r.deployment_id in existing
    ]
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(sql, rows)
        return
    except DatabaseError:
        logger.warning("tool-call batch refused; writing its %d rows one by one", len(rows))
    for row in rows:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(sql, row)
        except DatabaseError as exc:
            logger.warning("dropped a tool-call record: %s", exc)


def _move_forward(active: dict[str, datetime], used: dict[int, datetime]) -> None:
    """Activity timestamps only ever move forward (several gateways write them), in a fixed
    order so that concurrent writers cannot deadlock."""
    for deployment_id in sorted(active):
        when = active[deployment_id]
        Deployment.objects.filter(
            Q(last_active_at__isnull=True) | Q(last_active_at__lt=when), pk=deployment_id
        ).update(last_active_at=when)
    for token_id in sorted(used):
        when = used[token_id]
        AccessToken.objects.filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=when), pk=token_id
        ).update(last_used_at=when)
