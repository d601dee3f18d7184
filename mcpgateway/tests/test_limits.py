"""The gateway's limits on their own: counting in memory and in Redis, shared across processes,
and a Redis outage that admits rather than refuses."""

from __future__ import annotations

import logging
import random

import anyio
import pytest

from mcpgateway.limits import Limits

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def limits(**options) -> Limits:
    options.setdefault("requests_per_minute", 3)
    options.setdefault("sessions_per_user", 0)
    options.setdefault("session_ttl", 60)
    return Limits(**options)


async def admit_many(gate: Limits, token: int, count: int) -> list[bool]:
    return [await gate.admit(token, 1, None, False) is None for _ in range(count)]


async def test_in_memory_the_fourth_request_of_a_minute_is_refused_per_token():
    gate = limits(redis_url="")

    assert await admit_many(gate, 1, 4) == [True, True, True, False]
    assert await admit_many(gate, 2, 1) == [True]
    over = await gate.admit(1, 1, None, False)
    assert over is not None and 1 <= over.retry_after <= 60
    assert "3 per minute" in over.message


async def test_two_gateway_processes_share_the_count_through_redis(redis_url):
    token = random.randrange(1 << 30)
    first, second, third = (limits(redis_url=redis_url) for _ in range(3))
    try:
        assert await admit_many(first, token, 3) == [True, True, True]
        await first._store.flush()
        # The second process decides on the totals of its last flush plus its own requests.
        assert await admit_many(second, token, 1) == [True]
        await second._store.flush()
        assert await admit_many(second, token, 1) == [False]
        # A third, which counted nothing itself, learns everyone's total at its first flush.
        assert await admit_many(third, token, 1) == [True]
        await third._store.flush()
        assert await admit_many(third, token, 1) == [False]
    finally:
        for gate in (first, second, third):
            await gate.close()


async def test_sessions_are_counted_across_processes_and_freed_on_close(redis_url):
    owner = random.randrange(1 << 30)
    first = limits(redis_url=redis_url, requests_per_minute=0, sessions_per_user=1)
    second = limits(redis_url=redis_url, requests_per_minute=0, sessions_per_user=1)
    try:
        assert await first.admit(1, owner, None, True, "d:r1") is None
        await first.opened(owner, "d:s1", "d:r1")
        refused = await second.admit(1, owner, None, True, "d:r2")
        await second.closed(owner, "d:s1")
        admitted = await second.admit(1, owner, None, True, "d:r3")
    finally:
        await first.close()
        await second.close()

    assert refused is not None and "may hold 1 at once" in refused.message
    assert admitted is None


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_concurrent_initializes_cannot_all_slip_under_the_quota(store, request):
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else ""
    owner = random.randrange(1 << 30)
    gates = [
        limits(redis_url=redis_url, requests_per_minute=0, sessions_per_user=2) for _ in range(2)
    ]
    try:
        async with anyio.create_task_group() as group:
            verdicts: list[bool] = []

            async def initialize(gate: Limits, index: int) -> None:
                verdict = await gate.admit(1, owner, None, True, f"d:r{index}")
                verdicts.append(verdict is None)

            for index in range(10):
                # In memory each process counts its own: one process then, two with Redis.
                gate = gates[index % 2] if store == "redis" else gates[0]
                group.start_soon(initialize, gate, index)
    finally:
        for gate in gates:
            await gate.close()

    assert verdicts.count(True) == 2


async def test_a_redis_outage_admits_and_is_logged(caplog):
    gate = limits(redis_url="redis://127.0.0.1:1/0", sessions_per_user=1)
    with caplog.at_level(logging.WARNING, logger="catwalk.gateway"):
        verdict = await gate.admit(1, 1, None, True)

    assert verdict is None
    assert "limits unavailable" in caplog.text
    await gate.close()  # its last flush fails too, and says so
