"""Identifiers and names a client may send."""

from __future__ import annotations

import pytest

from ephemera import ids
from ephemera.errors import InvalidInput


# A generated UUID is named by its kind: parallel runs must collect the same test IDs.
@pytest.mark.parametrize(
    "value",
    ["a", "A9", "station-1_b", "x" * 64, pytest.param(ids.new_uuid7(), id="generated-uuid7")],
)
def test_valid_session_ids(value: str) -> None:
    assert ids.check_session_id(value) == value


@pytest.mark.parametrize(
    "value", ["", "../x", "a/b", "x" * 65, "é", "-a", "_a", "a b", "a\x00", "a.b", "a\n"]
)
def test_hostile_session_ids_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        ids.check_session_id(value)


@pytest.mark.parametrize(
    "value", ["frame.png", "Prüfbericht 3.pdf", "日本.jpg", "a" * 255, ".hidden", "x..y"]
)
def test_valid_file_names(value: str) -> None:
    assert ids.check_file_name(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        ".",
        "..",
        "../../etc/passwd",
        "a/b",
        "a\\b",
        "a\x00b",
        "a\nb",
        "a\x1bb",
        "a\u202eb",
        "a" * 256,
        "x" * 10_000,
        " padded ",
    ],
)
def test_hostile_file_names_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        ids.check_file_name(value)


def test_uuid7s_sort_in_creation_order() -> None:
    values = [ids.new_uuid7() for _ in range(2000)]
    assert len(set(values)) == 2000
    assert all(ids.is_artifact_id(v) for v in values)
    # Same-millisecond values may tie on time; across milliseconds order must hold.
    stamps = [v[:13] for v in values]
    assert stamps == sorted(stamps)


def test_secrets_are_long_random_and_checked_by_hash() -> None:
    token = ids.new_session_token()
    assert len(token) - len(ids.SESSION_TOKEN_PREFIX) >= 43  # 256 bits in base64url
    assert token != ids.new_session_token()
    assert ids.secret_matches(token, ids.hash_secret(token))
    assert not ids.secret_matches(token + "x", ids.hash_secret(token))
