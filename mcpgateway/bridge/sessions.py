"""Client sessions and the registry that bounds them."""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .channels import StreamChannel

if TYPE_CHECKING:
    from .upstream import Call, Upstream


class Session:
    """One client session: bound to the principal that created it and to one child."""

    __slots__ = (
        "calls",
        "closed",
        "id",
        "last_seen",
        "legacy",
        "principal",
        "stream",
        "upstream",
        "version",
    )

    def __init__(
        self, principal: str, version: str, upstream: Upstream, *, legacy: bool = False
    ) -> None:
        # 256 bits from the OS CSPRNG, URL-safe base64: visible ASCII as the spec asks.
        self.id = secrets.token_urlsafe(32)
        self.principal = principal
        self.version = version
        self.upstream = upstream
        self.legacy = legacy
        self.calls: dict[Any, Call] = {}
        self.stream = StreamChannel("0")
        self.last_seen = time.monotonic()
        self.closed = False

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    @property
    def busy(self) -> bool:
        """A session with a call in flight or a client listening is never idle."""
        return bool(self.calls) or self.stream.connected


class SessionRegistry:
    """Sessions by id, least recently used first."""

    def __init__(self) -> None:
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        # A snapshot: callers end sessions while iterating.
        return iter(list(self._sessions.values()))

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session

    def lookup(self, session_id: str, principal: str, *, legacy: bool = False) -> Session | None:
        """The live session with this id, if the principal owns it (else None, like unknown)."""
        session = self._sessions.get(session_id)
        if session is None or session.principal != principal or session.legacy != legacy:
            return None
        session.touch()
        self._sessions.move_to_end(session_id)
        return session

    def remove(self, session: Session) -> bool:
        """Forget the session; False if it was already gone."""
        return self._sessions.pop(session.id, None) is not None

    def least_recently_used(self) -> Session | None:
        for session in self._sessions.values():
            return session
        return None

    def idle_since(self, cutoff: float) -> list[Session]:
        """Sessions not used since the monotonic time `cutoff` (busy ones count as used)."""
        idle = []
        for session in self._sessions.values():
            if session.busy:
                session.touch()
            elif session.last_seen < cutoff:
                idle.append(session)
        return idle
