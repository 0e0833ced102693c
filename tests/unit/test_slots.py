"""Upload slots: a per-session count of uploads in flight, released however the upload ends."""

from __future__ import annotations

import pytest

from ephemera.http.errors import RateLimited
from ephemera.http.slots import UploadSlots


def test_a_session_holds_at_most_its_slots_and_the_next_is_rate_limited() -> None:
    slots = UploadSlots(2)
    with slots.hold("s1"), slots.hold("s1"):
        with pytest.raises(RateLimited) as refused, slots.hold("s1"):
            pytest.fail("a third upload got a slot")
        assert refused.value.retry_after_s >= 1
        assert slots.held("s1") == 2
    assert slots.held("s1") == 0


def test_sessions_do_not_share_slots() -> None:
    slots = UploadSlots(1)
    with slots.hold("s1"), slots.hold("s2"):
        assert (slots.held("s1"), slots.held("s2")) == (1, 1)


def test_a_slot_is_released_when_the_upload_fails() -> None:
    slots = UploadSlots(1)
    with pytest.raises(OSError, match="disk"), slots.hold("s1"):
        raise OSError("disk gone")
    with slots.hold("s1"):
        assert slots.held("s1") == 1


def test_a_refused_upload_takes_no_slot() -> None:
    slots = UploadSlots(1)
    with slots.hold("s1"):
        with pytest.raises(RateLimited), slots.hold("s1"):
            pass
        assert slots.held("s1") == 1
    assert slots.held("s1") == 0
