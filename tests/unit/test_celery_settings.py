"""An ephemera Celery task refuses, before it touches anything, a first argument that is not
on_session(...) and a worker that was not told which server to use."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from ephemera.contrib.celery import Workspace, ephemera_task, on_session
from ephemera.errors import InvalidInput


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Celery:
    monkeypatch.delenv("EPHEMERA_SERVER_URL", raising=False)
    app = Celery("unit", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    return app


def test_the_first_argument_must_say_which_session(app: Celery) -> None:
    ran: list[Any] = []

    @ephemera_task(app)
    def work(ws: Workspace) -> None:
        ran.append(ws)

    app.conf.ephemera_server_url = "http://127.0.0.1:9"
    for bad in ("s1", {"token": "t"}, {"session_id": 5}, None):
        with pytest.raises(InvalidInput, match="on_session"):
            work.apply(args=[bad]).get()
    assert ran == []


def test_without_a_server_url_the_task_says_where_to_set_it(app: Celery) -> None:
    @ephemera_task(app)
    def work(ws: Workspace) -> None:
        raise AssertionError("never runs")

    with pytest.raises(InvalidInput, match="EPHEMERA_SERVER_URL"):
        work.apply(args=[on_session("s1", "t")]).get()


def test_on_session_is_plain_json_for_any_serializer() -> None:
    assert on_session("s1", "t", artifacts=("a", "b")) == {
        "session_id": "s1",
        "token": "t",
        "artifact_ids": ["a", "b"],
    }
