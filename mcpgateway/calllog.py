"""The tool-call log, written off the hot path.

The gateway appends one small record per JSON-RPC request to an in-process buffer; a background
task writes the buffer with one bulk insert about once a second, and bumps the tokens'
`last_used_at` and the deployments' `last_active_at` in the same pass. Records hold the method
and the tool, resource or prompt name, never arguments or results.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime

from asgiref.sync import sync_to_async
from django.db import connection, transaction

from deployments.models import AccessToken, CallOutcome, Deployment, ToolCall

logger = logging.getLogger(__name__)
FLUSH_SECONDS = 1.0
MAX_BUFFER = 50_000
TARGET_KEYS = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "resources/subscribe": "uri",
    "resources/unsubscribe": "uri",
}


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


def requests_in(body: bytes) -> list[tuple[object, str, str]]:
    """(id, method, target) of each JSON-RPC request in a POST body; notifications are skipped."""
    try:
        message = json.loads(body)
    except ValueError:
        return []
    messages = message if isinstance(message, list) else [message]
    found = []
    for item in messages:
        if (
            not isinstance(item, dict)
            or "id" not in item
            or not isinstance(item.get("method"), str)
        ):
            continue
        method = item["method"][:100]
        params = item.get("params")
        target = ""
        key = TARGET_KEYS.get(method)
        if key and isinstance(params, dict) and isinstance(params.get(key), str):
            target = params[key][:255]
        elif method == "completion/complete" and isinstance(params, dict):
            ref = params.get("ref")
            if isinstance(ref, dict):
                target = str(ref.get("name") or ref.get("uri") or "")[:255]
        found.append((item["id"], method, target))
    return found


def error_codes_in(payload: bytes) -> dict[object, int | None]:
    """Map response id → error code (None for a result) for JSON-RPC answers in a JSON body."""
    try:
        message = json.loads(payload)
    except ValueError:
        return {}
    messages = message if isinstance(message, list) else [message]
    answers: dict[object, int | None] = {}
    for item in messages:
        if isinstance(item, dict) and "id" in item and ("result" in item or "error" in item):
            error = item.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            answers[_hashable(item["id"])] = code if isinstance(code, int) else None
    return answers


def _hashable(value: object) -> object:
    return value if isinstance(value, (str, int, float, type(None))) else repr(value)


class SseAnswerScanner:
    """Finds the answers to given request ids in an SSE byte stream, chunk by chunk."""

    def __init__(self, wanted: set[object]) -> None:
        self.wanted = {_hashable(w) for w in wanted}
        self.answers: dict[object, int | None] = {}
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        if not self.wanted:
            return
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        for line in lines:
            if line.startswith(b"data:") and (b'"result"' in line or b'"error"' in line):
                for answer_id, code in error_codes_in(line[5:].strip()).items():
                    if answer_id in self.wanted:
                        self.answers[answer_id] = code
                        self.wanted.discard(answer_id)


class CallLog:
    def __init__(self) -> None:
        self._buffer: list[CallRecord] = []
        self._task: asyncio.Task | None = None

    def add(self, records: list[CallRecord]) -> None:
        if len(self._buffer) < MAX_BUFFER:
            self._buffer.extend(records)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._buffer:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()

    async def flush(self) -> None:
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        try:
            await sync_to_async(_write, thread_sensitive=False)(batch)
        except Exception:
            logger.exception("could not write %d tool-call records", len(batch))


def _write(batch: list[CallRecord]) -> None:
    """One multi-row insert for the batch (through the cursor: model instances would cost more
    than the relay itself at thousands of calls a second), then the activity timestamps."""
    last_used: dict[int, datetime] = {}
    last_active: dict[str, datetime] = {}
    for record in batch:
        if record.token_id is not None:
            last_used[record.token_id] = max(
                record.started_at, last_used.get(record.token_id, record.started_at)
            )
        last_active[record.deployment_id] = max(
            record.started_at, last_active.get(record.deployment_id, record.started_at)
        )
    table = ToolCall._meta.db_table
    columns = [
        "deployment_id", "token_id", "session_id", "method", "target",
        "started_at", "duration_ms", "outcome", "error_code",
    ]  # fmt: skip
    # Identifiers come from model metadata; values are bound parameters.
    sql = (
        f"INSERT INTO {connection.ops.quote_name(table)} "  # noqa: S608
        f"({', '.join(connection.ops.quote_name(c) for c in columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))})"
    )
    deployment_column = Deployment._meta.pk
    with transaction.atomic():
        existing = {
            str(pk)
            for pk in Deployment.objects.filter(pk__in=last_active).values_list("pk", flat=True)
        }
        rows = [
            (
                deployment_column.get_db_prep_value(r.deployment_id, connection),
                r.token_id,
                r.session_id[:128],
                r.method,
                r.target,
                connection.ops.adapt_datetimefield_value(r.started_at),
                r.duration_ms,
                r.outcome,
                r.error_code,
            )
            for r in batch
            if r.deployment_id in existing
        ]
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)
        for token_id, when in last_used.items():
            AccessToken.objects.filter(pk=token_id).update(last_used_at=when)
        for deployment_id, when in last_active.items():
            Deployment.objects.filter(pk=deployment_id).update(last_active_at=when)
