"""``client.lease(...)`` against a real `ephemera serve` that cleans up every second.

The sessions here idle out after 2 s and their requests never count as activity (the
activity write interval is an hour), so nothing but the held lease keeps them: a lease that
were not renewed, or not released, shows in what the scheduled cleanup does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from ephemera.client import AsyncClient, Client, LeaseLost
from ephemera.errors import NotFound
from tests.conftest import Server, serving

pytestmark = pytest.mark.slow

IDLE_S = 2
TTL_S = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "EPHEMERA_CLEANUP_INTERVAL_S": "1",
        "EPHEMERA_ACTIVITY_WRITE_INTERVAL_S": "3600",
    }
    with serving(tmp_path_factory.mktemp("lease") / "data", env) as running:
        yield running


class Boom(Exception):
    pass


def idle_session(admin: Client) -> tuple[str, str]:
    created = admin.create_session(idle_timeout_s=IDLE_S)
    return created.session.id, created.token


def gone_within(admin: Client, session_id: str, seconds: float) -> bool:
    """Removed by cleanup (the admin listing shows expired sessions until then)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if session_id not in {s.session.id for s in admin.list_all_sessions()}:
            return True
        time.sleep(0.2)
    return False


def scheduled_idle_cleanups_since(admin: Client, since: float) -> int:
    runs = admin.audit_log(action="cleanup.all")
    return sum(1 for e in runs if e.actor == "scheduler" and e.at.timestamp() > since)


def hold_past_the_idle_timeout_then_fail(own: Client, sid: str) -> None:
    with own.lease(sid, ttl_s=30):
        time.sleep(IDLE_S + 0.5)
        raise Boom


def lose_the_lease(own: Client, admin: Client, sid: str, *, then_fail: bool) -> None:
    with own.lease(sid, ttl_s=1) as held:
        admin.release_lease(sid, held.id)  # taken away, as an expiry would
        assert held.lost.wait(5)
        with pytest.raises(LeaseLost):
            held.check()
        if then_fail:
            raise Boom


def test_a_held_lease_keeps_an_idle_session_past_its_timeout_and_is_released_after(
    server: Server, admin: Client
) -> None:
    sid, token = idle_session(admin)
    data = b"kept while the block runs"
    with Client(server.url, token) as own:
        artifact = own.upload_artifact(sid, data, name="a.bin")
        began = time.time()
        with own.lease(sid, ttl_s=TTL_S, holder="test") as held:
            time.sleep(3 * IDLE_S)  # three idle timeouts, and past the first TTL
            # Scheduled cleanups ran meanwhile, and left the session and its bytes alone.
            assert scheduled_idle_cleanups_since(admin, began) >= 2
            assert own.read_artifact(sid, artifact.id) == data
            assert not held.lost.is_set()
            assert [lease.id for lease in own.list_leases(sid)] == [held.id]
        # Released: nothing keeps the idle session now, it no longer answers.
        with pytest.raises(NotFound):
            own.get_session(sid)
    # And the next scheduled cleanup removes it.
    assert gone_within(admin, sid, IDLE_S + 5)


def test_the_lease_is_released_when_the_block_raises_and_the_error_is_kept(
    server: Server, admin: Client
) -> None:
    sid, token = idle_session(admin)
    with Client(server.url, token) as own:
        with pytest.raises(Boom):
            hold_past_the_idle_timeout_then_fail(own, sid)
        # Released at once, long before its 30 s would have run out.
        with pytest.raises(NotFound):
            own.get_session(sid)
    assert gone_within(admin, sid, IDLE_S + 5)


def test_a_lease_lost_under_the_block_is_reported_not_swallowed(
    server: Server, admin: Client
) -> None:
    sid, token = idle_session(admin)
    with Client(server.url, token) as own:
        with pytest.raises(LeaseLost):
            lose_the_lease(own, admin, sid, then_fail=False)
        # The block's own error wins; the loss is noted on it.
        with pytest.raises(Boom) as raised:
            lose_the_lease(own, admin, sid, then_fail=True)
        assert any("was lost" in note for note in raised.value.__notes__)


def test_the_async_lease_renews_in_a_task_and_releases_on_exit(
    server: Server, admin: Client
) -> None:
    sid, token = idle_session(admin)

    async def hold() -> None:
        async with AsyncClient(server.url, token) as own:
            with pytest.raises(Boom):
                async with await own.lease(sid, ttl_s=30):
                    raise Boom
            assert admin.list_leases(sid) == []  # released at once, the session still fresh
            async with await own.lease(sid, ttl_s=TTL_S) as held:
                await asyncio.sleep(3 * IDLE_S)
                assert not held.lost.is_set()
                assert (await own.get_session(sid)).id == sid
            with pytest.raises(NotFound):
                await own.get_session(sid)

    asyncio.run(hold())
    assert gone_within(admin, sid, IDLE_S + 5)
