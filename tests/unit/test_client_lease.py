"""How a held lease treats renewals and releases that fail, with scripted answers in place of
a server: a passing failure is retried, a refusal loses the lease, and a loss is reported."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from ephemera.client import HeldLease, LeaseLost, ServerUnreachable
from ephemera.errors import Conflict, EphemeraError, NotFound, Unavailable
from ephemera.models import Lease

LEASE = Lease("l1", "s1", "test", (), datetime.now(UTC), datetime.now(UTC))
TTL_S = 0.6  # renewed every 0.2 s


class Boom(Exception):
    pass


def renewals(*answers: EphemeraError | None) -> tuple[Callable[[], Lease], list[float]]:
    """A renew that raises each error given in turn (None: succeeds), then succeeds."""
    calls: list[float] = []
    queue = list(answers)

    def renew() -> Lease:
        calls.append(time.monotonic())
        answer = queue.pop(0) if queue else None
        if answer is not None:
            raise answer
        return LEASE

    return renew, calls


def nothing() -> None:
    pass


def test_renewals_run_at_a_third_of_the_ttl_and_a_passing_failure_is_retried() -> None:
    renew, calls = renewals(Unavailable("busy", 0.1), ServerUnreachable("down"))
    with HeldLease(LEASE, TTL_S, renew, nothing) as held:
        time.sleep(1.2)
        assert not held.lost.is_set()
    assert len(calls) >= 5


@pytest.mark.parametrize("refusal", [Conflict("expired"), NotFound("gone")])
def test_a_refused_renewal_loses_the_lease_and_leaving_the_block_raises(
    refusal: EphemeraError,
) -> None:
    renew, _ = renewals(refusal)
    held = HeldLease(LEASE, TTL_S, renew, nothing)
    with pytest.raises(LeaseLost) as raised, held:
        assert held.lost.wait(2)
    assert raised.value.__cause__ is refusal


def test_failures_past_the_ttl_lose_the_lease() -> None:
    renew, _ = renewals(*[Unavailable("busy")] * 100)
    held = HeldLease(LEASE, TTL_S, renew, nothing)
    with pytest.raises(LeaseLost), held:
        assert held.lost.wait(3)


def test_the_blocks_own_error_is_kept_with_a_note_of_the_loss() -> None:
    renew, _ = renewals(Conflict("expired"))
    held = HeldLease(LEASE, TTL_S, renew, nothing)

    def fail_after_the_loss() -> None:
        with held:
            assert held.lost.wait(2)
            raise Boom

    with pytest.raises(Boom) as raised:
        fail_after_the_loss()
    assert raised.value.__notes__ == ["ephemera: lease l1 on session s1 was lost: expired"]


def test_a_release_that_fails_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def release() -> None:
        raise Unavailable("busy")

    renew, _ = renewals()
    with HeldLease(LEASE, TTL_S, renew, release):
        pass
    assert "not released (busy)" in caplog.text

    def already_gone() -> None:
        raise NotFound("gone")

    with HeldLease(LEASE, TTL_S, renew, already_gone):
        pass
