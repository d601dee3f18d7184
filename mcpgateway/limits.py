"""The gateway's tenancy limits: requests per minute per access token, open sessions per user.

Requests are counted in fixed one-minute windows per token (RATE_LIMIT_REQUESTS_PER_MINUTE); an
OAuth client counts per user and client, so a refreshed token does not start a new window.
Sessions are the MCP sessions a user's clients hold across all of their deployments
(QUOTA_SESSIONS_PER_USER): one counts from the answer that gave it an `Mcp-Session-Id` until it
is deleted, the bridge forgets it (404), or it goes unused for the session idle timeout. Over a
limit the gateway answers 429 with `Retry-After` and a JSON-RPC error (code RATE_LIMITED).

With Redis (REDIS_URL) the counts are shared by every gateway process, sent in batches (see
`_RedisStore`); without it each process counts on its own. If Redis fails, requests are admitted and
the failure is logged: a quota must not take the product down with it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from django.conf import settings

logger = logging.getLogger("catwalk.gateway")

WINDOW_SECONDS = 60
# How long an initialize holds its session slot before the answer says whether it got one.
RESERVATION_SECONDS = 30
# JSON-RPC leaves -32000..-32099 to implementations; 429's digits make this one memorable.
RATE_LIMITED = -32029
KEY_PREFIX = "catwalk:limits"


@dataclass(frozen=True, slots=True)
class OverLimit:
    message: str
    retry_after: int


class Limits:
    def __init__(
        self,
        *,
        requests_per_minute: int | None = None,
        sessions_per_user: int | None = None,
        session_ttl: float | None = None,
        redis_url: str | None = None,
    ) -> None:
        self.per_minute = (
            settings.RATE_LIMIT_REQUESTS_PER_MINUTE
            if requests_per_minute is None
            else requests_per_minute
        )
        self.sessions_per_user = (
            settings.QUOTA_SESSIONS_PER_USER if sessions_per_user is None else sessions_per_user
        )
        self.session_ttl = (
            settings.LOCAL_SESSION_IDLE_TIMEOUT_SECONDS if session_ttl is None else session_ttl
        )
        url = settings.REDIS_URL if redis_url is None else redis_url
        self._store: _Store = _RedisStore(url) if url else _MemoryStore()

    @property
    def active(self) -> bool:
        return bool(self.per_minute or self.sessions_per_user)

    async def admit(
        self,
        caller: int | str,
        owner_id: int,
        session: str | None,
        opening: bool,
        reservation: str | None = None,
    ) -> OverLimit | None:
        """Count this request; None when it may pass.

        `caller` names whose requests are counted together (the principal's key). `session`
        is "<deployment>:<session id>" of a request within a session (which keeps that
        session alive); `opening` marks an initialize, which takes a session slot at once,
        held under `reservation` until `opened` (the answer issued a session id) or `closed`
        (it did not), so concurrent initializes cannot all slip under the quota.
        """
        if not self.active:
            return None
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        try:
            count, open_sessions, oldest_expiry = await self._store.admit(
                token=f"{caller}:{window}" if self.per_minute else None,
                owner=owner_id if self.sessions_per_user else None,
                session=session,
                opening=opening,
                now=now,
                expires=now + self.session_ttl,
                reservation=reservation or f"reserved:{time.monotonic_ns()}",
                reserved_until=now + RESERVATION_SECONDS,
                quota=self.sessions_per_user,
            )
        except Exception:
            logger.warning("limits unavailable; admitting the request", exc_info=True)
            return None
        if self.per_minute and count > self.per_minute:
            return OverLimit(
                f"Too many requests: this token may make {self.per_minute} per minute.",
                math.ceil((window + 1) * WINDOW_SECONDS - now),
            )
        if opening and self.sessions_per_user and open_sessions > self.sessions_per_user:
            return OverLimit(
                f"Too many open sessions: your account may hold {self.sessions_per_user} at once. "
                "Close a session (HTTP DELETE) or wait for an idle one to expire.",
                max(1, math.ceil((oldest_expiry or now + self.session_ttl) - now)),
            )
        return None

    async def opened(self, owner_id: int, session: str, reservation: str | None = None) -> None:
        """The answer to an initialize issued `session`: it replaces the slot's reservation."""
        if self.sessions_per_user:
            expires = time.time() + self.session_ttl
            await self._quietly(self._store.opened(owner_id, session, expires, reservation))

    async def closed(self, owner_id: int, session: str) -> None:
        if self.sessions_per_user:
            await self._quietly(self._store.closed(owner_id, session))

    async def close(self) -> None:
        await self._store.close()

    @staticmethod
    async def _quietly(operation) -> None:
        try:
            await operation
        except Exception:
            logger.warning("limits unavailable; session not recorded", exc_info=True)


class _Store:
    def __init__(self) -> None:
        self._counted: dict[str, int] = {}  # token window -> requests counted in this process
        self._window = ""

    def _count(self, token: str) -> int:
        """Count a request of `token` ("<token id>:<minute>") here; this process's count."""
        window = token.rpartition(":")[2]
        if window != self._window:  # a new minute: earlier windows are over
            self._window = window
            self._minute_began()
        self._counted[token] = self._counted.get(token, 0) + 1
        return self._counted[token]

    def _minute_began(self) -> None:
        self._counted.clear()

    async def admit(
        self, *, token, owner, session, opening, now, expires, reservation, reserved_until, quota
    ):
        """(requests in this token's window, open sessions, earliest session expiry).

        When opening, the reservation is added first and counted among the open sessions, and
        removed again when that count is over the quota.
        """
        raise NotImplementedError

    async def opened(self, owner: int, session: str, expires: float, reservation) -> None:
        raise NotImplementedError

    async def closed(self, owner: int, session: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class _MemoryStore(_Store):
    """This process's own counts, for a Catwalk without Redis."""

    def __init__(self) -> None:
        super().__init__()
        self._sessions: dict[int, dict[str, float]] = {}

    async def admit(
        self, *, token, owner, session, opening, now, expires, reservation, reserved_until, quota
    ):
        count = self._count(token) if token is not None else 0
        open_sessions, oldest = 0, None
        if owner is not None:
            sessions = self._sessions.get(owner, {})
            if session is not None and session in sessions:
                sessions[session] = expires
            if opening:
                for key in [k for k, expiry in sessions.items() if expiry <= now]:
                    del sessions[key]
                oldest = min(sessions.values(), default=None)
                sessions[reservation] = reserved_until
                self._sessions[owner] = sessions
                open_sessions = len(sessions)
                if open_sessions > quota:
                    del sessions[reservation]
        return count, open_sessions, oldest

    async def opened(self, owner: int, session: str, expires: float, reservation) -> None:
        sessions = self._sessions.setdefault(owner, {})
        sessions.pop(reservation, None)
        sessions[session] = expires

    async def closed(self, owner: int, session: str) -> None:
        self._sessions.get(owner, {}).pop(session, None)


class _RedisStore(_Store):
    """Counts in Redis, shared by every gateway process.

    A round trip per request cost as much CPU as the rest of the gateway, so requests are
    counted here first and sent to Redis in one pipeline per FLUSH_SECONDS (INCRBY per token
    window, session refreshes); each flush brings back every token's total across all
    processes. A process therefore decides on everyone's count as of its last flush plus its
    own since: exact for one process, at most a flush interval's worth of requests generous
    across several. Opening a session, which is rare, asks Redis directly.
    """

    FLUSH_SECONDS = 0.1

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        super().__init__()  # _counted: requests not yet sent to Redis
        self._redis = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._totals: dict[str, int] = {}  # token window -> all processes' count, last flush
        self._touched: dict[int, dict[str, float]] = {}  # owner -> session -> new expiry
        self._flusher: asyncio.Task | None = None

    @staticmethod
    def _sessions_key(owner: int) -> str:
        return f"{KEY_PREFIX}:sessions:{owner}"

    async def admit(
        self, *, token, owner, session, opening, now, expires, reservation, reserved_until, quota
    ):
        count = self._totals.get(token, 0) + self._count(token) if token is not None else 0
        if owner is not None and session is not None:
            self._touched.setdefault(owner, {})[session] = expires
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())
        open_sessions, oldest = 0, None
        if owner is not None and opening:
            key = self._sessions_key(owner)
            pipe = self._redis.pipeline(transaction=True)  # one step for every process
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zrange(key, 0, 0, withscores=True)
            pipe.zadd(key, {reservation: reserved_until})
            pipe.zcard(key)
            pipe.expireat(key, math.ceil(reserved_until), gt=True)
            pipe.expireat(key, math.ceil(reserved_until), nx=True)
            _, first, _, open_sessions, _, _ = await pipe.execute()
            oldest = first[0][1] if first else None
            if open_sessions > quota:
                await self._redis.zrem(key, reservation)
        return count, open_sessions, oldest

    def _minute_began(self) -> None:
        super()._minute_began()
        self._totals.clear()

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.FLUSH_SECONDS)
        try:
            await self.flush()
        except Exception:
            logger.warning("limits: Redis flush failed; counts since the last one dropped",
                           exc_info=True)  # fmt: skip

    async def flush(self) -> None:
        """Send what this process counted to Redis and learn everyone's totals."""
        pending, self._counted = self._counted, {}
        touched, self._touched = self._touched, {}
        if not pending and not touched:
            return
        pipe = self._redis.pipeline(transaction=False)
        for token, increment in pending.items():
            key = f"{KEY_PREFIX}:rate:{token}"
            pipe.incrby(key, increment)
            pipe.expire(key, 2 * WINDOW_SECONDS)
        for owner, sessions in touched.items():
            key = self._sessions_key(owner)
            pipe.zadd(key, sessions, xx=True)
            pipe.expireat(key, math.ceil(max(sessions.values())), gt=True)
        results = await pipe.execute()
        for index, token in enumerate(pending):  # the token results come first
            if token.rpartition(":")[2] == self._window:
                self._totals[token] = results[2 * index]

    async def opened(self, owner: int, session: str, expires: float, reservation) -> None:
        key = self._sessions_key(owner)
        pipe = self._redis.pipeline(transaction=True)
        if reservation:
            pipe.zrem(key, reservation)
        pipe.zadd(key, {session: expires})
        pipe.expireat(key, math.ceil(expires), gt=True)
        pipe.expireat(key, math.ceil(expires), nx=True)
        await pipe.execute()

    async def closed(self, owner: int, session: str) -> None:
        await self._redis.zrem(self._sessions_key(owner), session)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        try:
            await self.flush()
        except Exception:
            logger.warning("limits: last flush to Redis failed", exc_info=True)
        finally:
            await self._redis.aclose()
