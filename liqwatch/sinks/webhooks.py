"""Alert webhooks (SPEC §6): HMAC-SHA256 signed POSTs, retried with backoff, delivered at least once, in order.

    sender = WebhookSender([Endpoint("oncall", "https://hooks.example/liqwatch", "LIQWATCH_WEBHOOK_SECRET")], metrics)
    await sender.start()
    sender.submit({"type": "alert", "id": "depeg:USDe:1760130000000", "state": "firing", ...})   # never blocks
    # ... the stream goes on ...
    await sender.stop(drain_timeout=10)      # tries to deliver what is queued, then gives up (logs how many)

Every request carries
    X-Liqwatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.".encode() + body)>
    X-Liqwatch-Alert-Id:  <alert id>           (receivers deduplicate by (id, state, severity))
    X-Liqwatch-Delivery:  <uuid>               (the same for every retry of one alert to one endpoint)
    X-Liqwatch-Attempt:   <n>                  (1, 2, ...)
Each attempt is signed with the current time, so a retry hours later is not rejected as stale. A receiver checks
the signature with `verify` and rejects timestamps outside its tolerance (replays of old requests); receivers that
also remember signatures (liqwatch/tools/receiver.py) reject a byte-identical replay inside the tolerance. The sender never
sends the same (t, body) twice to an endpoint when the first may have been accepted, so it never trips that check.

Delivery semantics:
- At least once: an alert is retried until a 2xx (delivered) or a 4xx other than 408/429 (failed permanently:
  counted `failed` and logged with the response body; the receiver said it will never accept it). 5xx, 408, 429,
  timeouts and connection errors are counted `retry` and retried for ever, with exponential backoff and jitter
  (`backoff_initial_s` doubling to `backoff_cap_s`; a Retry-After header is honoured up to the cap). A lost response
  means the receiver may see an alert twice: deduplicate by (id, state).
- In order per endpoint: each endpoint has its own queue and one delivery task that sends the head of the queue
  until it is done, then the next. A firing alert is therefore never overtaken by its resolved event; the price is
  head-of-line blocking: while an endpoint is down, or keeps answering 5xx for one alert, later alerts to that same
  endpoint wait (other endpoints are unaffected). The queue is unbounded; its length (including the alert in
  flight) is the `liqwatch_webhook_queue{endpoint}` gauge, and attempts are `liqwatch_webhook_deliveries_total
  {endpoint,outcome}`.
- Secrets are read once, from the environment variable each endpoint names, when the sender is created; logs name
  the endpoint, never its URL (it may embed credentials) or its secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from liqwatch.events import finite
from liqwatch.kafka import Connection

log = logging.getLogger("liqwatch.webhooks")

SIGNATURE_HEADER = "X-Liqwatch-Signature"
ALERT_ID_HEADER = "X-Liqwatch-Alert-Id"
DELIVERY_HEADER = "X-Liqwatch-Delivery"
ATTEMPT_HEADER = "X-Liqwatch-Attempt"
RETRYABLE_4XX = frozenset({408, 429})


# --- signatures -------------------------------------------------------------------------------------------------

class SignatureError(Exception):
    """A request whose signature must not be trusted; `reason` is one line for a log and a 401 body."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _mac(body: bytes, secret: bytes, ts: int) -> str:
    return hmac.new(secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: bytes, ts: int) -> str:
    """The X-Liqwatch-Signature value for `body` sent at unix time `ts` (seconds): 't=<ts>,v1=<hex>'."""
    return f"t={int(ts)},v1={_mac(body, secret, int(ts))}"


def alertmanager_token(secret: bytes) -> str:
    """The bearer token a receiver with this secret expects from Alertmanager (which cannot sign):
    hex HMAC-SHA256(secret, "alertmanager"). A signature's message starts with digits, so the two never collide;
    `printf alertmanager | openssl dgst -sha256 -hmac "$SECRET"` gives the same."""
    return hmac.new(secret, b"alertmanager", hashlib.sha256).hexdigest()


def parse_signature(header: str | None) -> tuple[int, list[str]]:
    """(t, [v1 signatures]) of a header; several v1 are allowed (a sender rotating secrets). Raises SignatureError."""
    if header is None or not header.strip():
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    t: int | None = None
    v1: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                t = int(value)
            except ValueError:
                raise SignatureError(f"malformed {SIGNATURE_HEADER}: t='{value[:20]}' is not unix seconds") from None
        elif key == "v1":
            v1.append(value.strip().lower())
    if t is None or not v1:
        raise SignatureError(f"malformed {SIGNATURE_HEADER}: expected 't=<unix seconds>,v1=<hex hmac-sha256>'")
    return t, v1


def verify(body: bytes, secret: bytes, header: str | None, now: float, tolerance_s: float = 300) -> None:
    """Accept `body` only if `header` signs it with `secret` at a time within `tolerance_s` of `now` (unix seconds).

    Raises SignatureError naming what is wrong: missing/malformed header, stale (or future) timestamp, or a
    signature that does not match (wrong secret or modified body). Comparison is constant-time.
    """
    t, candidates = parse_signature(header)
    skew = now - t
    if abs(skew) > tolerance_s:
        when = f"{skew:.0f} s old" if skew > 0 else f"{-skew:.0f} s in the future"
        raise SignatureError(f"stale timestamp: t={t} is {when} (tolerance {tolerance_s:g} s)")
    expected = _mac(body, secret, t)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("signature mismatch: wrong secret or modified body")


class ReplayGuard:
    """Remembers accepted signatures until their timestamp leaves the tolerance window (after that `verify` rejects
    them as stale anyway), so a byte-identical replay inside the window is caught. Memory: one entry per accepted
    request of the last 2 × tolerance seconds."""

    def __init__(self, tolerance_s: float = 300):
        self.tolerance_s = tolerance_s
        self._seen: dict[str, tuple[int, float]] = {}  # v1 -> (t, when first accepted)

    def _expire(self, now: float) -> None:
        for sig in [s for s, (t, _) in self._seen.items() if t + self.tolerance_s < now]:
            del self._seen[sig]

    def check(self, header: str, now: float) -> None:
        """Raise SignatureError if any v1 of this (verified) header was accepted before."""
        t, candidates = parse_signature(header)
        if len(self._seen) > 1024:
            self._expire(now)
        for c in candidates:
            hit = self._seen.get(c)
            if hit is not None and hit[0] + self.tolerance_s >= now:
                raise SignatureError(f"replayed signature: t={t} was already accepted {now - hit[1]:.1f} s ago")

    def remember(self, header: str, now: float) -> None:
        t, candidates = parse_signature(header)
        for c in candidates:
            self._seen.setdefault(c, (t, now))


# --- sender -----------------------------------------------------------------------------------------------------

class WebhookConfigError(ValueError):
    """A webhook endpoint that cannot be used (missing secret env var, bad URL, duplicate name)."""


@dataclass(frozen=True)
class Endpoint:
    name: str        # in logs and metric labels
    url: str         # http(s)://...; not logged (it may embed a token)
    secret_env: str  # name of the environment variable holding the HMAC secret


@dataclass
class _Item:
    body: bytes
    alert_id: str
    delivery: str
    submitted: float  # time.monotonic()


@dataclass
class _Lane:
    """One endpoint: its secret, ordered queue and delivery task."""
    endpoint: Endpoint
    secret: bytes
    queue: deque[_Item] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    used: dict[bytes, int] = field(default_factory=dict)  # body digest -> last t that may have been accepted
    delivered: int = 0
    failed: int = 0
    retries: int = 0
    last_latency_s: float | None = None


def encode_alert(alert: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes of an alert (the exact bytes that are signed). Non-finite floats become null."""
    try:
        return json.dumps(alert, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except ValueError:
        return json.dumps(finite(alert), separators=(",", ":"), ensure_ascii=False).encode()


class WebhookSender:
    """Delivers alert events to HTTP endpoints; see the module docstring for the guarantees."""

    def __init__(self, endpoints: list[Endpoint], metrics, *, timeout_s: float = 5.0,
                 backoff_initial_s: float = 0.5, backoff_cap_s: float = 30.0,
                 environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        if not (backoff_initial_s > 0 and backoff_cap_s >= backoff_initial_s and timeout_s > 0):
            raise WebhookConfigError("webhooks: need timeout_s > 0 and 0 < backoff_initial_s <= backoff_cap_s")
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_cap_s = backoff_cap_s
        self._lanes: dict[str, _Lane] = {}
        for ep in endpoints:
            if ep.name in self._lanes:
                raise WebhookConfigError(f"webhook endpoint '{ep.name}': duplicate name")
            try:
                url = URL(ep.url)
            except (TypeError, ValueError):
                url = None
            if url is None or url.scheme not in ("http", "https") or not url.host:
                raise WebhookConfigError(f"webhook endpoint '{ep.name}': url must be http(s)://HOST[:PORT]/PATH")
            secret = env.get(ep.secret_env)
            if secret is None:
                raise WebhookConfigError(f"webhook endpoint '{ep.name}': environment variable {ep.secret_env} "
                                         f"(its secret_env) is not set")
            if not secret:
                raise WebhookConfigError(f"webhook endpoint '{ep.name}': environment variable {ep.secret_env} "
                                         f"(its secret_env) is empty")
            lane = self._lanes[ep.name] = _Lane(ep, secret.encode())
            lane.idle.set()
            metrics.webhook_queue.labels(endpoint=ep.name).set(0)
            for outcome in ("delivered", "retry", "failed"):
                metrics.webhook_deliveries.labels(endpoint=ep.name, outcome=outcome)  # series exist from the start
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- public API --

    @property
    def endpoints(self) -> list[str]:
        return list(self._lanes)

    def pending(self, endpoint: str | None = None) -> int:
        """Alerts not yet delivered or failed (including those in flight), for one endpoint or all."""
        lanes = [self._lanes[endpoint]] if endpoint is not None else self._lanes.values()
        return sum(len(lane.queue) for lane in lanes)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {n: {"queued": len(l.queue), "delivered": l.delivered, "failed": l.failed, "retries": l.retries,
                    "last_latency_s": l.last_latency_s} for n, l in self._lanes.items()}

    def submit(self, alert: Mapping[str, Any]) -> None:
        """Queue an alert for every endpoint. Never blocks, never raises (a problem is logged). Safe to call from
        another thread while the sender runs (the item is handed to the sender's loop)."""
        try:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    running = asyncio.get_running_loop()
                except RuntimeError:
                    running = None
                if running is not loop:
                    loop.call_soon_threadsafe(self._enqueue, alert)
                    return
            self._enqueue(alert)
        except Exception:  # noqa: BLE001 - an alert sink must never take the worker down
            log.exception("webhooks: could not queue alert %r", _alert_id(alert))

    async def start(self) -> None:
        if self._session is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                              headers={"User-Agent": "liqwatch-webhooks/1"})
        for lane in self._lanes.values():
            lane.wake, lane.idle = asyncio.Event(), asyncio.Event()  # bound to this loop
            (lane.wake if lane.queue else lane.idle).set()
            lane.task = asyncio.create_task(self._run(lane), name=f"webhook:{lane.endpoint.name}")
        log.info("webhooks: delivering to %d endpoint(s): %s", len(self._lanes), ", ".join(self._lanes) or "-")

    async def drain(self, timeout: float) -> int:
        """Wait until every queue is empty or `timeout` seconds passed; returns how many alerts are still queued."""
        waits = [asyncio.ensure_future(lane.idle.wait()) for lane in self._lanes.values()]
        if waits:
            done, not_done = await asyncio.wait(waits, timeout=max(0.0, timeout))
            for w in not_done:
                w.cancel()
        return self.pending()

    async def stop(self, drain_timeout: float = 5.0) -> int:
        """Try to deliver what is queued for up to `drain_timeout` s, then stop; returns (and logs) what was left."""
        left = await self.drain(drain_timeout) if self._session is not None else self.pending()
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self._lanes.values():
            lane.task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._loop = None
        if left:
            per = ", ".join(f"{n}: {len(l.queue)}" for n, l in self._lanes.items() if l.queue)
            log.warning("webhooks: stopped with %d alert(s) undelivered after a %g s drain (%s)", left,
                        drain_timeout, per)
        return left

    # -- internals --

    def _enqueue(self, alert: Mapping[str, Any]) -> None:
        body = encode_alert(alert)
        alert_id = _alert_id(alert)
        now = time.monotonic()
        for lane in self._lanes.values():
            lane.queue.append(_Item(body, alert_id, str(uuid.uuid4()), now))
            self.metrics.webhook_queue.labels(endpoint=lane.endpoint.name).set(len(lane.queue))
            lane.idle.clear()
            lane.wake.set()

    async def _run(self, lane: _Lane) -> None:
        name = lane.endpoint.name
        while True:
            if not lane.queue:
                lane.idle.set()
                lane.wake.clear()
                await lane.wake.wait()
                continue
            item = lane.queue[0]
            try:
                await self._deliver(lane, item)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug here must not stop delivery for good
                log.exception("webhooks %s: unexpected error delivering %s; retrying", name, item.alert_id)
                await asyncio.sleep(self.backoff_cap_s)
                continue
            lane.queue.popleft()
            self.metrics.webhook_queue.labels(endpoint=name).set(len(lane.queue))

    def _backoff(self, attempt: int) -> float:
        """Delay before attempt `attempt`+1: initial × 2^(attempt-1), capped, times a jitter factor in [0.5, 1]."""
        base = min(self.backoff_cap_s, self.backoff_initial_s * (2 ** min(attempt - 1, 60)))
        return base * random.uniform(0.5, 1.0)

    async def _timestamp(self, lane: _Lane, digest: bytes) -> int:
        """Current unix second, waiting for the next one if this body was already sent (and may have been accepted)
        with this timestamp: the signature must differ so a receiver's replay check does not reject a retry."""
        t = int(time.time())
        if lane.used.get(digest) == t:
            await asyncio.sleep(t + 1 - time.time() + 0.001)
            t = int(time.time())
        return t

    def _remember(self, lane: _Lane, digest: bytes, t: int) -> None:
        lane.used.pop(digest, None)
        lane.used[digest] = t                       # insertion order = time order
        horizon = int(time.time()) - 2
        while lane.used:
            first = next(iter(lane.used))
            if lane.used[first] >= horizon:
                break
            del lane.used[first]

    async def _deliver(self, lane: _Lane, item: _Item) -> None:
        ep, name = lane.endpoint, lane.endpoint.name
        counter = self.metrics.webhook_deliveries
        digest = hashlib.sha256(item.body).digest()
        attempt = 0
        while True:
            attempt += 1
            t = await self._timestamp(lane, digest)
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(item.body, lane.secret, t),
                ALERT_ID_HEADER: item.alert_id,
                DELIVERY_HEADER: item.delivery,
                ATTEMPT_HEADER: str(attempt),
            }
            status: int | None = None
            retry_after: float | None = None
            try:
                async with self._session.post(ep.url, data=item.body, headers=headers) as resp:
                    status = resp.status
                    text = (await resp.read())[:500].decode("utf-8", "replace")
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                problem = f"HTTP {status}: {text.strip()!r}"
            except asyncio.CancelledError:
                raise
            except aiohttp.ClientConnectorError as e:  # never reached the receiver: the same t can be reused
                problem = f"cannot connect ({e.os_error.strerror or type(e.os_error).__name__})" \
                    if e.os_error is not None else f"cannot connect ({type(e).__name__})"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                # The request may have been processed and its response lost: do not reuse this signature.
                self._remember(lane, digest, t)
                text = str(e).replace(ep.url, "<url>")    # never log the URL: it may carry a token
                problem = f"{type(e).__name__}: {text}" if text else f"{type(e).__name__} (timeout {self.timeout_s:g} s)"
            if status is not None and 200 <= status < 300:
                self._remember(lane, digest, t)
                counter.labels(endpoint=name, outcome="delivered").inc()
                lane.delivered += 1
                lane.last_latency_s = time.monotonic() - item.submitted
                if attempt > 1:
                    log.info("webhooks %s: delivered %s after %d attempts (%.1f s)", name, item.alert_id, attempt,
                             lane.last_latency_s)
                return
            if status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX:
                counter.labels(endpoint=name, outcome="failed").inc()
                lane.failed += 1
                log.error("webhooks %s: alert %s rejected permanently (not retried): %s", name, item.alert_id,
                          problem)
                return
            counter.labels(endpoint=name, outcome="retry").inc()
            lane.retries += 1
            delay = self._backoff(attempt)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.backoff_cap_s))
            # Log the 1st, 2nd, 4th, 8th... failure of an alert: an endpoint that is down for hours stays readable.
            level = logging.WARNING if attempt & (attempt - 1) == 0 else logging.DEBUG
            log.log(level, "webhooks %s: attempt %d for %s failed (%s); retrying in %.1f s (%d queued)", name,
                    attempt, item.alert_id, problem, delay, len(lane.queue))
            await asyncio.sleep(delay)


def _alert_id(alert: Any) -> str:
    try:
        return str(alert.get("id", "?"))
    except Exception:  # noqa: BLE001
        return "?"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # HTTP-date form: ignore, use our own backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class TopicDelivery:
    """Webhook delivery from the alerts topic, durable across restarts: a consumer in its own group reads the
    topic, hands each alert to the sender, and commits the offset only once every endpoint has the alert
    (delivered, or rejected for good). A worker killed with alerts queued has not committed them: the group's
    next member (a restarted worker, or another one after the rebalance) sends them again, and receivers
    deduplicate. An alert reaches a webhook only once it is on the alerts topic.

        delivery = TopicDelivery(sender, kafka, "liqwatch.alerts", group="liqwatch-webhooks")
        await delivery.run()        # a supervised service of the worker (liqwatch.worker.supervise)
    """

    def __init__(self, sender: WebhookSender, kafka: Connection, topic: str, group: str, client_id: str,
                 session_timeout_ms: int = 6_000):
        self.sender = sender
        self.kafka = kafka
        self.topic = topic
        self.group = group
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer

        # a new group starts at the beginning of the topic: an alert published before the group first joined
        # is sent too (receivers deduplicate what an older deployment already sent)
        consumer = AIOKafkaConsumer(self.topic, **self.kafka.aiokafka(), group_id=self.group,
                                    client_id=self.client_id, enable_auto_commit=False,
                                    auto_offset_reset="earliest", session_timeout_ms=self.session_timeout_ms,
                                    heartbeat_interval_ms=max(self.session_timeout_ms // 4, 500))
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                for tp, recs in batch.items():
                    for rec in recs:
                        try:
                            alert = json.loads(rec.value)
                        except (ValueError, TypeError):
                            log.warning("webhooks: alerts topic record %s[%d]@%d is not JSON; skipped", tp.topic,
                                        tp.partition, rec.offset)
                            continue
                        self.sender.submit(alert)
                    while self.sender.pending():
                        await self.sender.drain(60)
                    await consumer.commit({tp: recs[-1].offset + 1})
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
