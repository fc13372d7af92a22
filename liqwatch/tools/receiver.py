"""A local webhook receiver for liqwatch alerts and Alertmanager notifications (`liqwatch webhook-receiver`).

    r = Receiver(b"s3cret", tolerance_s=300, out=Path("alerts.jsonl"))
    port = await r.start("127.0.0.1", 0)         # 0 = any free port; only loopback addresses are accepted
    ...                                           # r.received: everything accepted by this run, in arrival order
    await r.stop()

Worked example (bash): the receiver and Alertmanager share one secret, LIQWATCH_WEBHOOK_SECRET.

    export LIQWATCH_WEBHOOK_SECRET=s3cret
    liqwatch webhook-receiver --out alerts.jsonl &
    token=$(printf alertmanager | openssl dgst -sha256 -hmac "$LIQWATCH_WEBHOOK_SECRET" | awk '{print $NF}')
    curl -s 127.0.0.1:8099/received                                  # 401 {"error": "missing Authorization: ..."}
    curl -s 127.0.0.1:8099/received -H "Authorization: Bearer $token"  # [...]

Every endpoint but /healthz needs a credential (bound to 127.0.0.1 only):
    POST /alerts        liqwatch webhooks: X-Liqwatch-Signature checked (liqwatch.sinks.webhooks.verify), stale timestamps
                        and replayed signatures rejected with 401 {"error": reason}; deduplicated by
                        (id, state, severity, ts): a repeat gets 200 {"duplicate": true} (a retry after a lost
                        response is normal); an episode that steps down and escalates again is a new event
                        (another ts), not a repeat.
    POST /alertmanager  Alertmanager webhook_config payloads (version 4), with `Authorization: Bearer <token>`
                        (Alertmanager cannot sign: its webhook_config's http_config.authorization sends the token);
                        deduplicated per alert by (fingerprint, startsAt, status): Alertmanager's repeat
                        notifications are dropped, a new episode of the same labels (new startsAt) is kept.
    GET  /received      JSON list of everything this run accepted; the same bearer token.
    GET  /healthz       {"ok": true, "received": n, "duplicates": n, "rejected": n}; no credential (counts only).

The bearer token is $LIQWATCH_ALERTMANAGER_TOKEN when set, else derived from the HMAC secret:
hex HMAC-SHA256(secret, "alertmanager") (liqwatch.sinks.webhooks.alertmanager_token), so one secret configures both.
`liqwatch stack up` writes the token its Alertmanager sends to <state>/config/receiver.token (liqwatch.tools.stack).

Bad requests get a 4xx with {"error": reason} and one log line, never a 500 or a traceback: a body over
`max_body_bytes` (1 MiB) 413, JSON that does not parse or nests deeper than 32 levels 400, a body that does not
arrive within `body_timeout_s` (10 s) 408. A connection that sends no request for `idle_timeout_s` (5 s) is closed.

Every accepted alert is printed as one line (UTC time, severity, kind, subject, state, summary; control characters
such as ESC shown escaped, `\\x1b`, so a payload cannot drive the terminal) and appended to `out` as one JSON line;
Alertmanager alerts are recorded as {"source": "alertmanager", ...}. On start the dedup keys of what `out` already
holds are read back, so a restarted receiver still answers a retry with {"duplicate": true} (without `out`, dedup
lasts one run).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from rich.console import Console
from rich.markup import escape

from liqwatch.sinks.webhooks import SIGNATURE_HEADER, ReplayGuard, SignatureError, verify
from liqwatch.sinks.webhooks import alertmanager_token as derive_token

log = logging.getLogger("liqwatch.receiver")
err = Console(stderr=True, soft_wrap=True)

ALERTMANAGER_TOKEN_ENV = "LIQWATCH_ALERTMANAGER_TOKEN"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_BODY_BYTES = 1024 ** 2      # an alert is < 2 KiB, an Alertmanager group a few KiB
MAX_JSON_DEPTH = 32             # an Alertmanager payload nests 3 deep
IDLE_TIMEOUT_S = 5.0
BODY_TIMEOUT_S = 10.0
LINGER_S = 2.0
_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
_STATE_STYLE = {"firing": "red", "resolved": "green"}
_FROM_ENV: Any = object()
# C0, DEL and C1 (ESC and CSI start terminal escapes; CR/BS rewrite the line), bidi overrides (text that reads
# differently than it is) and lone surrogates (not encodable: they would crash the console write).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(value: Any) -> str:
    """`value` as text that is safe on a terminal: control characters shown as Python escapes ('\\x1b')."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def load_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON (no NaN/Infinity) nested at most `max_depth` deep; ValueError with a one-line reason."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        doc = json.loads(body, parse_constant=no_constant)
    except RecursionError:  # the C decoder stops at the interpreter's recursion limit (~1000 levels)
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8 JSON") from None
    except ValueError as e:
        raise ValueError(f"body is not JSON: {e}") from None
    stack = [(doc, 1)]
    while stack:  # iterative: the check itself must not recurse
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > max_depth:
            raise ValueError(f"JSON nested deeper than {max_depth} levels")
        stack.extend((c, depth + 1) for c in children)
    return doc


def dedup_key(record: dict) -> str:
    """The dedup key of an accepted record, the same whether computed from the request or from its line in `out`."""
    if record.get("source") == "alertmanager":
        parts = ["alertmanager", record.get("fingerprint"), record.get("startsAt"), record.get("status")]
    else:  # an episode may escalate or step down (another "firing" with the same id): severity is part of the key
        parts = ["alert", record.get("id"), record.get("state"), record.get("severity"), record.get("ts")]
    return json.dumps(parts, sort_keys=True, separators=(",", ":"))


def _utc(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(float(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return "????-??-?? ??:??:??Z"


def _iso_utc(value: Any) -> str:
    """Alertmanager RFC 3339 time → same display as _utc; its zero time (0001-01-01) means 'not yet'."""
    if not isinstance(value, str) or value.startswith("0001-"):
        return "-" * 20
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        # Go prints nanoseconds; Python < 3.11 forms aside, trim to microseconds and retry.
        head, dot, rest = value.partition(".")
        frac = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(frac):]
        try:
            dt = datetime.fromisoformat(f"{head}.{frac[:6] or '0'}{tz}".replace("Z", "+00:00"))
        except ValueError:
            return value[:20]
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _json_error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None)


class _Refused(Exception):
    """A request the receiver will not take: answered `status` {"error": reason} by the middleware."""

    def __init__(self, status: int, reason: str, *, close: bool = False, **headers: str):
        super().__init__(reason)
        self.status, self.reason, self.close, self.headers = status, reason, close, headers


class _ClientFaultLog(logging.LoggerAdapter):
    """aiohttp logs a malformed request (bad request line, header, chunk) with a traceback; the client is at fault,
    one line says it. Anything else (a bug here) keeps its traceback."""

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            self.warning(f"webhook receiver: {msg} ({exc.code}): %s", *args,
                         printable(" ".join(str(exc.message).split())), **kwargs)
        else:
            self.error(msg, *args, exc_info=exc_info, **kwargs)


class Receiver:
    """In-process webhook receiver (tests, the demo, `liqwatch webhook-receiver`). See the module docstring.

    `alertmanager_token`: the bearer token of /alertmanager and /received; default $LIQWATCH_ALERTMANAGER_TOKEN,
    and when that is unset (or None is given) the token derived from `secret`. There is no way to turn it off."""

    def __init__(self, secret: bytes | str, tolerance_s: float = 300, out: Path | str | None = None, *,
                 alertmanager_token: str | None = _FROM_ENV, console: Console | None = None, quiet: bool = False,
                 clock: Callable[[], float] = time.time, max_body_bytes: int = MAX_BODY_BYTES,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, body_timeout_s: float = BODY_TIMEOUT_S):
        self.secret = secret.encode() if isinstance(secret, str) else bytes(secret)
        if not self.secret:
            raise ValueError("webhook secret is empty")
        self.tolerance_s = float(tolerance_s)
        self.out = Path(out) if out is not None else None
        if alertmanager_token is _FROM_ENV:
            alertmanager_token = os.environ.get(ALERTMANAGER_TOKEN_ENV)
        self.token_source = f"${ALERTMANAGER_TOKEN_ENV}" if alertmanager_token else "derived from the secret"
        self.alertmanager_token: str = alertmanager_token or derive_token(self.secret)
        self.max_body_bytes = int(max_body_bytes)
        self.idle_timeout_s = float(idle_timeout_s)
        self.body_timeout_s = float(body_timeout_s)
        self.console = console or Console(soft_wrap=True, highlight=False)
        self.quiet = quiet
        self.clock = clock
        self.received: list[dict] = []
        self.duplicates = 0
        self.rejected = 0
        self._seen: set[str] = set()
        self._replay = ReplayGuard(self.tolerance_s)
        self._out_file = None
        self._runner: web.AppRunner | None = None
        self.host: str | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        # client_max_size: aiohttp answers 413 itself once a body outgrows it (chunked bodies included)
        app = web.Application(middlewares=[self._refusals], client_max_size=self.max_body_bytes)
        app.router.add_post("/alerts", self._alerts)
        app.router.add_post("/alertmanager", self._alertmanager)
        app.router.add_get("/received", self._received)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 8099, container: bool = False) -> int:
        """Listen on host:port (loopback only, unless `container`: inside a container network, as
        docker-compose.yml runs it; port 0 = any free port); returns the port. OSError if it is taken."""
        if host not in LOOPBACK and not container:
            raise ValueError(f"the webhook receiver binds to loopback only (127.0.0.1, localhost, ::1), not '{host}'")
        if self.out is not None and self._out_file is None:
            complete = self._load_seen()
            # backslashreplace: a lone surrogate (valid in a JSON string) is written as its JSON escape
            self._out_file = self.out.open("a", encoding="utf-8", errors="backslashreplace")
            if not complete:  # a line cut short by a crash: the next record starts on a line of its own
                self._out_file.write("\n")
        # keepalive_timeout also runs from the moment a connection opens (aiohttp 3.14 here): a client that sends
        # nothing, or dribbles its headers, is closed after idle_timeout_s; a slow body is bounded in _body, and
        # what it still sends after its 408/413 is read (so the answer is not lost to a reset) for 2 s, not 10.
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               keepalive_timeout=self.idle_timeout_s, lingering_time=LINGER_S,
                               logger=_ClientFaultLog(log, {}))
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._out_file is not None:
            self._out_file.close()
            self._out_file = None

    # -- recording --

    def _load_seen(self) -> bool:
        """Remember the dedup key of every record already in `out`; False if its last line is unterminated."""
        try:
            with self.out.open("rb") as f:
                data = f.read()
        except FileNotFoundError:
            return True
        bad = 0
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                record = None
            if isinstance(record, dict):
                self._seen.add(dedup_key(record))
            else:
                bad += 1
        if bad:
            log.warning("webhook receiver: %d line(s) of %s are not JSON records; skipped", bad, self.out)
        if self._seen:
            log.info("webhook receiver: %d alert(s) already in %s: their retries are duplicates", len(self._seen),
                     self.out)
        return not data or data.endswith(b"\n")

    def _accept(self, key: str, record: dict) -> None:
        """Persist first (an I/O error raises → 500 → the sender retries), then remember the key."""
        if self._out_file is not None:
            self._out_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._out_file.flush()
        self._seen.add(key)
        self.received.append(record)

    def _print(self, when: str, severity: str, kind: str, subject: str, state: str, summary: str) -> None:
        if self.quiet:
            return
        severity, kind, subject, state, summary = map(printable, (severity, kind, subject, state, summary))
        sev = _SEVERITY_STYLE.get(severity, "white")
        st = _STATE_STYLE.get(state, "white")
        self.console.print(
            f"{when}  [{sev}]{escape(severity.upper()):<8}[/]  {escape(kind)}  [bold]{escape(subject)}[/]  "
            f"[{st}]{escape(state)}[/]  {escape(summary)}", highlight=False)

    # -- request checks --

    @web.middleware
    async def _refusals(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Refused as e:
            log.warning("webhook receiver: rejected %s %s from %s (%d): %s", request.method, request.path,
                        request.remote, e.status, printable(e.reason))
            resp = _json_error(e.status, e.reason, **e.headers)
            if e.close:  # the rest of the body is not worth reading
                resp.force_close()
            return resp

    async def _body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise _Refused(413, f"body of {length} bytes is over the {self.max_body_bytes}-byte limit", close=True)
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Refused(413, f"body is over the {self.max_body_bytes}-byte limit", close=True) from None
        except TimeoutError:
            raise _Refused(408, f"body not received within {self.body_timeout_s:g} s", close=True) from None
        except HttpProcessingError as e:  # e.g. a malformed chunk
            raise _Refused(400, f"malformed body: {e.message}", close=True) from None
        except ConnectionError:  # aiohttp would log it with a traceback; nobody is left to read the answer
            raise _Refused(400, "connection lost before the body was complete", close=True) from None

    def _authorize(self, request: web.Request) -> None:
        """401 unless `Authorization: Bearer <token>` (constant-time comparison)."""
        auth = request.headers.get("Authorization")
        scheme, _, token = (auth or "").partition(" ")
        # aiohttp keeps undecodable header bytes as surrogates: encode them back rather than fail
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"),
                                                              self.alertmanager_token.encode()):
            return
        self.rejected += 1
        reason = "missing Authorization: Bearer token" if auth is None else "wrong bearer token"
        raise _Refused(401, reason, **{"WWW-Authenticate": 'Bearer realm="liqwatch"'})

    # -- handlers --

    async def _alerts(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        header = request.headers.get(SIGNATURE_HEADER)
        now = self.clock()
        try:
            verify(body, self.secret, header, now, self.tolerance_s)
            self._replay.check(header, now)
        except SignatureError as e:
            self.rejected += 1
            raise _Refused(401, e.reason) from None
        try:
            alert = load_json(body)
        except ValueError as e:
            self._replay.remember(header, now)
            raise _Refused(400, str(e)) from None
        if not isinstance(alert, dict) or not isinstance(alert.get("id"), str) or not isinstance(
                alert.get("state"), str):
            self._replay.remember(header, now)
            raise _Refused(400, "body must be a JSON object with string 'id' and 'state'")
        key = dedup_key(alert)
        if key in self._seen:
            self._replay.remember(header, now)
            self.duplicates += 1
            log.info("webhook receiver: duplicate %s %s (delivery %s, attempt %s): acknowledged, not recorded again",
                     printable(alert["id"]), printable(alert["state"]),
                     printable(request.headers.get("X-Liqwatch-Delivery", "?")),
                     printable(request.headers.get("X-Liqwatch-Attempt", "?")))
            return web.json_response({"duplicate": True, "id": alert["id"], "state": alert["state"]})
        try:
            self._accept(key, alert)
        except OSError as e:
            log.error("webhook receiver: cannot append to %s: %s", self.out, e)
            return _json_error(500, f"cannot record the alert: {e.strerror or e}")
        self._replay.remember(header, now)
        self._print(_utc(alert.get("ts")), str(alert.get("severity", "?")), str(alert.get("kind",
                    alert.get("type", "?"))), str(alert.get("subject", "?")), alert["state"],
                    str(alert.get("summary", "")))
        return web.json_response({"duplicate": False, "id": alert["id"], "state": alert["state"]})

    async def _alertmanager(self, request: web.Request) -> web.Response:
        self._authorize(request)
        try:
            payload = load_json(await self._body(request))
        except ValueError as e:
            raise _Refused(400, str(e)) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            raise _Refused(400, "expected an Alertmanager webhook payload: a JSON object with 'alerts': [...]")
        if str(payload.get("version", "4")) != "4":
            log.warning("webhook receiver: Alertmanager payload version %s (expected 4); reading it anyway",
                        printable(repr(payload.get("version"))))
        new = dup = 0
        for a in payload["alerts"]:
            if not isinstance(a, dict):
                continue
            labels = a.get("labels") if isinstance(a.get("labels"), dict) else {}
            annotations = a.get("annotations") if isinstance(a.get("annotations"), dict) else {}
            status = str(a.get("status") or payload.get("status") or "?")
            fingerprint = str(a.get("fingerprint") or json.dumps(labels, sort_keys=True))
            record = {"source": "alertmanager", "receiver": payload.get("receiver"), "status": status,
                      "fingerprint": fingerprint, "labels": labels, "annotations": annotations,
                      "startsAt": a.get("startsAt"), "endsAt": a.get("endsAt"),
                      "generatorURL": a.get("generatorURL"), "groupKey": payload.get("groupKey")}
            key = dedup_key(record)
            if key in self._seen:
                dup += 1
                continue
            try:
                self._accept(key, record)
            except OSError as e:
                log.error("webhook receiver: cannot append to %s: %s", self.out, e)
                return _json_error(500, f"cannot record the alert: {e.strerror or e}")
            new += 1
            when = _iso_utc(a.get("endsAt") if status == "resolved" else a.get("startsAt"))
            subject = labels.get("subject") or labels.get("asset") or labels.get("instance") or "-"
            summary = annotations.get("summary") or annotations.get("description") or ""
            self._print(when, str(labels.get("severity", "?")), f"[am] {labels.get('alertname', '?')}",
                        str(subject), status, str(summary))
        self.duplicates += dup
        if dup:
            log.info("webhook receiver: Alertmanager notification with %d already-seen alert(s) (repeat or retry)",
                     dup)
        return web.json_response({"accepted": new, "duplicates": dup, "duplicate": new == 0 and dup > 0})

    async def _received(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response(self.received)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "received": len(self.received), "duplicates": self.duplicates,
                                  "rejected": self.rejected})


# --- command line -----------------------------------------------------------------------------------------------

def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


async def _serve(receiver: Receiver, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            # loopback unless a container runtime says otherwise (docker-compose.yml sets LIQWATCH_WEB_BIND)
            host = os.environ.get("LIQWATCH_WEB_BIND", "127.0.0.1")
            await receiver.start(host, port, container=host not in LOOPBACK)
        except OSError as e:
            _fail(f"--port: cannot listen on {host}:{port}: {e.strerror or e}", 1)
        err.print(f"listening on {receiver.url}: POST /alerts (signed), POST /alertmanager and GET /received "
                  f"(bearer token {receiver.token_source}), GET /healthz; Ctrl-C stops", highlight=False)
        await stop.wait()
    finally:
        await receiver.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def webhook_receiver(
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port on 127.0.0.1 (0 = any free port).")
                    ] = 8099,
    secret_env: Annotated[str, typer.Option(
        "--secret-env", help="Environment variable holding the HMAC secret (the sender's endpoint `secret_env`).")
    ] = "LIQWATCH_WEBHOOK_SECRET",
    tolerance_s: Annotated[float, typer.Option(
        "--tolerance-s", min=1, help="Reject signatures whose timestamp is further than this from now (seconds).")
    ] = 300,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Append every accepted alert here as one JSON line (and read it back on start: "
        "dedup survives a restart).", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print a line per alert.")] = False,
) -> None:
    """Receive signed liqwatch alert webhooks (and Alertmanager notifications) on 127.0.0.1 and print them.

    `POST /alerts` checks `X-Liqwatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`:
    a missing or wrong signature, a timestamp more than --tolerance-s away, or a signature seen before gets 401 with
    the reason. A repeat of an (id, state, severity, ts) already received, also by an earlier run with the same
    --out, gets 200 `{"duplicate": true}` (a sender's retry after a lost response).

    `POST /alertmanager` (Alertmanager webhook payloads) and `GET /received` (what this run accepted) need
    `Authorization: Bearer <token>`: the token is $LIQWATCH_ALERTMANAGER_TOKEN if set, else derived from the secret,
    hex HMAC-SHA256(secret, "alertmanager"), so one secret configures both (Alertmanager's webhook_config sends it
    with `http_config: {authorization: {credentials_file: ...}}`; `liqwatch stack up` writes its token to
    `<state>/config/receiver.token`). `GET /healthz` is open.

    Bodies over 1 MiB get 413, malformed or over-nested JSON 400, a body slower than 10 s 408; connections idle for
    5 s are closed. Control characters (ESC...) in what is printed are shown escaped. Ctrl-C stops.

    Example:

    ```
    export LIQWATCH_WEBHOOK_SECRET=s3cret
    liqwatch webhook-receiver --port 8099 --out alerts.jsonl
    ```

    Sign and send an alert by hand, then list what was received (bash, openssl, curl):

    ```
    body='{"id":"depeg:USDe:1","state":"firing","severity":"critical","subject":"USDe","ts":1760130000000}'
    t=$(date +%s)
    sig=$(printf '%s' "$t.$body" | openssl dgst -sha256 -hmac "$LIQWATCH_WEBHOOK_SECRET" | awk '{print $NF}')
    curl -s http://127.0.0.1:8099/alerts -H "X-Liqwatch-Signature: t=$t,v1=$sig" -d "$body"
    token=$(printf alertmanager | openssl dgst -sha256 -hmac "$LIQWATCH_WEBHOOK_SECRET" | awk '{print $NF}')
    curl -s http://127.0.0.1:8099/received -H "Authorization: Bearer $token"
    ```
    """
    secret = os.environ.get(secret_env)
    if not secret:
        what = "is empty" if secret == "" else "is not set"
        _fail(f"--secret-env: environment variable {secret_env} {what} (export {secret_env}=<the senders' secret>)")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if out is not None:
        try:
            out.open("a").close()
        except OSError as e:
            _fail(f"--out: cannot append to '{out}': {e.strerror or e}")
    receiver = Receiver(secret, tolerance_s, out, quiet=quiet)
    try:
        asyncio.run(_serve(receiver, port))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        pass
    dup = f", {receiver.duplicates} duplicate(s) acknowledged" if receiver.duplicates else ""
    rej = f", {receiver.rejected} rejected" if receiver.rejected else ""
    where = f" (appended to {out})" if out is not None else ""
    err.print(f"stopped: {len(receiver.received)} alert(s) received{where}{dup}{rej}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `webhook-receiver` to a typer app (the main `liqwatch` CLI)."""
    app.command("webhook-receiver")(webhook_receiver)


if __name__ == "__main__":
    _app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="markdown")
    _app.callback()(lambda: None)  # keep `webhook-receiver` a subcommand, as in the main CLI
    register(_app)
    _app()
