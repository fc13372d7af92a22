"""The webhook receiver's doors (issue 11): every endpoint but /healthz needs a credential, bad bodies get a 4xx
and one log line (never a 500 or a traceback), idle and slow clients are cut off, nothing printed can drive the
terminal, dedup survives a restart, and each stack's Alertmanager notifies that stack's receiver with its token.

The real Receiver on 127.0.0.1 (free ports), in-process or as the `liqwatch webhook-receiver` subprocess; real
aiohttp clients and raw sockets; the stack's rendered Alertmanager config checked by the real amtool.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import yaml
from rich.console import Console

from liqwatch.tools import stack as lwstack
from liqwatch.sinks.metrics import Metrics
from liqwatch.tools.receiver import ALERTMANAGER_TOKEN_ENV, Receiver
from liqwatch.sinks.webhooks import SIGNATURE_HEADER, Endpoint, WebhookSender, sign

ROOT = Path(__file__).resolve().parents[2]
SECRET = "doors-secret"
# printf alertmanager | openssl dgst -sha256 -hmac doors-secret
DERIVED = hmac.new(SECRET.encode(), b"alertmanager", hashlib.sha256).hexdigest()
AMTOOL = Path("/usr/bin/amtool")


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@asynccontextmanager
async def receiver(**kw):
    kw.setdefault("quiet", True)
    r = Receiver(SECRET, **kw)
    await r.start("127.0.0.1", 0)
    try:
        yield r
    finally:
        await r.stop()


def alert(n: int = 1, **fields) -> dict:
    return {"type": "alert", "id": f"depeg:A{n}:1760130000000", "kind": "depeg", "severity": "critical",
            "subject": f"A{n}", "state": "firing", "ts": 1760130000000 + n, "summary": f"A{n} depegs", **fields}


def signed(body: bytes, ts: int | None = None) -> dict:
    return {SIGNATURE_HEADER: sign(body, SECRET.encode(), int(time.time()) if ts is None else ts)}


def am_payload(status: str = "firing", summary: str = "USDe index 31% below redemption value") -> dict:
    return {"version": "4", "status": status, "receiver": "liqwatch-webhook", "groupKey": "{}:{}",
            "alerts": [{"status": status, "fingerprint": "f00d", "startsAt": "2025-10-10T21:20:00Z",
                        "endsAt": "0001-01-01T00:00:00Z", "labels": {"alertname": "LiqwatchAlert", "severity":
                        "critical", "kind": "depeg", "subject": "USDe"}, "annotations": {"summary": summary}}]}


async def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, data=body, headers=headers or {}) as resp:
            return resp.status, await resp.json(content_type=None)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def no_tracebacks(caplog) -> None:
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]


# --- credentials ------------------------------------------------------------------------------------------------

def test_every_endpoint_but_healthz_needs_a_credential(monkeypatch, caplog):
    monkeypatch.delenv(ALERTMANAGER_TOKEN_ENV, raising=False)

    async def go():
        async with receiver() as r:
            am = json.dumps(am_payload()).encode()
            body = json.dumps(alert()).encode()
            got = {
                "alerts unsigned": (await request("POST", f"{r.url}/alerts", body))[0],
                "am none": await request("POST", f"{r.url}/alertmanager", am),
                "am wrong": (await request("POST", f"{r.url}/alertmanager", am, bearer("nope")))[0],
                "am basic": (await request("POST", f"{r.url}/alertmanager", am,
                                           {"Authorization": f"Basic {DERIVED}"}))[0],
                "received none": (await request("GET", f"{r.url}/received"))[0],
                "received wrong": (await request("GET", f"{r.url}/received", headers=bearer(DERIVED[:-1])))[0],
                "healthz": (await request("GET", f"{r.url}/healthz"))[0],
                "am derived": await request("POST", f"{r.url}/alertmanager", am, bearer(DERIVED)),
                "received derived": await request("GET", f"{r.url}/received", headers=bearer(DERIVED)),
            }
            return got, r.rejected

    (got, rejected) = run(go())
    assert got["am none"] == (401, {"error": "missing Authorization: Bearer token"})
    assert [got[k] for k in ("alerts unsigned", "am wrong", "am basic", "received none", "received wrong")] == [401] * 5
    assert got["healthz"] == 200
    assert got["am derived"] == (200, {"accepted": 1, "duplicates": 0, "duplicate": False})
    assert got["received derived"][0] == 200 and got["received derived"][1][0]["fingerprint"] == "f00d"
    assert rejected == 6
    assert sum("rejected GET /received" in m for m in caplog.messages) == 2


def test_the_env_token_replaces_the_derived_one(monkeypatch):
    monkeypatch.setenv(ALERTMANAGER_TOKEN_ENV, "from-the-env")

    async def go():
        async with receiver() as r:
            return [(await request("GET", f"{r.url}/received", headers=bearer(t)))[0]
                    for t in (DERIVED, "from-the-env")]

    assert run(go()) == [401, 200]


def test_undecodable_authorization_bytes_are_a_401_not_a_500():
    async def go():
        async with receiver() as r:
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            writer.write(b"GET /received HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
                         b"Connection: close\r\n\r\n")
            await writer.drain()
            reply = await reader.read()
            writer.close()
            return reply

    assert run(go()).startswith(b"HTTP/1.1 401 ")


# --- the console ------------------------------------------------------------------------------------------------

def test_terminal_escapes_in_an_alert_are_printed_escaped(tmp_path):
    evil = "USDe \x1b[31mred\x1b[0m \x1b]0;owned\x07 \x9b2J back\rspace\x08 \u202eevil\n2nd line"

    async def go(console):
        async with receiver(console=console, quiet=False, out=tmp_path / "out.jsonl") as r:
            body = json.dumps(alert(summary=evil, subject="A\x1bB", kind="depeg\x1b[2J")).encode()
            assert (await request("POST", f"{r.url}/alerts", body, signed(body)))[0] == 200
            am = json.dumps(am_payload(summary=evil)).encode()
            assert (await request("POST", f"{r.url}/alertmanager", am, bearer(DERIVED)))[0] == 200

    buf = io.StringIO()
    # no colours: any ESC in the output would be the payload's
    run(go(Console(file=buf, width=300, soft_wrap=True, color_system=None, force_terminal=False)))
    text = buf.getvalue()
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]", text), repr(text)
    assert text.count("\n") == 2  # one line per alert, the payload's newline included
    assert r"USDe \x1b[31mred\x1b[0m \x1b]0;owned\x07 \x9b2J back\rspace\x08 \u202eevil\n2nd line" in text
    assert r"depeg\x1b[2J  A\x1bB" in text
    # the record keeps what was sent
    first = (tmp_path / "out.jsonl").read_text().splitlines()[0]
    assert json.loads(first)["summary"] == evil


# --- bad bodies -------------------------------------------------------------------------------------------------

def test_deep_or_malformed_json_is_a_400_without_a_traceback(caplog):
    deep_open = b"[" * 5000
    deep_closed = b"[" * 5000 + b"]" * 5000
    deep_33 = b'{"a":' * 33 + b"1" + b"}" * 33
    cases = [deep_open, deep_closed, deep_33, b'{"id": "x", "state": NaN}', b"\xff\xfe{", b"{"]

    async def go():
        async with receiver() as r:
            out = []
            for body in cases:
                out.append(await request("POST", f"{r.url}/alerts", body, signed(body)))
                out.append(await request("POST", f"{r.url}/alertmanager", body, bearer(DERIVED)))
            ok = json.dumps(alert(2, value={"a": {"b": {"c": [1, [2, [3]]]}}})).encode()
            out.append(await request("POST", f"{r.url}/alerts", ok, signed(ok)))
            return out

    with caplog.at_level(logging.DEBUG):
        got = run(go())
    *bad, ok = got
    assert [status for status, _ in bad] == [400] * len(bad), bad
    assert all("nested deeper than 32 levels" in reply["error"] for _, reply in bad[:6]), bad[:6]
    assert ok[0] == 200
    no_tracebacks(caplog)


def test_a_deep_alert_fails_once_at_the_sender_instead_of_being_retried_for_ever(caplog):
    async def go():
        async with receiver() as r:
            m = Metrics()
            s = WebhookSender([Endpoint("rx", f"{r.url}/alerts", "LW_DOORS")], m, environ={"LW_DOORS": SECRET},
                              backoff_initial_s=0.05, backoff_cap_s=0.1)
            await s.start()
            nested: list = []
            for _ in range(500):  # deeper than the receiver takes, shallow enough for json.dumps
                nested = [nested]
            s.submit(alert(value=nested))
            assert await s.drain(10) == 0
            await s.stop(1)
            return s.stats()["rx"]

    stats = run(go())
    assert (stats["failed"], stats["retries"], stats["delivered"]) == (1, 0, 0)


def test_a_body_over_the_limit_is_a_413(caplog):
    big = b"x" * (64 * 1024 + 1)

    async def chunks():
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    async def go():
        async with receiver(max_body_bytes=64 * 1024) as r:
            out = [await request("POST", f"{r.url}/alerts", big, signed(big)),                   # Content-Length
                   await request("POST", f"{r.url}/alerts", chunks(), signed(big)),               # chunked
                   await request("POST", f"{r.url}/alertmanager", big, bearer(DERIVED))]
            out.append(await request("GET", f"{r.url}/healthz"))
            return out

    with caplog.at_level(logging.DEBUG):
        *too_big, health = run(go())
    assert [status for status, _ in too_big] == [413, 413, 413], too_big
    assert all("65536-byte limit" in reply["error"] for _, reply in too_big)
    assert health[0] == 200
    no_tracebacks(caplog)


def test_the_default_body_limit_is_one_mib():
    async def go():
        async with receiver() as r:
            body = b" " * (1024 ** 2 + 1)
            return (await request("POST", f"{r.url}/alertmanager", body, bearer(DERIVED)))[0]

    assert run(go()) == 413


def test_malformed_http_is_a_400_in_one_log_line(caplog):
    async def go():
        async with receiver() as r:
            replies = []
            for raw in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                        b"POST /alerts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
                        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20000 + b"\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
                writer.write(raw)
                await writer.drain()
                replies.append(await asyncio.wait_for(reader.read(), 10))
                writer.close()
            return replies

    with caplog.at_level(logging.DEBUG):
        replies = run(go())
    assert [reply.split(b" ")[1] for reply in replies] == [b"400", b"400", b"400"], replies
    no_tracebacks(caplog)


def test_a_client_gone_mid_body_leaves_no_traceback(caplog):
    async def go():
        async with receiver() as r:
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            writer.write(b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"id\":")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.transport.abort()
            await asyncio.sleep(0.3)
            return (await request("GET", f"{r.url}/healthz"))[0]

    with caplog.at_level(logging.DEBUG):
        assert run(go()) == 200
    no_tracebacks(caplog)


# --- idle and slow clients --------------------------------------------------------------------------------------

def test_idle_and_slow_connections_are_closed():
    n = 100

    async def go():
        async with receiver(idle_timeout_s=1.0, body_timeout_s=1.0) as r:
            t0 = time.monotonic()

            async def closed_by_server(reader: asyncio.StreamReader) -> tuple[bytes, float] | None:
                """(what the server sent, when it closed), or None if it still holds the connection after 8 s."""
                try:
                    return await asyncio.wait_for(reader.read(), 8), time.monotonic() - t0
                except asyncio.TimeoutError:
                    return None

            idle = [await asyncio.open_connection("127.0.0.1", r.port) for _ in range(n)]
            # headers dribbled, never finished
            dribble = await asyncio.open_connection("127.0.0.1", r.port)
            dribble[1].write(b"POST /alerts HTTP/1.1\r\nHost: x\r\n")
            # a body that never arrives in full
            slow = await asyncio.open_connection("127.0.0.1", r.port)
            slow[1].write(b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"id\":")
            # a finished request on a keep-alive connection, then silence
            kept = await asyncio.open_connection("127.0.0.1", r.port)
            kept[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = await kept[0].readuntil(b"}")
            conns = [*idle, dribble, slow, kept]
            results = await asyncio.gather(*(closed_by_server(reader) for reader, _ in conns))
            for _, writer in conns:
                writer.close()
            health = await request("GET", f"{r.url}/healthz")
            return first, results, health

    first, results, health = run(go())
    assert b"200 OK" in first
    assert None not in results, f"{results.count(None)} connection(s) still open after 8 s"
    sent, when = zip(*results)
    assert sent[:n + 1] == (b"",) * (n + 1)          # idle and dribbling: closed without a word...
    assert all(0.9 < t < 3 for t in when[:n + 1]), when[:n + 1]     # ...after the 1 s idle timeout
    assert sent[n + 1].startswith(b"HTTP/1.1 408 ") and b"not received within 1 s" in sent[n + 1]
    assert 0.9 < when[n + 1] < 5, when[n + 1]      # 1 s for the body, then at most 2 s of lingering
    assert sent[n + 2] == b"" and 0.9 < when[n + 2] < 3
    assert health[0] == 200


# --- dedup across restarts --------------------------------------------------------------------------------------

def test_dedup_survives_a_restart(tmp_path, caplog):
    out = tmp_path / "alerts.jsonl"
    first, am = alert(1), json.dumps(am_payload()).encode()

    async def go():
        body = json.dumps(first).encode()
        async with receiver(out=out) as r:
            assert (await request("POST", f"{r.url}/alerts", body, signed(body, int(time.time()) - 1)))[1] == \
                {"duplicate": False, "id": first["id"], "state": "firing"}
            assert (await request("POST", f"{r.url}/alertmanager", am, bearer(DERIVED)))[1]["accepted"] == 1
        with out.open("a") as f:
            f.write('{"id": "cut short by a cra')  # a crash mid-line
        async with receiver(out=out) as r:          # a new receiver on the same file
            retry = await request("POST", f"{r.url}/alerts", body, signed(body))  # a fresh signature
            am_retry = await request("POST", f"{r.url}/alertmanager", am, bearer(DERIVED))
            other = json.dumps(alert(2)).encode()
            new = await request("POST", f"{r.url}/alerts", other, signed(other))
            return retry, am_retry, new, r.received, r.duplicates

    with caplog.at_level(logging.INFO, logger="liqwatch.receiver"):
        retry, am_retry, new, received, dups = run(go())
    assert retry == (200, {"duplicate": True, "id": first["id"], "state": "firing"})
    assert am_retry == (200, {"accepted": 0, "duplicates": 1, "duplicate": True})
    assert new[1]["duplicate"] is False and [a["id"] for a in received] == [alert(2)["id"]] and dups == 2
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and lines[2] == '{"id": "cut short by a cra'   # the next record on a line of its own
    assert [json.loads(x).get("id") for x in (lines[0], lines[3])] == [first["id"], alert(2)["id"]]
    assert any("1 line(s)" in m and "not JSON" in m for m in caplog.messages)


# --- the real CLI -----------------------------------------------------------------------------------------------

def test_cli_prints_no_escape_and_logs_no_traceback(tmp_path):
    env = {**os.environ, "LW_DOORS_SECRET": SECRET, "COLUMNS": "300", "TERM": "xterm", "FORCE_COLOR": "",
           "NO_COLOR": "1"}
    env.pop(ALERTMANAGER_TOKEN_ENV, None)
    proc = subprocess.Popen([sys.executable, "-m", "liqwatch", "webhook-receiver", "--port", "0", "--secret-env",
                             "LW_DOORS_SECRET", "--out", str(tmp_path / "out.jsonl")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stderr.readline().decode()
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert m, line
        assert "bearer token derived from the secret" in line
        url = m.group(1)

        async def go():
            body = json.dumps(alert(summary="\x1b[31mred\x1b[0m")).encode()
            deep = b"[" * 5000
            return [(await request("POST", f"{url}/alerts", body, signed(body)))[0],
                    (await request("POST", f"{url}/alerts", deep, signed(deep)))[0],
                    (await request("POST", f"{url}/alertmanager", deep, bearer(DERIVED)))[0],
                    (await request("POST", f"{url}/alertmanager", b"{}"))[0]]

        statuses = run(go())
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    stdout, stderr = stdout.decode(), stderr.decode()
    assert statuses == [200, 400, 400, 401]
    assert "\x1b" not in stdout and r"\x1b[31mred\x1b[0m" in stdout, stdout
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert stderr.count("nested deeper than 32 levels") == 2 and "missing Authorization" in stderr, stderr
    assert proc.returncode == 0


# --- the stack's Alertmanager -----------------------------------------------------------------------------------

def _stack(tmp_path: Path, receiver_port: int) -> lwstack.StackConfig:
    return lwstack.StackConfig(state_dir=tmp_path / "state", ports=lwstack.StackPorts(receiver=receiver_port))


def test_the_stack_notifies_its_own_receiver_with_its_token(tmp_path, monkeypatch):
    monkeypatch.delenv(ALERTMANAGER_TOKEN_ENV, raising=False)
    monkeypatch.delenv(lwstack.WEBHOOK_SECRET_ENV, raising=False)
    cfg = _stack(tmp_path, 18099)
    lwstack._write_receiver_token(cfg)
    lwstack._render_alertmanager_config(cfg)
    rendered = cfg.state_dir / "config" / "alertmanager.yml"
    hook = yaml.safe_load(rendered.read_text())["receivers"][0]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:18099/alertmanager" == f"{lwstack.receiver_url(cfg)}/alertmanager"
    assert hook["http_config"]["authorization"] == {"type": "Bearer",
                                                    "credentials_file": str(lwstack.receiver_token_file(cfg))}
    token_file = lwstack.receiver_token_file(cfg)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    random_token = lwstack.receiver_token(cfg)
    assert re.fullmatch("[0-9a-f]{64}", random_token)
    lwstack._write_receiver_token(cfg)
    assert lwstack.receiver_token(cfg) == random_token          # kept across `up`s
    monkeypatch.setenv(lwstack.WEBHOOK_SECRET_ENV, SECRET)
    lwstack._write_receiver_token(cfg)
    assert lwstack.receiver_token(cfg) == DERIVED == Receiver(SECRET).alertmanager_token  # one secret for both
    monkeypatch.setenv(ALERTMANAGER_TOKEN_ENV, "from-the-env")
    lwstack._write_receiver_token(cfg)
    assert lwstack.receiver_token(cfg) == "from-the-env"
    if not AMTOOL.exists():
        pytest.fail(f"{AMTOOL} is missing: scripts/setup-system.sh installs it (Debian prometheus-alertmanager)")
    done = subprocess.run([str(AMTOOL), "check-config", str(rendered)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_stack_receiver_port_is_kept_in_stack_json(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "stack.json").write_text(json.dumps({"ports": {"kafka": 1, "controller": 2, "prometheus": 3,
                                                            "alertmanager": 4}}))
    assert lwstack.StackConfig.resolve(state).ports.receiver == 8099  # a stack.json from before the receiver port
    cfg = lwstack.StackConfig.resolve(state, receiver_port=18100)
    lwstack._write_stack_json(cfg, "4.0.2")
    assert lwstack.load(state).ports.receiver == 18100
    assert json.loads((state / "stack.json").read_text())["receiver_url"] == "http://127.0.0.1:18100"
    with pytest.raises(lwstack.StackError, match="stack up"):
        lwstack.receiver_token(cfg)


def test_shipped_alertmanager_configs_carry_the_bearer_credential():
    for name in ("alertmanager.yml", "alertmanager.compose.yml"):
        conf = yaml.safe_load((ROOT / "liqwatch" / "data" / "dashboards" / name).read_text())
        hooks = [h for r in conf["receivers"] for h in r.get("webhook_configs", [])]
        assert hooks and all(h["http_config"]["authorization"]["type"] == "Bearer"
                             and h["http_config"]["authorization"]["credentials_file"] for h in hooks), name
    # compose: Alertmanager writes the receiver's token where its config reads it
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    token = compose["webhook-receiver"]["environment"][ALERTMANAGER_TOKEN_ENV]
    assert compose["alertmanager"]["environment"][ALERTMANAGER_TOKEN_ENV] == token
    assert "> /alertmanager/receiver.token" in " ".join(compose["alertmanager"]["entrypoint"])
    assert compose["webhook-receiver"]["environment"]["LIQWATCH_WEB_BIND"] == "0.0.0.0"
