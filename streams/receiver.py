"""A local webhook receiver for liqwatch alerts and Alertmanager notifications (`liqwatch webhook-receiver`).

    r = Receiver(b"s3cret", tolerance_s=300, out=Path("alerts.jsonl"))
    port = await r.start("127.0.0.1", 0)         # 0 = any free port; only loopback addresses are accepted
    ...                                           # r.received: everything accepted, in arrival order
    await r.stop()

Endpoints (bound to 127.0.0.1 only):
    POST /alerts        liqwatch webhooks: X-Liqwatch-Signature checked (streams.webhooks.verify), stale timestamps
                        and replayed signatures rejected with 401 {"error": reason}; deduplicated by (id, state, severity, ts):
                        a repeat gets 200 {"duplicate": true} (a retry after a lost response is normal); an
                        episode that steps down and escalates again is a new event (another ts), not a repeat.
    POST /alertmanager  Alertmanager webhook_config payloads (version 4); no HMAC (Alertmanager cannot sign), a
                        bearer token is required when LIQWATCH_ALERTMANAGER_TOKEN is set; deduplicated per alert
                        by (fingerprint, startsAt, status): Alertmanager's repeat notifications are dropped, a new
                        episode of the same labels (new startsAt) is kept.
    GET  /received      JSON list of everything accepted so far.
    GET  /healthz       {"ok": true, "received": n, "duplicates": n, "rejected": n}.

Every accepted alert is printed as one line (UTC time, severity, kind, subject, state, summary) and appended to
`out` as one JSON line; Alertmanager alerts are recorded as {"source": "alertmanager", ...}.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from aiohttp import web
from rich.console import Console
from rich.markup import escape

from streams.webhooks import SIGNATURE_HEADER, ReplayGuard, SignatureError, verify

log = logging.getLogger("liqwatch.receiver")
err = Console(stderr=True, soft_wrap=True)

ALERTMANAGER_TOKEN_ENV = "LIQWATCH_ALERTMANAGER_TOKEN"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
_STATE_STYLE = {"firing": "red", "resolved": "green"}
_FROM_ENV: Any = object()


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


class Receiver:
    """In-process webhook receiver (tests, the demo, `liqwatch webhook-receiver`). See the module docstring."""

    def __init__(self, secret: bytes | str, tolerance_s: float = 300, out: Path | str | None = None, *,
                 alertmanager_token: str | None = _FROM_ENV, console: Console | None = None, quiet: bool = False,
                 clock: Callable[[], float] = time.time):
        self.secret = secret.encode() if isinstance(secret, str) else bytes(secret)
        if not self.secret:
            raise ValueError("webhook secret is empty")
        self.tolerance_s = float(tolerance_s)
        self.out = Path(out) if out is not None else None
        if alertmanager_token is _FROM_ENV:
            alertmanager_token = os.environ.get(ALERTMANAGER_TOKEN_ENV) or None
        self.alertmanager_token = alertmanager_token
        self.console = console or Console(soft_wrap=True, highlight=False)
        self.quiet = quiet
        self.clock = clock
        self.received: list[dict] = []
        self.duplicates = 0
        self.rejected = 0
        self._seen: set[tuple] = set()
        self._replay = ReplayGuard(self.tolerance_s)
        self._out_file = None
        self._runner: web.AppRunner | None = None
        self.host: str | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
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
            self._out_file = self.out.open("a", encoding="utf-8")
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
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

    def _accept(self, key: tuple, record: dict) -> None:
        """Persist first (an I/O error raises → 500 → the sender retries), then remember the key."""
        if self._out_file is not None:
            self._out_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._out_file.flush()
        self._seen.add(key)
        self.received.append(record)

    def _print(self, when: str, severity: str, kind: str, subject: str, state: str, summary: str) -> None:
        if self.quiet:
            return
        sev = _SEVERITY_STYLE.get(severity, "white")
        st = _STATE_STYLE.get(state, "white")
        self.console.print(
            f"{when}  [{sev}]{escape(severity.upper()):<8}[/]  {escape(kind)}  [bold]{escape(subject)}[/]  "
            f"[{st}]{escape(state)}[/]  {escape(summary)}", highlight=False)

    def _reject(self, request: web.Request, path: str, reason: str) -> web.Response:
        self.rejected += 1
        log.warning("webhook receiver: rejected POST %s from %s: %s", path, request.remote, reason)
        return _json_error(401, reason)

    # -- handlers --

    async def _alerts(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get(SIGNATURE_HEADER)
        now = self.clock()
        try:
            verify(body, self.secret, header, now, self.tolerance_s)
            self._replay.check(header, now)
        except SignatureError as e:
            return self._reject(request, "/alerts", e.reason)
        try:
            alert = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            alert = None
        if not isinstance(alert, dict) or not isinstance(alert.get("id"), str) or not isinstance(
                alert.get("state"), str):
            self._replay.remember(header, now)
            log.warning("webhook receiver: POST /alerts: body is not a JSON object with string 'id' and 'state'")
            return _json_error(400, "body must be a JSON object with string 'id' and 'state'")
        # an episode may escalate or step down (another "firing" with the same id): severity is part of the key
        key = ("alert", alert["id"], alert["state"], alert.get("severity"), alert.get("ts"))
        if key in self._seen:
            self._replay.remember(header, now)
            self.duplicates += 1
            log.info("webhook receiver: duplicate %s %s (delivery %s, attempt %s): acknowledged, not recorded again",
                     alert["id"], alert["state"], request.headers.get("X-Liqwatch-Delivery", "?"),
                     request.headers.get("X-Liqwatch-Attempt", "?"))
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
        if self.alertmanager_token is not None:
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                     self.alertmanager_token.encode()):
                self.rejected += 1
                reason = ("missing Authorization: Bearer token" if not auth else "wrong bearer token") + \
                    f" ({ALERTMANAGER_TOKEN_ENV} is set)"
                log.warning("webhook receiver: rejected POST /alertmanager from %s: %s", request.remote, reason)
                return _json_error(401, reason, **{"WWW-Authenticate": 'Bearer realm="liqwatch"'})
        try:
            payload = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            log.warning("webhook receiver: POST /alertmanager: not an Alertmanager webhook payload")
            return _json_error(400, "expected an Alertmanager webhook payload: a JSON object with 'alerts': [...]")
        if str(payload.get("version", "4")) != "4":
            log.warning("webhook receiver: Alertmanager payload version %r (expected 4); reading it anyway",
                        payload.get("version"))
        new = dup = 0
        for a in payload["alerts"]:
            if not isinstance(a, dict):
                continue
            labels = a.get("labels") if isinstance(a.get("labels"), dict) else {}
            annotations = a.get("annotations") if isinstance(a.get("annotations"), dict) else {}
            status = str(a.get("status") or payload.get("status") or "?")
            fingerprint = str(a.get("fingerprint") or json.dumps(labels, sort_keys=True))
            key = ("alertmanager", fingerprint, str(a.get("startsAt", "")), status)
            if key in self._seen:
                dup += 1
                continue
            record = {"source": "alertmanager", "receiver": payload.get("receiver"), "status": status,
                      "fingerprint": fingerprint, "labels": labels, "annotations": annotations,
                      "startsAt": a.get("startsAt"), "endsAt": a.get("endsAt"),
                      "generatorURL": a.get("generatorURL"), "groupKey": payload.get("groupKey")}
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
        token = " (bearer token required)" if receiver.alertmanager_token else ""
        err.print(f"listening on {receiver.url}: POST /alerts (signed), POST /alertmanager{token}, GET /received, "
                  f"GET /healthz; Ctrl-C stops", highlight=False)
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
        "--out", "-o", help="Append every accepted alert here as one JSON line.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print a line per alert.")] = False,
) -> None:
    """Receive signed liqwatch alert webhooks (and Alertmanager notifications) on 127.0.0.1 and print them.

    `POST /alerts` checks `X-Liqwatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`:
    a missing or wrong signature, a timestamp more than --tolerance-s away, or a signature seen before gets 401 with
    the reason. A repeat of an (id, state, severity) already received gets 200 `{"duplicate": true}` (a sender's retry after
    a lost response). `POST /alertmanager` takes Alertmanager webhook payloads (no HMAC; a bearer token is required
    when LIQWATCH_ALERTMANAGER_TOKEN is set). `GET /received` lists what was accepted. Ctrl-C stops.

    Example:

    ```
    export LIQWATCH_WEBHOOK_SECRET=s3cret
    liqwatch webhook-receiver --port 8099 --out alerts.jsonl
    ```

    Sign and send an alert by hand (bash, openssl, curl):

    ```
    body='{"id":"depeg:USDe:1","state":"firing","severity":"critical","subject":"USDe","ts":1760130000000}'
    t=$(date +%s)
    sig=$(printf '%s' "$t.$body" | openssl dgst -sha256 -hmac "$LIQWATCH_WEBHOOK_SECRET" | awk '{print $NF}')
    curl -s http://127.0.0.1:8099/alerts -H "X-Liqwatch-Signature: t=$t,v1=$sig" -d "$body"
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
