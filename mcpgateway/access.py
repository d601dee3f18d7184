"""Who may call which deployment, answered from a short-lived in-process cache.

The gateway asks two questions per request: is this bearer token valid (and for which
deployment), and what state is that deployment in. Both answers are cached for at most
ACCESS_CACHE_SECONDS, so a token revoked in the database stops working on every gateway
instance within that time without any cross-instance invalidation, while the hot path makes
no query once a token and deployment are known.

A bearer token is either a Catwalk static token (`cwk_…`, bound to one deployment) or an OAuth
access token issued by django-oauth-toolkit, found the way the toolkit finds it: by the
SHA-256 checksum of the token. Which deployments an OAuth token may call (its RFC 8707
resources, its user, its scopes) is decided by the gateway against the deployment it names.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.utils import timezone
from oauth2_provider.models import get_access_token_model

from deployments.models import TOKEN_PREFIX, AccessToken, Deployment, hash_token
from deployments.runtimes.base import Endpoint, get_runtime

ACCESS_CACHE_SECONDS = 4.0
NEGATIVE_CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class TokenPrincipal:
    """A caller with a static access token of one deployment."""

    token_id: int
    deployment_id: str
    expires_at: datetime | None
    token_hash: str
    oauth_client_id: ClassVar[None] = None

    @property
    def key(self) -> str:
        return f"token:{self.token_id}"

    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()


@dataclass(frozen=True)
class OAuthPrincipal:
    """A caller with an OAuth access token that `user_id` granted to an OAuth client."""

    user_id: int | None
    oauth_client_id: int | None
    resources: frozenset[str]
    scopes: frozenset[str]
    expires_at: datetime
    token_hash: str
    token_id: ClassVar[None] = None

    @property
    def key(self) -> str:
        # A refresh rotates the access token; the client keeps its MCP sessions across it.
        return f"oauth:{self.user_id}:{self.oauth_client_id}"

    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()


Principal = TokenPrincipal | OAuthPrincipal


@dataclass(frozen=True)
class DeploymentInfo:
    id: str
    owner_id: int
    status: str
    desired_state: str
    runtime: str
    allowed_origins: frozenset[str]
    endpoint: Endpoint
    # The runtime's proxy wakes a sleeping deployment for a relayed request (Fly).
    proxy_wakes: bool = False


class _TtlCache:
    """Entries expire after their TTL; beyond MAX_ENTRIES the oldest are dropped first."""

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[float, object]] = OrderedDict()

    def get(self, key: str) -> tuple[bool, object]:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, key: str, value: object, ttl: float) -> None:
        self._entries[key] = (time.monotonic() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.MAX_ENTRIES:
            self._entries.popitem(last=False)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)


def database_work(function):
    """Run an ORM function in a worker thread with Django's connection hygiene.

    The gateway bypasses Django's request cycle, so nothing else would close a connection
    that died (a database restart) or outlived CONN_MAX_AGE.
    """

    def run(*args):
        close_old_connections()
        try:
            return function(*args)
        finally:
            close_old_connections()

    return sync_to_async(run, thread_sensitive=False)


_tokens = _TtlCache()
_deployments = _TtlCache()


async def authenticate(token: str) -> Principal | None:
    # hash_token is also how django-oauth-toolkit derives `token_checksum` (SHA-256, hex).
    if token.startswith(TOKEN_PREFIX):
        return await _principal(hash_token(token), _load_principal)
    return await _principal(hash_token(token), _load_oauth_principal)


async def recheck(principal: Principal) -> Principal | None:
    """The caller as the (at most ACCESS_CACHE_SECONDS old) database sees it now."""
    if isinstance(principal, OAuthPrincipal):
        return await _principal(principal.token_hash, _load_oauth_principal)
    return await _principal(principal.token_hash, _load_principal)


async def _principal(token_hash: str, load) -> Principal | None:
    found, principal = _tokens.get(token_hash)
    if not found:
        principal = await _single_flight(_tokens, token_hash, load)
    if principal is None or principal.is_expired():
        return None
    return principal


_loading: dict[tuple[int, str], asyncio.Future] = {}


async def _single_flight(cache: _TtlCache, key: str, load) -> object:
    """Load `key` once however many requests miss the cache at the same moment.

    A burst of new sessions, or every client of a deployment that just woke, would otherwise
    send one identical query each through the small thread pool that all tenants share.
    """
    slot = (id(cache), key)
    pending = _loading.get(slot)
    if pending is not None:
        return await asyncio.shield(pending)
    future = asyncio.get_running_loop().create_future()
    _loading[slot] = future
    try:
        value = await database_work(load)(key)
    except asyncio.CancelledError:
        future.cancel()
        raise
    except Exception as exc:
        future.set_exception(exc)
        future.exception()  # retrieved here, so an unawaited failure is not reported twice
        raise
    finally:
        _loading.pop(slot, None)
    cache.put(key, value, ACCESS_CACHE_SECONDS if value else NEGATIVE_CACHE_SECONDS)
    future.set_result(value)
    return value


def _load_principal(token_hash: str) -> TokenPrincipal | None:
    row = (
        AccessToken.objects.active()
        .filter(token_hash=token_hash)
        .values_list("pk", "deployment_id", "expires_at")
        .first()
    )
    if row is None:
        return None
    return TokenPrincipal(
        token_id=row[0], deployment_id=str(row[1]), expires_at=row[2], token_hash=token_hash
    )


def _load_oauth_principal(checksum: str) -> OAuthPrincipal | None:
    row = (
        get_access_token_model()
        .objects.filter(token_checksum=checksum, expires__gt=timezone.now())
        .values_list("user_id", "application_id", "resource", "scope", "expires")
        .first()
    )
    if row is None:
        return None
    user_id, client_id, resources, scope, expires = row
    return OAuthPrincipal(
        user_id=user_id,
        oauth_client_id=client_id,
        resources=frozenset(resources),  # the toolkit stores a list of URI strings
        scopes=frozenset(scope.split()),
        expires_at=expires,
        token_hash=checksum,
    )


async def deployment_info(deployment_id: str, *, fresh: bool = False) -> DeploymentInfo | None:
    if not fresh:
        found, info = _deployments.get(deployment_id)
        if found:
            return info
    return await _single_flight(_deployments, deployment_id, _load_deployment)


def forget_deployment(deployment_id: str) -> None:
    _deployments.drop(deployment_id)


def _load_deployment(deployment_id: str) -> DeploymentInfo | None:
    deployment = Deployment.objects.filter(pk=deployment_id).first()
    if deployment is None:
        return None
    runtime = get_runtime(deployment.runtime)
    return DeploymentInfo(
        id=str(deployment.pk),
        owner_id=deployment.owner_id,
        status=deployment.status,
        desired_state=deployment.desired_state,
        runtime=deployment.runtime,
        allowed_origins=frozenset(o.rstrip("/") for o in deployment.allowed_origins),
        endpoint=runtime.endpoint(deployment),
        proxy_wakes=runtime.proxy_wakes,
    )


async def wake(deployment_id: str, *, forget: bool = True) -> None:
    """Ask the deployment's runtime to wake it; `forget` drops the cached view of it, so the
    next look sees its status change at once."""

    def _wake() -> None:
        deployment = Deployment.objects.filter(pk=deployment_id).first()
        if deployment is not None:
            get_runtime(deployment.runtime).wake(deployment)

    await database_work(_wake)()
    if forget:
        forget_deployment(deployment_id)
