"""Wake-ups in one process: an awaited Wakeup ends its wait only when set, and a wake-all
spreads the streams it wakes instead of waking them at one instant."""

from __future__ import annotations

import asyncio
import threading
import time

from ephemera.catalog import Wakeup
from ephemera.catalog.notify import Notifier


def test_a_set_that_lands_after_a_wait_ended_does_not_end_the_next_wait_early() -> None:
    async def main() -> tuple[bool, bool, float]:
        wakeup = Wakeup(asyncio.get_running_loop())
        # Set from another thread (a commit's), as a stream's wake-ups are.
        setter = threading.Thread(target=wakeup.set)
        setter.start()
        setter.join()
        first = await wakeup.wait_async(5)
        started = time.monotonic()
        second = await wakeup.wait_async(0.3)
        return first, second, time.monotonic() - started

    first, second, waited = asyncio.run(main())
    assert first
    assert not second
    assert waited >= 0.25  # the whole timeout: no spurious wake-up


def test_a_set_during_a_wait_ends_it_at_once() -> None:
    async def main() -> tuple[bool, float]:
        wakeup = Wakeup(asyncio.get_running_loop())
        threading.Timer(0.1, wakeup.set).start()
        started = time.monotonic()
        return await wakeup.wait_async(5), time.monotonic() - started

    woken, waited = asyncio.run(main())
    assert woken
    assert waited < 1


def test_a_wake_all_spreads_the_streams_over_its_span_and_wakes_each() -> None:
    notifier = Notifier()
    streams = 40

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        woken_at: list[float] = []

        async def stream(topic: str) -> None:
            with notifier.subscribe(topic, loop) as wakeup:
                await ready.wait()
                if await wakeup.wait_async(5):
                    woken_at.append(time.monotonic() - started)

        ready = asyncio.Event()
        tasks = [asyncio.create_task(stream(f"events:s{n}")) for n in range(streams)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        ready.set()
        notifier.publish_all(within_s=0.5)
        await asyncio.gather(*tasks)
        return woken_at

    woken_at = asyncio.run(main())
    assert len(woken_at) == streams
    assert max(woken_at) < 1.0
    # Not at one instant: spread over the span (40 uniform draws over 0.5 s).
    assert max(woken_at) - min(woken_at) > 0.2
    assert sum(1 for t in woken_at if t < 0.05) < streams / 2
