"""`liqwatch demo`: the evening of 10 October 2025 through the live pipeline, with alerts on screen.

Starts (unless --no-stack) the local stack, a signed webhook receiver on the stack's receiver port (127.0.0.1:8099
unless the stack says otherwise; it takes the stack's Alertmanager token) and two workers on fresh
topics; generates a scenario (`oct-2025` by default) with the index as it was; plays it into Kafka at `speed`× event
time; shows the event clock, indices against redemption values, accounts by health band, liquidatable notional,
cascade amplification and critical severity, and alerts as they fire and resolve. At the end: the first alert of
each kind, the first forced-liquidation wave, the lead time of the first critical `cascade_risk` before it, and the
fixed index design side by side. Ctrl-C stops everything it started.

    sc = demo_scenario("real-2025-10-10")   # the recorded 20:30–22:30 UTC; 21:10 and risk_off 0.12 compared
    run_demo(3000, 300.0, no_stack=True, state_dir=None, scenario="real-2025-10-10")

What each scenario plays (`DemoScenario`): `oct-2025` and `calm` the whole synthetic evening (20:00–23:00 UTC);
`real-2025-10-10` and `real-2025-10-07` the recorded 20:30–22:30 UTC of that day (liqwatch.tools.real) — the
minutes before are skipped to keep the demo short (every indexed book opens a minute bar at 20:30:00 and the
redemption statement is every 30 s, so every index is priced by the first record), and the synthetic accounts
join half a second in, as the synthetic evening's do. The post-mortem and the printed `liqwatch replay` command
read exactly that window, so they see what the workers saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from liqwatch import scenarios
from liqwatch.tools import real
from liqwatch.tools import stack
from liqwatch.tools import transport
from liqwatch.replay.batch import load_events
from liqwatch.config import parse_config
from liqwatch.tools.receiver import Receiver

ASSETS = ("BTC", "ETH", "SOL", "USDe", "WBETH", "BNSOL")
SECRET_ENV = "LIQWATCH_DEMO_WEBHOOK_SECRET"
RECEIVER_PORT = stack.StackPorts().receiver  # a default stack's; run_demo uses its stack's
PRE_CRASH = scenarios.T0 + 45 * 60_000
REAL_ASSETS = ("BTC", "SOL", "USDe")  # what the recorded evenings price (no minute data of the others)
ACCOUNTS_AFTER_MS = 500  # the accounts join this long after the first market record (as oct-2025's at T0 + 500)


@dataclass(frozen=True)
class DemoScenario:
    """A scenario as the demo plays it: its events, its two configs, and the event times the demo reads."""

    name: str
    events: Callable[[int], Iterable[dict]]  # number of accounts → every event played, in event-time order
    prefix_config: Path     # the index as it was: the workers run it
    fixed_config: Path      # the index as fixed: the comparison and the post-mortem's second config
    start_ms: int           # the window played, both ends inclusive: the post-mortem and the replay command read it
    end_ms: int
    pre_crash_ms: int       # the state the two index designs are compared from (batch engine)
    severity: float         # the risk_off move they are compared at
    date: str               # the live view's date, "10 Oct 2025"
    assets: tuple[str, ...] = ASSETS  # the live view's indices


DEMO_SCENARIOS = (*scenarios.SCENARIOS, *real.DAYS)


def _at(day: str, hhmm_utc: str) -> int:
    return int(datetime.fromisoformat(f"{day}T{hhmm_utc}:00+00:00").timestamp() * 1000)


def demo_scenario(name: str) -> DemoScenario:
    """oct-2025 and calm: the synthetic evening (liqwatch.scenarios); real-2025-10-10 and real-2025-10-07: the
    recorded evening (liqwatch.tools.real), 20:30–22:30 UTC as `liqwatch scenario` suggests replaying it."""
    if name in scenarios.SCENARIOS:
        return DemoScenario(
            name, partial(scenarios.generate, name, seed=7), scenarios.config_path(name, "prefix"),
            scenarios.config_path(name, "fixed"), scenarios.T0,
            scenarios.T0 + scenarios.DURATION_MIN * 60_000 + 1_000,  # the file's last tick + 1 s
            PRE_CRASH, scenarios.EVENING_SEVERITY, "10 Oct 2025")
    if name in real.DAYS:
        day = real.DAYS[name]
        start, end = _at(day, "20:30"), _at(day, "22:30")
        date = datetime.fromisoformat(day)
        # 21:10 on the 10th: BTC and SOL 2% and 5% below 20:30, no critical signal yet; from there BTC fell 11% to
        # its 21:20 low and SOL 28% (risk_off moves SOL 1.5× BTC: 0.12 is the grid's move nearest BTC's). The calm
        # day is compared at the same moment and move
        return DemoScenario(
            name, partial(recorded_evening, name, start, end), real.config_path(name, "prefix"),
            real.config_path(name, "fixed"), start, end, _at(day, "21:10"), 0.12,
            f"{date.day} {date:%b %Y}", REAL_ASSETS)
    raise KeyError(name)


def recorded_evening(name: str, start: int, end: int, accounts: int, seed: int = 7) -> Iterator[dict]:
    """`real.generate`'s events from `start` to `end` (inclusive): the market records in that window, with the
    synthetic accounts re-dated ACCOUNTS_AFTER_MS after `start` (`real.generate` dates them a minute after 18:30):
    the producer paces by event time from the file's first line, and accounts dated before the first market record
    would be due at the first evaluation, which a replay makes with them and a live worker possibly before it has
    read them."""
    at = start + ACCOUNTS_AFTER_MS
    held: list[dict] = []
    joined = False
    for ev in real.generate(name, accounts, seed):
        if ev["type"] == "account":
            held.append({**ev, "ts": at})
            continue
        if ev["ts"] < start:
            continue
        if ev["ts"] > end:
            break  # market records come in event-time order
        if not joined and ev["ts"] > at:
            yield from held
            joined = True
        yield ev
    if not joined:
        yield from held


def hhmm(ts: int | None) -> str:
    return "—" if ts is None else datetime.fromtimestamp(ts / 1000, timezone.utc).strftime("%H:%M:%S")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DemoResult:
    first_alert: dict[str, int] = field(default_factory=dict)       # kind → event time of its first firing
    first_critical_cascade_risk: int | None = None
    first_wave: int | None = None
    lead_time_s: float | None = None
    critical_alerts: int = 0
    alerts: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    comparison: dict = field(default_factory=dict)


class ReceiverThread:
    """The real signed-webhook receiver, serving from its own thread while the demo draws the screen."""

    def __init__(self, secret: str, out: Path, port: int, alertmanager_token: str):
        self.receiver = Receiver(secret, out=out, quiet=True, alertmanager_token=alertmanager_token)
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> Receiver:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start("127.0.0.1", self.port), self.loop).result(10)
        return self.receiver

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _metrics(port: int) -> dict[tuple, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(ms: list[dict], name: str, agg=max, **labels) -> float | None:
    want = tuple(sorted(labels.items()))
    vals = [m[(name, want)] for m in ms if (name, want) in m]
    return agg(vals) if vals else None


def _screen(ms: list[dict], alerts: list[dict], event_t: int | None, speed: float, urls: list[str],
            sc: DemoScenario) -> Group:
    clock = Table.grid(padding=(0, 2))
    clock.add_row(f"[bold]event time[/] {hhmm(event_t)} UTC, {sc.date}", f"replayed at {speed:g}×",
                  "  ".join(urls))
    prices = Table(title="index vs redemption value", expand=True)
    for col in ("asset", "index", "redemption value", "gap"):
        prices.add_column(col, justify="right")
    for a in sc.assets:
        ix = _get(ms, "liqwatch_index_price_usd", asset=a)
        ref = _get(ms, "liqwatch_reference_value_usd", asset=a)
        gap = "" if ix is None or not ref else f"{100 * (ix / ref - 1):+.1f}%"
        style = "red" if gap and abs(ix / ref - 1) >= 0.05 else ""
        prices.add_row(a, "—" if ix is None else f"{ix:,.4g}", "—" if ref is None else f"{ref:,.4g}",
                       f"[{style}]{gap}[/]" if style else gap)
    risk = Table(title="accounts and stress", expand=True)
    risk.add_column("measure")
    risk.add_column("value", justify="right")
    for band in ("liquidatable", "below_1.1", "1.1_to_1.5", "1.5_to_3", "above_3"):
        v = _get(ms, "liqwatch_accounts", agg=sum, band=band)
        risk.add_row(f"accounts {band.replace('_', ' ')}", "—" if v is None else f"{v:,.0f}")
    liq = _get(ms, "liqwatch_liquidatable_notional_usd", agg=sum)
    risk.add_row("liquidatable notional", "—" if liq is None else f"${liq / 1e6:,.0f}M")
    for sev in ("0.02", "0.12"):
        amp = _get(ms, "liqwatch_cascade_amplification_ratio", scenario="risk_off", severity=sev)
        risk.add_row(f"cascade amplification at {sev}", "—" if amp is None else f"{amp:.2f}")
    crit = _get(ms, "liqwatch_critical_severity_ratio", scenario="risk_off")
    risk.add_row("critical severity (risk_off)", "—" if crit is None else ("none ≤ 0.20" if crit >= 1 else f"{crit:.3f}"))
    feed = Table(title="alerts (signed webhooks received)", expand=True)
    for col in ("event time", "state", "severity", "kind", "subject", "summary"):
        feed.add_column(col, overflow="fold" if col == "summary" else "ellipsis")
    for a in alerts[-12:]:
        color = "red" if a["severity"] == "critical" else "yellow"
        color = "green" if a["state"] == "resolved" else color
        feed.add_row(hhmm(a["ts"]), f"[{color}]{a['state']}[/]", a["severity"], a["kind"], a["subject"],
                     a["summary"][:90])
    top = Table.grid(expand=True)
    top.add_row(prices, risk)
    return Group(Panel(clock), top, feed)


def summarize(alerts: list[dict]) -> DemoResult:
    res = DemoResult(alerts=alerts)
    for a in alerts:
        if a["state"] != "firing":
            continue
        res.first_alert.setdefault(a["kind"], a["ts"])
        res.critical_alerts += a["severity"] == "critical"
        if a["kind"] == "cascade_risk" and a["severity"] == "critical" and res.first_critical_cascade_risk is None:
            res.first_critical_cascade_risk = a["ts"]
        if a["kind"] == "liquidations" and a["severity"] == "critical" and res.first_wave is None:
            res.first_wave = a["ts"]
    if res.first_wave is not None and res.first_critical_cascade_risk is not None:
        res.lead_time_s = (res.first_wave - res.first_critical_cascade_risk) / 1000.0
    return res


def compare_index_designs(events: Path, sc: DemoScenario) -> dict:
    """The evening's move from the pre-crash state (20:45 of the synthetic evening, 21:10 of a recorded one) under
    both index designs (batch engine, same events)."""
    out = {}
    for variant, path in (("prefix", sc.prefix_config), ("fixed", sc.fixed_config)):
        cfg = parse_config(yaml.safe_load(path.read_text()))
        engine, _ = load_events(cfg, events, until=sc.pre_crash_ms, quiet=True)
        r = engine.cascade("risk_off", sc.severity)
        out[variant] = {"liquidated_notional": r["liquidated_notional"], "amplification": r["amplification"],
                        "liquidated_accounts": r["liquidated_accounts"], "rounds": r["rounds"],
                        "usde_index_after": r["final_index"].get("USDe"),
                        "deficit": r["deficit_usd"], "insurance_fund": r["insurance_fund"]}
    return out


def run_demo(accounts: int, speed: float, no_stack: bool, state_dir: Path | None, scenario: str = "oct-2025",
             console: Console | None = None, partitions: int = 8, live: bool = True,
             report: Path | None = None) -> DemoResult:
    console = console or Console()
    sc = demo_scenario(scenario)
    t_start = time.monotonic()
    started_stack = None
    procs: list[subprocess.Popen] = []
    receiver_thread = None
    work = Path(tempfile.mkdtemp(prefix="liqwatch-demo-"))
    secret = os.environ.get(SECRET_ENV) or uuid.uuid4().hex
    os.environ[SECRET_ENV] = secret
    producer: threading.Thread | None = None
    stop_producing = threading.Event()
    try:
        if no_stack:
            st = stack.load(state_dir)
        else:
            st = stack.StackConfig.resolve(state_dir)
            already = [s.name for s in stack.status(st) if s.running]
            console.print("starting the local stack (Kafka, Prometheus, Alertmanager on 127.0.0.1)…")
            stack.up(st)
            # a stack that was already running is the user's: the demo leaves it running at the end
            started_stack = None if already else st
            if already:
                console.print(f"(using the stack already running in {st.state_dir}: {', '.join(already)})")
        kafka = stack.connection(st)  # the stack's TLS and SCRAM user when it runs with --auth scram
        # the stack's Alertmanager notifies this receiver too: its port and bearer token
        receiver_thread = ReceiverThread(secret, work / "alerts.jsonl", st.ports.receiver, stack.receiver_token(st))
        receiver = receiver_thread.start()
        cfg_data = yaml.safe_load(sc.prefix_config.read_text())
        cfg_data.setdefault("alerts", {})["webhooks"] = [
            {"name": "demo-receiver", "url": f"{stack.receiver_url(st)}/alerts", "secret_env": SECRET_ENV}]
        cfg_path = work / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg_data, sort_keys=False))
        events = work / "events.jsonl"
        console.print(f"generating the {scenario} scenario with {accounts:,} accounts…")
        last_ts = 0
        with events.open("wb") as f:
            for ev in sc.events(accounts):
                f.write(json.dumps(ev, separators=(",", ":")).encode() + b"\n")
                last_ts = max(last_ts, ev["ts"])
        prefix = f"demo-{uuid.uuid4().hex[:6]}."
        ports = [_free_port(), _free_port()]
        for i, port in enumerate(ports):
            log = (work / f"worker-{i + 1}.log").open("wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "liqwatch", "worker", "-c", str(cfg_path), *kafka.options(),
                 "--topic-prefix", prefix, "--app-id", prefix.rstrip("."), "--web-port", str(port),
                 "--worker-id", f"demo-worker-{i + 1}", "--partitions", str(partitions)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **kafka.child_env()}))
            stack.register_scrape_target(st.state_dir, f"demo-worker-{i + 1}", port)
        urls = [f"metrics: http://127.0.0.1:{p}/metrics" for p in ports] + [
            f"Prometheus: {stack.prometheus_url(st)}", f"Alertmanager: {stack.alertmanager_url(st)}",
            f"alerts topic: {prefix}liqwatch.alerts"]
        console.print("where to look:\n  " + "\n  ".join(urls))
        _wait_workers(ports, procs)
        producer = threading.Thread(target=lambda: asyncio.run(_produce_until(stop_producing, transport.produce_file(
            events, kafka, partitions=partitions, prefix=prefix, speed=speed, progress=False))), daemon=True)
        producer.start()
        last_n = -1
        quiet_since = None
        with Live(console=console, refresh_per_second=4, transient=False) as view:
            while True:
                ms = [_metrics(p) for p in ports]
                t = _get(ms, "liqwatch_event_time_seconds", agg=min)  # the slowest worker (the leader cascades)
                event_t = None if t is None else int(t * 1000)
                alerts = [r for r in receiver.received if r.get("source") != "alertmanager"]
                if live:
                    view.update(_screen(ms, alerts, event_t, speed, urls[:2], sc))
                for p in procs:
                    if p.poll() is not None:
                        raise RuntimeError(f"a worker exited ({p.returncode}); logs in {work}")
                # done when the workers have reached the last event and the alerts have settled
                if not producer.is_alive() and event_t is not None and event_t >= last_ts:
                    if quiet_since is None or len(alerts) != last_n:
                        quiet_since = time.monotonic()
                    if time.monotonic() - quiet_since > 10:
                        break
                last_n = len(alerts)
                time.sleep(0.5)
        result = summarize(sorted(alerts, key=lambda a: (a["ts"], a["kind"])))
        console.print("comparing with the fixed index design (same events, batch engine)…")
        result.comparison = compare_index_designs(events, sc)
        result.wall_s = time.monotonic() - t_start
        _print_summary(console, result, sc)
        if report is not None:
            console.print(f"writing the post-mortem report of this run to {report}/ (liqwatch replay of the same "
                          "events, as it was vs as fixed)…")
            write_post_mortem(events, cfg_path, sc, report)
            console.print(f"post-mortem: {report / 'index.html'}")
        first = datetime.fromtimestamp(sc.start_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        last = datetime.fromtimestamp(sc.end_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        console.print(f"the run stays in Kafka under the prefix {prefix}; a post-mortem later: "
                      f"`liqwatch replay --topic-prefix {prefix} --from {first} --to {last} "
                      f"-c {sc.prefix_config} --compare {sc.fixed_config} --report pm/`"
                      + ("" if no_stack or started_stack is None else " (after `liqwatch stack up`)"), highlight=False)
        shutil.rmtree(work, ignore_errors=True)  # kept on failure: its worker logs say what happened
        return result
    finally:
        # Ctrl-C (again) must not cut the clean-up short: the stack and the workers run in their own sessions
        restore_sigint = None
        if threading.current_thread() is threading.main_thread():
            restore_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            # the replay stops first, while Kafka is still there (else it logs every failed retry until exit)
            stop_producing.set()
            if producer is not None:
                producer.join(40)
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
            if 'st' in locals():
                for i in range(len(procs)):
                    stack.unregister_scrape_target(st.state_dir, f"demo-worker-{i + 1}")
            if receiver_thread is not None:
                receiver_thread.stop()
            if started_stack is not None:
                stack.down(started_stack)
        finally:
            if restore_sigint is not None:
                signal.signal(signal.SIGINT, restore_sigint)


def write_post_mortem(events: Path, config: Path, sc: DemoScenario, out: Path) -> Path:
    """`liqwatch replay --events` of the demo's own events over the window it played: its config (the alerts it
    raised) vs the fixed one."""
    from liqwatch.config import load_config
    from liqwatch.core.layout import Layout
    from liqwatch.risk.limits import liquidity_limits
    from liqwatch.replay.replayer import default_warmup_ms, read_file, replay
    from liqwatch.replay.report import build_summary, write_report

    cfgs = [("as-it-was", load_config(config)), ("as-fixed", load_config(sc.fixed_config))]
    window = read_file(events, sc.start_ms, sc.end_ms, max(default_warmup_ms(c) for _, c in cfgs), cfgs[0][1])
    runs, limits = [], []
    for name, cfg in cfgs:
        run = replay(cfg, window, name)
        runs.append(run)
        fb = run.first_priced
        limits.append([] if fb is None else liquidity_limits(cfg, Layout(cfg), fb["pv"], fb["accounts"]))
    write_report(out, build_summary(window, runs, limits), f"liqwatch demo --report {out}")
    return out / "index.html"


async def _produce_until(stop: threading.Event, produce) -> None:
    """Run the replay coroutine `produce` until it ends or `stop` is set (then cancel it: its producer closes)."""
    task = asyncio.ensure_future(produce)
    while not task.done():
        if stop.is_set():
            task.cancel()
        await asyncio.wait({task}, timeout=0.2)
    if not task.cancelled():
        task.result()


def _wait_workers(ports: list[int], procs: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = 0
        for p in ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{p}/healthz", timeout=2) as r:
                    ok += bool(json.loads(r.read())["partitions"])
            except OSError:
                pass
        if ok == len(ports):
            return
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker exited during start-up")
        time.sleep(0.5)
    raise RuntimeError("workers did not get their partitions within 2 minutes")


def _print_summary(console: Console, r: DemoResult, sc: DemoScenario) -> None:
    t = Table(title="what liqwatch saw")
    t.add_column("first firing of")
    t.add_column("event time (UTC)", justify="right")
    for kind, ts in sorted(r.first_alert.items(), key=lambda kv: kv[1]):
        t.add_row(kind, hhmm(ts))
    t.add_row("[bold]first critical cascade_risk[/]", hhmm(r.first_critical_cascade_risk))
    t.add_row("[bold]first forced-liquidation wave[/] (critical `liquidations`)", hhmm(r.first_wave))
    lead = "—" if r.lead_time_s is None else f"{r.lead_time_s / 60:.1f} min"
    t.add_row("[bold]lead time[/]", lead)
    t.add_row("alerts fired (critical)", f"{sum(a['state'] == 'firing' for a in r.alerts)} ({r.critical_alerts})")
    t.add_row("wall time of the demo", f"{r.wall_s:.0f} s")
    console.print(t)
    c = Table(title=f"the evening's move (risk_off {sc.severity:g}) from {hhmm(sc.pre_crash_ms)[:5]}: index as it "
                    "was vs as fixed")
    for col in ("", "as it was (prefix)", "as fixed"):
        c.add_column(col, justify="right")
    p, f = r.comparison.get("prefix", {}), r.comparison.get("fixed", {})
    if p and f:
        c.add_row("liquidated notional", f"${p['liquidated_notional'] / 1e9:,.2f}B", f"${f['liquidated_notional'] / 1e9:,.2f}B")
        c.add_row("amplification", f"{p['amplification']:.2f}", f"{f['amplification']:.2f}")
        c.add_row("accounts liquidated", f"{p['liquidated_accounts']:,}", f"{f['liquidated_accounts']:,}")
        c.add_row("USDe index after", f"{p['usde_index_after']:.3f}", f"{f['usde_index_after']:.3f}")
        c.add_row("deficit of bankrupt accounts", f"${p['deficit'] / 1e6:,.1f}M", f"${f['deficit'] / 1e6:,.1f}M")
        pf, ff = p.get("insurance_fund"), f.get("insurance_fund")
        if pf and ff:
            c.add_row(f"insurance fund drawdown (of ${pf['start_usd'] / 1e6:,.0f}M)",
                      f"${pf['drawdown_usd'] / 1e6:,.1f}M", f"${ff['drawdown_usd'] / 1e6:,.1f}M")
            c.add_row("auto-deleveraging notional", f"${pf['adl_notional_usd'] / 1e6:,.1f}M",
                      f"${ff['adl_notional_usd'] / 1e6:,.1f}M")
        console.print(c)
