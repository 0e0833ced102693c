"""The client's tus protocol steps, given answers one by one: which failures are retried
(after a pause and a HEAD), how many times, and which end the upload."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from ephemera.client.errors import ServerUnreachable
from ephemera.client.resume import BytesBody
from ephemera.client.tus import Call, Pause, Steps, TusOptions, TusUpload
from ephemera.errors import ChecksumMismatch, Locked, TooLarge, Unavailable

ENDPOINT = "http://server/api/v1/sessions/s/uploads"
UPLOAD = f"{ENDPOINT}/u1"
ARTIFACT = {"id": "u1", "sha256": "", "size": 4}


def answer(status: int, headers: dict[str, str] | None = None, body: Any = None) -> httpx2.Response:
    if status >= 400:
        body = {"error": {"code": "", "message": f"status {status}"}}
    content = b"" if body is None else json.dumps(body).encode()
    return httpx2.Response(status, headers=headers, content=content)


class Exchange:
    """Runs the steps of an upload against answers given in order; notes what was sent."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.sent: list[str] = []
        self.pauses: list[float] = []

    def run(self, answers: Iterator[httpx2.Response | ServerUnreachable]) -> Any:
        reply: Any = None
        while True:
            try:
                step = (
                    self.steps.throw(reply)
                    if isinstance(reply, ServerUnreachable)
                    else self.steps.send(reply)
                )
            except StopIteration as done:
                return done.value
            if isinstance(step, Pause):
                self.pauses.append(step.seconds)
                reply = None
                continue
            assert isinstance(step, Call)
            self.sent.append(f"{step.method} {step.headers.get('Upload-Offset', '')}".strip())
            reply = next(answers)


def upload(data: bytes = b"abcd", chunk_size: int = 2) -> Exchange:
    options = TusOptions(chunk_size=chunk_size)
    return Exchange(TusUpload(ENDPOINT, BytesBody(data, None), {"filename": "a"}, options).steps())


def created() -> httpx2.Response:
    return answer(201, {"Location": UPLOAD, "Upload-Offset": "0"})


def patched(offset: int, done: bool = False) -> httpx2.Response:
    headers = {"Upload-Offset": str(offset)}
    if done:
        headers["Ephemera-Artifact-Id"] = "u1"
    return answer(204, headers)


def test_a_423_waits_asks_the_offset_and_sends_from_there() -> None:
    exchange = upload()
    artifact = exchange.run(
        iter(
            [
                created(),
                patched(2),
                answer(423),
                answer(200, {"Upload-Offset": "2", "Upload-Length": "4"}),
                patched(4, done=True),
                answer(200, body=ARTIFACT),
            ]
        )
    )
    assert artifact == ARTIFACT
    assert exchange.sent == ["POST", "PATCH 0", "PATCH 2", "HEAD", "PATCH 2", "GET"]
    assert exchange.pauses == [0.5]


def test_a_retry_sends_from_the_offset_the_server_tells_not_from_its_own() -> None:
    exchange = upload(b"abcdef")
    cut = ServerUnreachable("cut")
    exchange.run(
        iter(
            [
                created(),
                cut,
                # The cut PATCH's bytes did arrive: the answer alone was lost.
                answer(200, {"Upload-Offset": "2", "Upload-Length": "6"}),
                patched(4),
                patched(6, done=True),
                answer(200, body=ARTIFACT),
            ]
        )
    )
    assert exchange.sent == ["POST", "PATCH 0", "HEAD", "PATCH 2", "PATCH 4", "GET"]


def test_failures_in_a_row_are_bounded_and_back_off_then_the_upload_is_removed() -> None:
    exchange = upload()
    busy = answer(503, {"Retry-After": "3"})
    head = answer(200, {"Upload-Offset": "0", "Upload-Length": "4"})
    answers = iter([created(), busy, head, busy, head, busy, head, busy, head, busy, answer(204)])
    with pytest.raises(Unavailable):
        exchange.run(answers)
    assert exchange.sent.count("PATCH 0") == 5
    # 0.5 s doubling, but never sooner than the server's Retry-After.
    assert exchange.pauses == [3, 3, 3, 4]
    assert exchange.sent[-1] == "DELETE"


def test_progress_resets_the_count_of_failures() -> None:
    exchange = upload(b"abcdefgh")
    locked = answer(423)

    def head(offset: int) -> httpx2.Response:
        return answer(200, {"Upload-Offset": str(offset), "Upload-Length": "8"})

    answers = [created()]
    for offset in (0, 2, 4):  # four failures before each chunk goes through
        for _ in range(4):
            answers += [locked, head(offset)]
        answers.append(patched(offset + 2))
    answers += [locked, head(6), patched(8, done=True), answer(200, body=ARTIFACT)]
    assert exchange.run(iter(answers)) == ARTIFACT


@pytest.mark.parametrize(
    ("status", "error"), [(460, ChecksumMismatch), (413, TooLarge)], ids=["460", "413"]
)
def test_a_refused_chunk_ends_the_upload(status: int, error: type[Exception]) -> None:
    exchange = upload()
    with pytest.raises(error):
        exchange.run(iter([created(), answer(status), answer(204)]))
    assert exchange.sent == ["POST", "PATCH 0", "DELETE"]


def test_a_refused_creation_sends_nothing_more() -> None:
    exchange = upload()
    with pytest.raises(TooLarge):
        exchange.run(iter([answer(413)]))
    assert exchange.sent == ["POST"]


def test_locked_is_what_a_423_raises_once_attempts_are_spent() -> None:
    exchange = Exchange(
        TusUpload(
            ENDPOINT, BytesBody(b"ab", None), {"filename": "a"}, TusOptions(attempts=1)
        ).steps()
    )
    with pytest.raises(Locked):
        exchange.run(iter([created(), answer(423), answer(204)]))
