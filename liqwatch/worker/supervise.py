"""Background services of a worker, restarted after a failure, with backoff, counted and logged without storms.

    sup = Supervisor(metrics, worker_id="worker-1")
    sup.start("market feed", feed.run)           # feed.run: an async function that runs until cancelled
    sup.beat("market feed")                      # the service says it is alive (its loop went round)
    sup.status()                                 # {"market feed": {"state": "running", "restarts": 0, ...}}
    sup.problems(stuck_after_s=30)               # ["market feed: restarting after KafkaConnectionError: ..."]

A service that raises is started again after 0.5 s, 1 s, 2 s … up to 30 s (the delay falls back to 0.5 s once it
has run for a minute). Each failure is one log line with the error; the same error again and again is logged with
its traceback the first time, then once a minute with a count. `liqwatch_service_restarts_total{service}` counts
restarts and `liqwatch_service_up{service}` is 1 while a service runs. A service whose loop has not said it is
alive for `stuck_after_s` is stuck: /healthz fails on it, as on one that is restarting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

BACKOFF_S = (0.5, 30.0)
STABLE_S = 60.0
REPEAT_LOG_S = 60.0
OWN_LOGGERS = ("liqwatch",)


@dataclass
class Service:
    name: str
    run: Callable[[], Awaitable[None]]
    state: str = "starting"          # running | restarting | stopped
    restarts: int = 0
    last_error: str = ""
    last_beat: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task | None = None
    heartbeat: bool = False          # does the service call beat()? (then it can be stuck)


class Supervisor:
    def __init__(self, metrics=None, worker_id: str = "worker"):
        self.metrics = metrics
        self.worker_id = worker_id
        self.services: dict[str, Service] = {}
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}

    def start(self, name: str, run: Callable[[], Awaitable[None]], heartbeat: bool = False) -> Service:
        svc = self.services[name] = Service(name, run, heartbeat=heartbeat)
        svc.task = asyncio.get_running_loop().create_task(self._keep(svc), name=f"liqwatch:{name}")
        return svc

    def beat(self, name: str) -> None:
        svc = self.services.get(name)
        if svc is not None:
            svc.last_beat = time.monotonic()

    async def stop(self, names: list[str] | None = None) -> None:
        """Stop the named services (all when None)."""
        chosen = [s for n, s in self.services.items() if names is None or n in names]
        tasks = [s.task for s in chosen if s.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in chosen:
            s.state = "stopped"

    async def _keep(self, svc: Service) -> None:
        delay = BACKOFF_S[0]
        while True:
            svc.state, svc.started, svc.last_beat = "running", time.monotonic(), time.monotonic()
            self._up(svc, 1.0)
            try:
                await svc.run()
                raise RuntimeError("returned")  # a service runs until cancelled: returning is a failure too
            except asyncio.CancelledError:
                self._up(svc, 0.0)
                raise
            except Exception as e:  # noqa: BLE001 - whatever stopped it, it is restarted
                if time.monotonic() - svc.started >= STABLE_S:
                    delay = BACKOFF_S[0]
                svc.state, svc.restarts = "restarting", svc.restarts + 1
                svc.last_error = f"{type(e).__name__}: {e}"[:300]
                self._up(svc, 0.0)
                if self.metrics is not None:
                    self.metrics.service_restarts.labels(service=svc.name).inc()
                self._log_failure(svc, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_S[1])

    def _up(self, svc: Service, value: float) -> None:
        if self.metrics is not None:
            self.metrics.service_up.labels(service=svc.name).set(value)

    def _log_failure(self, svc: Service, e: Exception, delay: float) -> None:
        key = (svc.name, type(e).__name__)
        now = time.monotonic()
        last, count = self._logged.get(key, (0.0, 0))
        if count == 0:
            log.error("%s: %s stopped by %s; restarting in %.1f s", self.worker_id, svc.name, svc.last_error, delay,
                      exc_info=e)
            self._logged[key] = (now, 1)
        elif now - last >= REPEAT_LOG_S:
            log.error("%s: %s still failing: %s (%d failures since the last report); restarting in %.1f s",
                      self.worker_id, svc.name, svc.last_error, count, delay)
            self._logged[key] = (now, 1)
        else:
            self._logged[key] = (last, count + 1)

    # -- what /healthz and /ready say -----------------------------------------------------------------------
    def status(self, stuck_after_s: float = 30.0) -> dict[str, dict]:
        now = time.monotonic()
        out = {}
        for name, s in self.services.items():
            state = s.state
            if state == "running" and s.heartbeat and now - s.last_beat > stuck_after_s:
                state = "stuck"
            out[name] = {"state": state, "restarts": s.restarts, "last_error": s.last_error or None,
                         "seconds_since_beat": round(now - s.last_beat, 1) if s.heartbeat else None}
        return out

    def problems(self, stuck_after_s: float = 30.0) -> list[str]:
        out = []
        for name, st in self.status(stuck_after_s).items():
            if st["state"] == "stuck":
                out.append(f"{name}: stuck (no progress for {st['seconds_since_beat']:.0f} s)")
            elif st["state"] != "running":
                out.append(f"{name}: {st['state']}" + (f" after {st['last_error']}" if st["last_error"] else ""))
        return out


class Quieter(logging.Filter):
    """No log storms from the libraries: a warning or error of one kind (logger and message template) passes the
    first time, then
    at most once a minute, saying how many like it were held back. A broker restart makes the Kafka client log
    the same connection error many times a second; the operator needs it once, with a count.

        for handler in logging.getLogger().handlers:
            handler.addFilter(Quieter())
    """

    def __init__(self, window_s: float = REPEAT_LOG_S):
        super().__init__()
        self.window_s = window_s
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.name.startswith(OWN_LOGGERS):
            return True  # liqwatch's own lines already say things once (per failure, per kind)
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last, held = self.seen.get(key, (-1e18, 0))
        if now - last < self.window_s:
            self.seen[key] = (last, held + 1)
            return False
        self.seen[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} ({held} more like this in the last {now - last:.0f} s)"
            record.args = ()
        return True

    @classmethod
    def install(cls) -> "Quieter":
        """On every handler of the root logger (where the worker's log lines go out)."""
        q = cls()
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, cls) for f in handler.filters):
                handler.addFilter(q)
        return q
