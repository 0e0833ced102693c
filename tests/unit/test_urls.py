from __future__ import annotations

import pytest

from ephemera.urls import redact_url, without_secrets


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:hunter2@db:5432/eph", "postgresql://app:***@db:5432/eph"),
        ("postgresql://app:a/b:c@db/eph", "postgresql://app:***@db/eph"),
        ("postgresql://app@db/eph?password=hunter2", "postgresql://app@db/eph?password=***"),
        (
            "postgresql://db/eph?sslmode=require&sslpassword=x&application_name=e",
            "postgresql://db/eph?sslmode=require&sslpassword=***&application_name=e",
        ),
        (
            "s3://bucket/p?endpoint=http://127.0.0.1:9000",
            "s3://bucket/p?endpoint=http://127.0.0.1:9000",
        ),
        ("sqlite:////data/ephemera.db", "sqlite:////data/ephemera.db"),
        ("postgresql://app@db:5432/eph", "postgresql://app@db:5432/eph"),
    ],
)
def test_passwords_and_secret_parameters_are_hidden(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:hunter2@db:5432/eph",
        "postgresql://app@db:5432/eph?password=hunter2",
        "postgresql://app:***@db:5432/eph",
        "postgresql://app@db:5432/eph",
    ],
)
def test_a_database_is_named_the_same_however_its_password_is_given(url: str) -> None:
    assert without_secrets(url) == "postgresql://app@db:5432/eph"


def test_parameters_that_are_not_secrets_still_name_the_backend() -> None:
    url = "postgresql://db/eph?password=x&sslmode=require&application_name=e"
    assert without_secrets(url) == "postgresql://db/eph?sslmode=require&application_name=e"
