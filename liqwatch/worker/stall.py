"""Say when the event loop stalls, and where.

The market feed, the marks and the heartbeats all run on one event loop: a piece of work that holds it (a long
Python pass, a blocking call) delays every tick behind it. A watchdog thread reads a timestamp the loop refreshes
every `TICK_S`; when it is older than `threshold_s` the thread samples the loop thread's Python stack, and when
the loop is back one line says how long it stood and in which frames (the ones sampled most), once per stall.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections import Counter

log = logging.getLogger(__name__)
TICK_S = 0.05


class StallWatch:
    def __init__(self, observe, threshold_s: float = 0.5, worker_id: str = ""):
        self.observe = observe  # called with every stall's seconds (the loop-stall histogram)
        self.threshold_s = threshold_s
        self.worker_id = worker_id
        self.beat = time.monotonic()
        self._stop = threading.Event()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_thread = threading.get_ident()

        def beat() -> None:
            self.beat = time.monotonic()
            if not self._stop.is_set():
                loop.call_later(TICK_S, beat)

        loop.call_soon(beat)
        threading.Thread(target=self._watch, name="liqwatch-stall-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        frames: Counter[str] = Counter()
        since = None
        while not self._stop.wait(TICK_S):
            late = time.monotonic() - self.beat - TICK_S
            if late > self.threshold_s:
                since = since or self.beat
                stack = sys._current_frames().get(self.loop_thread)
                if stack is not None:
                    frames[_where(stack)] += 1
            elif since is not None:
                stood = self.beat - since - TICK_S
                self.observe(stood)
                top = "; ".join(f"{w} ({n})" for w, n in frames.most_common(3))
                log.warning("%s: the event loop stood %.1f s (ticks wait behind it), sampled at: %s",
                            self.worker_id, stood, top or "?")
                frames.clear()
                since = None


def _where(frame) -> str:
    """The innermost liqwatch frame of a stack, with the frame it was in (a library call, a kernel)."""
    entries = traceback.extract_stack(frame)
    for k in range(len(entries) - 1, -1, -1):
        if "/liqwatch/" in entries[k].filename:
            inner = entries[k + 1].name if k + 1 < len(entries) else ""
            e = entries[k]
            return f"{e.filename.rsplit('/liqwatch/', 1)[1]}:{e.lineno} {e.name}" + (f" → {inner}" if inner else "")
    e = entries[-1]
    return f"{e.filename.rsplit('/', 1)[-1]}:{e.lineno} {e.name}"
