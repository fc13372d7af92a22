"""Signed alert webhooks (SPEC §6): signatures, the sender's retries and ordering, the receiver's checks and dedup.

Real HTTP on 127.0.0.1 (free ports); no Kafka. Each test runs its own event loop and stops what it started.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from typer.testing import CliRunner

from liqwatch.tools import receiver as rx
from liqwatch.sinks.metrics import Metrics
from liqwatch.tools.receiver import Receiver
from liqwatch.sinks.webhooks import (ALERT_ID_HEADER, ATTEMPT_HEADER, DELIVERY_HEADER, SIGNATURE_HEADER, Endpoint,
                              SignatureError, WebhookConfigError, WebhookSender, sign, verify)

SECRET = "s3cret-for-tests"
ENV = {"LW_TEST_SECRET": SECRET}


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def dead_port() -> int:
    """A 127.0.0.1 port nobody listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alert(n: int, state: str = "firing", kind: str = "depeg") -> dict:
    return {"type": "alert", "id": f"{kind}:A{n}:1760130000000", "kind": kind, "severity": "critical",
            "subject": f"A{n}", "state": state, "ts": 1760130000000 + n, "value": 0.31, "threshold": 0.05,
            "summary": f"A{n} index 0.69 is 31% below its redemption value 1.00", "config_id": "ab12cd34ef56"}


def count(m: Metrics, endpoint: str, outcome: str) -> float:
    return m.registry.get_sample_value("liqwatch_webhook_deliveries_total",
                                       {"endpoint": endpoint, "outcome": outcome}) or 0.0


def queued(m: Metrics, endpoint: str) -> float:
    return m.registry.get_sample_value("liqwatch_webhook_queue", {"endpoint": endpoint})


def sender_for(urls: dict[str, str], m: Metrics, **kw) -> WebhookSender:
    kw.setdefault("backoff_initial_s", 0.05)
    kw.setdefault("backoff_cap_s", 0.2)
    return WebhookSender([Endpoint(name, url, "LW_TEST_SECRET") for name, url in urls.items()], m, environ=ENV, **kw)


@asynccontextmanager
async def scripted_server(handler):
    """An aiohttp server on a free 127.0.0.1 port running `handler`; yields its /alerts URL."""
    app = web.Application()
    app.router.add_post("/alerts", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/alerts"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def receiver(**kw):
    r = Receiver(SECRET, alertmanager_token=kw.pop("alertmanager_token", None), quiet=True, **kw)
    await r.start("127.0.0.1", 0)
    try:
        yield r
    finally:
        await r.stop()


async def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=body, headers=headers or {}) as resp:
            return resp.status, await resp.json()


# --- signatures -------------------------------------------------------------------------------------------------

def test_sign_matches_openssl_and_round_trips():
    body = b'{"id":"a"}'
    # printf '%s' '1760130000.{"id":"a"}' | openssl dgst -sha256 -hmac k
    assert sign(body, b"k", 1760130000) == \
        "t=1760130000,v1=96cb4f55001d39442c5a64496fb24512ba80821cfc923ac040ca68134ba13f38"
    header = sign(body, SECRET.encode(), 1760130000)
    assert re.fullmatch(r"t=1760130000,v1=[0-9a-f]{64}", header)
    verify(body, SECRET.encode(), header, now=1760130000 + 299)          # inside the tolerance
    verify(body, SECRET.encode(), f"t=1760130000,v1={'0' * 64},{header.split(',')[1]}", now=1760130000)  # rotation


@pytest.mark.parametrize("case, expect", [
    ("wrong secret", "signature mismatch"),
    ("tampered body", "signature mismatch"),
    ("stale", "stale timestamp"),
    ("future", "in the future"),
    ("missing", "missing X-Liqwatch-Signature"),
    ("malformed", "malformed"),
])
def test_verify_rejects_with_a_reason(case, expect):
    body, secret, t = b'{"id":"x","state":"firing"}', SECRET.encode(), 1_760_130_000
    header, now, checked = sign(body, secret, t), t + 5, body
    if case == "wrong secret":
        header = sign(body, b"another secret", t)
    elif case == "tampered body":
        checked = body.replace(b"firing", b"resolved")
    elif case == "stale":
        now = t + 301
    elif case == "future":
        now = t - 301
    elif case == "missing":
        header = None
    elif case == "malformed":
        header = "sha256=abc"
    with pytest.raises(SignatureError, match=expect) as e:
        verify(checked, secret, header, now=now, tolerance_s=300)
    assert e.value.reason and "\n" not in e.value.reason


def test_receiver_rejects_bad_signatures_and_replays_with_401_and_reason(caplog):
    async def go():
        async with receiver() as r:
            url = f"{r.url}/alerts"
            body = json.dumps(alert(1)).encode()
            now = int(time.time())
            good = {SIGNATURE_HEADER: sign(body, SECRET.encode(), now)}
            assert await post(url, body, good) == (200, {"duplicate": False, "id": alert(1)["id"], "state": "firing"})
            cases = {
                "replayed signature": (body, good),
                "signature mismatch": (body, {SIGNATURE_HEADER: sign(body, b"wrong", now)}),
                "stale timestamp": (body, {SIGNATURE_HEADER: sign(body, SECRET.encode(), now - 3600)}),
                "missing": (body, {}),
            }
            tampered = body.replace(b"critical", b"warning")
            cases["signature mismatch (tampered)"] = (tampered, {SIGNATURE_HEADER: good[SIGNATURE_HEADER]})
            for reason, (b, h) in cases.items():
                status, reply = await post(url, b, h)
                assert status == 401, reason
                assert reply["error"].startswith(reason.split(" (")[0]), (reason, reply)
            assert len(r.received) == 1 and r.rejected == len(cases)

    with caplog.at_level(logging.WARNING, logger="liqwatch.receiver"):
        run(go())
    assert sum("rejected POST /alerts" in m for m in caplog.messages) == 5
    assert any("replayed signature" in m for m in caplog.messages)


# --- sender -----------------------------------------------------------------------------------------------------

def test_sender_retries_500_with_backoff_then_delivers():
    attempts: list[tuple[float, dict]] = []

    async def flaky(request: web.Request) -> web.Response:
        body = await request.read()
        verify(body, SECRET.encode(), request.headers[SIGNATURE_HEADER], time.time())
        attempts.append((time.monotonic(), dict(request.headers)))
        if len(attempts) <= 2:
            return web.Response(status=500, text="try later")
        return web.json_response({"ok": True})

    async def go():
        m = Metrics()
        async with scripted_server(flaky) as url:
            s = sender_for({"ep": url}, m, backoff_initial_s=0.1, backoff_cap_s=1.0)
            await s.start()
            s.submit(alert(1))
            assert await s.drain(10) == 0
            await s.stop(1)
        return m

    m = run(go())
    assert len(attempts) == 3
    gaps = [b[0] - a[0] for a, b in zip(attempts, attempts[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, gaps   # 0.1 then 0.2 s, each × jitter in [0.5, 1]
    assert gaps[1] < 2.0
    assert [h[ATTEMPT_HEADER] for _, h in attempts] == ["1", "2", "3"]
    assert len({h[DELIVERY_HEADER] for _, h in attempts}) == 1          # one delivery id for the series
    assert {h[ALERT_ID_HEADER] for _, h in attempts} == {alert(1)["id"]}
    assert (count(m, "ep", "retry"), count(m, "ep", "delivered"), count(m, "ep", "failed")) == (2, 1, 0)
    assert queued(m, "ep") == 0


def test_4xx_fails_permanently_but_408_429_are_retried(caplog):
    seen: list[str] = []

    async def picky(request: web.Request) -> web.Response:
        a = json.loads(await request.read())
        seen.append(a["subject"])
        if a["subject"] == "A1":
            return web.Response(status=422, text="unknown field 'config_id'")
        if a["subject"] == "A2" and seen.count("A2") == 1:
            return web.Response(status=429, headers={"Retry-After": "0"})
        if a["subject"] == "A3" and seen.count("A3") == 1:
            return web.Response(status=408)
        return web.json_response({"ok": True})

    async def go():
        m = Metrics()
        async with scripted_server(picky) as url:
            s = sender_for({"ep": url}, m)
            await s.start()
            for n in (1, 2, 3, 4):
                s.submit(alert(n))
            assert await s.drain(10) == 0
            await s.stop(1)
        return m

    with caplog.at_level(logging.ERROR, logger="liqwatch.webhooks"):
        m = run(go())
    assert seen == ["A1", "A2", "A2", "A3", "A3", "A4"]               # A1 not retried; order kept
    assert (count(m, "ep", "failed"), count(m, "ep", "retry"), count(m, "ep", "delivered")) == (1, 2, 3)
    assert any("422" in msg and "unknown field 'config_id'" in msg and "A1" in msg for msg in caplog.messages)


def test_submit_never_blocks_while_the_endpoint_is_down(caplog):
    async def go():
        m = Metrics()
        s = sender_for({"down": f"http://127.0.0.1:{dead_port()}/alerts"}, m)
        await s.start()
        t0 = time.perf_counter()
        for n in range(2000):
            s.submit(alert(n))
        took = time.perf_counter() - t0
        await asyncio.sleep(0.3)                                         # a few refused attempts
        assert s.pending() == 2000 and queued(m, "down") == 2000
        left = await s.stop(drain_timeout=0.2)
        return m, took, left

    with caplog.at_level(logging.WARNING, logger="liqwatch.webhooks"):
        m, took, left = run(go())
    assert took < 0.5, took                                              # ~10 µs per submit
    assert left == 2000
    assert count(m, "down", "retry") >= 2 and count(m, "down", "delivered") == 0
    assert any("2000 alert(s) undelivered" in msg for msg in caplog.messages)
    assert any("cannot connect" in msg for msg in caplog.messages)
    assert not any(SECRET in msg for msg in caplog.messages)


def test_submit_never_raises():
    async def go():
        s = sender_for({"ep": f"http://127.0.0.1:{dead_port()}/alerts"}, Metrics())
        s.submit({"id": "x", "state": "firing", "value": float("nan")})  # non-finite → null, still queued
        s.submit({"id": object()})                                       # not JSON: logged, dropped
        assert s.pending() == 1
        await s.stop(0)

    run(go())


def test_submit_from_another_thread_is_handed_to_the_loop():
    async def go():
        async with receiver() as r:
            s = sender_for({"rx": f"{r.url}/alerts"}, Metrics())
            await s.start()
            await asyncio.to_thread(lambda: [s.submit(alert(n)) for n in range(5)])
            await asyncio.sleep(0)
            assert await s.drain(5) == 0
            await s.stop(1)
            return [a["subject"] for a in r.received]

    assert run(go()) == ["A0", "A1", "A2", "A3", "A4"]


def test_one_endpoint_down_does_not_delay_another_and_order_is_kept():
    async def go():
        m = Metrics()
        async with receiver() as r:
            s = sender_for({"up": f"{r.url}/alerts", "down": f"http://127.0.0.1:{dead_port()}/alerts"}, m)
            await s.start()
            sent = [alert(n // 2, "firing" if n % 2 == 0 else "resolved") for n in range(20)]
            for a in sent:
                s.submit(a)
            for _ in range(200):
                if s.pending("up") == 0:
                    break
                await asyncio.sleep(0.01)
            assert s.pending("up") == 0 and s.pending("down") == 20
            assert [(a["id"], a["state"]) for a in r.received] == [(a["id"], a["state"]) for a in sent]
            await s.stop(0)
        return m

    m = run(go())
    assert count(m, "up", "delivered") == 20 and count(m, "down", "retry") >= 1


def test_missing_or_empty_secret_env_is_a_clear_error():
    with pytest.raises(WebhookConfigError, match="'oncall'.*LW_NOT_SET"):
        WebhookSender([Endpoint("oncall", "http://127.0.0.1:1/alerts", "LW_NOT_SET")], Metrics(), environ={})
    with pytest.raises(WebhookConfigError, match="LW_EMPTY.*empty"):
        WebhookSender([Endpoint("oncall", "http://127.0.0.1:1/alerts", "LW_EMPTY")], Metrics(),
                      environ={"LW_EMPTY": ""})
    for bad in ("ftp://x/alerts", "http:///alerts", "127.0.0.1:8099/alerts"):
        with pytest.raises(WebhookConfigError, match="'oncall'.*http"):
            WebhookSender([Endpoint("oncall", bad, "LW_TEST_SECRET")], Metrics(), environ=ENV)


# --- receiver ---------------------------------------------------------------------------------------------------

def test_receiver_dedups_by_id_and_state(tmp_path):
    out = tmp_path / "alerts.jsonl"

    async def go():
        m = Metrics()
        async with receiver(out=out) as r:
            s = sender_for({"rx": f"{r.url}/alerts"}, m)
            await s.start()
            # The same firing alert twice (e.g. re-emitted after a worker restart), then its resolution.
            # The 2nd is byte-identical: the sender signs it with a later second so it is not taken for a replay.
            for a in (alert(7), alert(7), alert(7, "resolved")):
                s.submit(a)
            assert await s.drain(10) == 0
            await s.stop(1)
            # A hand-made retry of the resolution with a fresh signature: acknowledged as a duplicate.
            body = json.dumps(alert(7, "resolved")).encode()
            status, reply = await post(f"{r.url}/alerts", body,
                                       {SIGNATURE_HEADER: sign(body, SECRET.encode(), int(time.time()) - 10)})
            assert (status, reply["duplicate"]) == (200, True)
            async with aiohttp.ClientSession() as c:
                async with c.get(f"{r.url}/received", headers={"Authorization": f"Bearer {r.alertmanager_token}"}
                                 ) as resp:
                    listed = await resp.json()
                async with c.get(f"{r.url}/healthz") as resp:
                    health = await resp.json()
            return m, r, listed, health

    m, r, listed, health = run(go())
    assert [(a["id"], a["state"]) for a in listed] == [(alert(7)["id"], "firing"), (alert(7)["id"], "resolved")]
    assert r.duplicates == 2 and health == {"ok": True, "received": 2, "duplicates": 2, "rejected": 0}
    assert count(m, "rx", "delivered") == 3 and count(m, "rx", "failed") == 0   # a duplicate is a 2xx
    assert [json.loads(line) for line in out.read_text().splitlines()] == [alert(7), alert(7, "resolved")]


def _am_payload(status: str, *fingerprints: str, starts: str = "2025-10-10T21:20:00.123456789Z") -> dict:
    return {
        "version": "4", "groupKey": '{}:{alertname="LiqwatchDepeg"}', "truncatedAlerts": 0, "status": status,
        "receiver": "liqwatch-webhook", "groupLabels": {"alertname": "LiqwatchDepeg"},
        "commonLabels": {"alertname": "LiqwatchDepeg"}, "commonAnnotations": {}, "externalURL": "http://am:9093",
        "alerts": [{"status": status, "labels": {"alertname": "LiqwatchDepeg", "severity": "critical", "asset": fp},
                    "annotations": {"summary": f"{fp} index 31% below redemption value"}, "startsAt": starts,
                    "endsAt": "2025-10-10T21:40:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus/graph", "fingerprint": fp} for fp in fingerprints],
    }


def test_alertmanager_payload_accepted_and_deduped(tmp_path):
    out = tmp_path / "am.jsonl"

    async def go():
        async with receiver(out=out, alertmanager_token="tok") as r:
            url = f"{r.url}/alertmanager"
            firing = json.dumps(_am_payload("firing", "USDe", "WBETH")).encode()
            auth = {"Authorization": "Bearer tok"}
            assert (await post(url, firing))[0] == 401                       # token required
            assert (await post(url, firing, {"Authorization": "Bearer nope"}))[0] == 401
            assert await post(url, firing, auth) == (200, {"accepted": 2, "duplicates": 0, "duplicate": False})
            # Alertmanager's repeat_interval re-sends the same group: acknowledged, not recorded again.
            assert await post(url, firing, auth) == (200, {"accepted": 0, "duplicates": 2, "duplicate": True})
            resolved = json.dumps(_am_payload("resolved", "USDe")).encode()
            assert (await post(url, resolved, auth))[1]["accepted"] == 1
            again = json.dumps(_am_payload("firing", "USDe", starts="2025-10-10T22:00:00Z")).encode()
            assert (await post(url, again, auth))[1]["accepted"] == 1        # a new episode of the same labels
            assert (await post(url, b"[1,2]", auth))[0] == 400
            return r

    r = run(go())
    got = [(a["fingerprint"], a["status"]) for a in r.received]
    assert got == [("USDe", "firing"), ("WBETH", "firing"), ("USDe", "resolved"), ("USDe", "firing")]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and all(x["source"] == "alertmanager" for x in lines)
    assert lines[0]["labels"]["asset"] == "USDe" and lines[0]["annotations"]["summary"].startswith("USDe index")
    assert r.duplicates == 2 and r.rejected == 2


def test_alertmanager_without_token_env_takes_the_token_derived_from_the_secret(monkeypatch):
    monkeypatch.delenv(rx.ALERTMANAGER_TOKEN_ENV, raising=False)
    # printf alertmanager | openssl dgst -sha256 -hmac s3cret-for-tests
    derived = "fef43b3a9ed213fca34144c65172d013b044f0f1fbfd72b589218ac90637c7ad"

    async def go():
        r = Receiver(SECRET, quiet=True)
        await r.start("127.0.0.1", 0)
        try:
            body = json.dumps(_am_payload("firing", "BNSOL")).encode()
            return (await post(f"{r.url}/alertmanager", body))[0], \
                (await post(f"{r.url}/alertmanager", body, {"Authorization": f"Bearer {derived}"}))[0]
        finally:
            await r.stop()

    assert run(go()) == (401, 200)


def test_receiver_prints_one_line_per_alert():
    from rich.console import Console

    async def go(console):
        r = Receiver(SECRET, console=console, alertmanager_token=None)
        await r.start("127.0.0.1", 0)
        try:
            body = json.dumps(alert(3)).encode()
            await post(f"{r.url}/alerts", body, {SIGNATURE_HEADER: sign(body, SECRET.encode(), int(time.time()))})
        finally:
            await r.stop()

    console = Console(record=True, width=60, soft_wrap=True)
    run(go(console))
    text = console.export_text()
    assert text.count("\n") == 1
    assert "2025-10-10 21:00:00Z" in text and "CRITICAL" in text and "depeg  A3  firing  A3 index 0.69" in text


def test_receiver_binds_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        run(Receiver(SECRET).start("0.0.0.0", 0))


def test_cli_missing_secret_env_names_it(monkeypatch):
    import typer

    monkeypatch.delenv("LW_RX_SECRET_UNSET", raising=False)
    app = typer.Typer()
    app.callback()(lambda: None)
    rx.register(app)
    res = CliRunner().invoke(app, ["webhook-receiver", "--secret-env", "LW_RX_SECRET_UNSET"])
    assert res.exit_code == 2
    assert "LW_RX_SECRET_UNSET" in res.output and "not set" in res.output
    helptext = CliRunner().invoke(app, ["webhook-receiver", "--help"]).output
    assert "openssl dgst -sha256 -hmac" in helptext and "liqwatch webhook-receiver" in helptext


def test_receiver_records_a_re_escalation_and_drops_a_retry():
    """critical → warning → critical again is two `firing critical` events of one episode (other ts); a retry of
    the same event (same ts, new signature) is a duplicate."""
    async def go():
        async with receiver() as r:
            url = f"{r.url}/alerts"
            first = alert(1)
            again = dict(first, ts=first["ts"] + 60_000)
            now = int(time.time())
            for k, (body, dup) in enumerate(((first, False), (first, True), (again, False))):
                raw = json.dumps(body).encode()  # a retry is signed afresh (a replayed signature is refused)
                status, reply = await post(url, raw, {SIGNATURE_HEADER: sign(raw, SECRET.encode(), now - k)})
                assert (status, reply["duplicate"]) == (200, dup)
            assert [a["ts"] for a in r.received] == [first["ts"], again["ts"]] and r.duplicates == 1

    run(go())
