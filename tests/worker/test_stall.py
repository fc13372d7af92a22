"""The stall watchdog: a loop held by a blocking call is said once, with its length and where it stood."""

import asyncio
import logging
import time

from liqwatch.worker.stall import StallWatch


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # a blocking call on the event loop, as a long Python pass would be


def test_a_stall_is_said_once_with_its_length_and_frame(caplog):
    stalls: list[float] = []

    async def main() -> None:
        watch = StallWatch(stalls.append, threshold_s=0.3, worker_id="w1")
        watch.start(asyncio.get_running_loop())
        await asyncio.sleep(0.3)
        _hold_the_loop(1.0)
        await asyncio.sleep(0.5)  # the loop is back: the watchdog says it
        for _ in range(10):  # short waits only: no stall
            await asyncio.sleep(0.02)
        watch.stop()

    with caplog.at_level(logging.WARNING, logger="liqwatch.worker.stall"):
        asyncio.run(main())
    assert len(stalls) == 1 and 0.8 < stalls[0] < 1.3, stalls
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "w1: the event loop stood 1." in lines[0] and "_hold_the_loop" in lines[0], lines[0]


def test_no_stall_no_line(caplog):
    stalls: list[float] = []

    async def main() -> None:
        watch = StallWatch(stalls.append, threshold_s=0.3)
        watch.start(asyncio.get_running_loop())
        for _ in range(20):
            _hold_the_loop(0.05)  # many short holds: none is a stall
            await asyncio.sleep(0.01)
        watch.stop()

    with caplog.at_level(logging.WARNING, logger="liqwatch.worker.stall"):
        asyncio.run(main())
    assert stalls == [] and not caplog.records
