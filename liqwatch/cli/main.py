"""`liqwatch` command line (SPEC §7). Each command's --help explains its inputs with an example."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from rich.markup import escape

from liqwatch.events import json_line
from liqwatch.cli.stack import app as stack_app
from liqwatch.tools.receiver import register as register_receiver
from liqwatch.cli.transport import (Bootstrap, SaslMechanism, SaslPasswordEnv, SaslUsername, SecurityProtocol, SslCa,
                                    SslCert, SslKey, StateDir, connect, in_file, out_dir, out_file, probe_kafka,
                                    topic_name)
from liqwatch.cli.transport import register as register_transport
from liqwatch.cli.replay import load_config_or_exit, register as register_replay
from liqwatch.cli.importer import register as register_importer

app = typer.Typer(
    name="liqwatch",
    help="Streaming liquidation monitor: index and mark prices, margin health and liquidation cascades.\n\n"
    "Quick start: `liqwatch scenario oct-2025 --accounts 5000 --out ev.jsonl --config-out cfg.yaml`, then "
    "`liqwatch health --config cfg.yaml ev.jsonl` and "
    "`liqwatch cascade --config cfg.yaml --scenario risk_off --severity 0.12 ev.jsonl`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
bench_app = typer.Typer(help="Benchmarks that print figures (JSON); not tests.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(stack_app, name="stack")
register_transport(app)
register_receiver(app)
register_replay(app)
register_importer(app)

err = Console(stderr=True, soft_wrap=True)  # a message is one line, whatever the terminal width
log = logging.getLogger("liqwatch")

# more accounts than this is a typo (the October population is 100,000; 10M already takes gigabytes)
MAX_ACCOUNTS = 10_000_000
MAX_PARTITIONS = 10_000  # per topic; Kafka takes an int32, a broker far fewer


def _app_id(value: str) -> str:
    """Callback of --app-id: it names the consumer group and Faust's changelog topics."""
    if not value:
        raise typer.BadParameter("must not be empty")
    return topic_name(value) or value


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _config(path: Path):
    return load_config_or_exit(path, "--config")


def _parse_time(value: Optional[str], option: str) -> Optional[int]:
    """Epoch milliseconds or ISO-8601 UTC (2025-10-10T21:15:00Z); None stays None."""
    from liqwatch.cli.replay import parse_time

    return None if value is None else parse_time(value, option)


def _load(cfg, events: Path, deadletter: Optional[Path], until: Optional[int] = None):
    from liqwatch.replay.batch import load_events

    engine, rep = load_events(cfg, events, deadletter, until=until)
    if rep.rejected:
        kinds = ", ".join(f"{k} {n}" for k, n in rep.by_kind.most_common())
        where = f" (written to {deadletter})" if deadletter else " (use --deadletter FILE to keep them)"
        err.print(f"rejected {rep.rejected} of {rep.lines} lines: {kinds}{where}", highlight=False)
    if rep.superseded:
        err.print(
            f"{rep.superseded} events were older than the last of their key (within tolerance): not applied",
            highlight=False,
        )
    if engine.max_ts < 0:
        _fail(f"EVENTS: '{events}' holds no valid event")
    return cfg, engine


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Config YAML (SPEC §2).", show_default=False,
                                         exists=True, dir_okay=False, readable=True)]
EventsArg = Annotated[Path, typer.Argument(help="JSONL events file (SPEC §1), or - for stdin.", show_default=False,
                                           metavar="EVENTS", callback=in_file)]
AtOpt = Annotated[
    Optional[str],
    typer.Option("--at", help="Evaluate at this event time (epoch ms or ISO-8601); default: the largest ts in EVENTS."),
]
UntilOpt = Annotated[Optional[str], typer.Option("--until", help="Apply only events with ts <= this time (epoch ms "
                                                                 "or ISO-8601): the state as it was then.")]
DeadOpt = Annotated[
    Optional[Path],
    typer.Option("--deadletter", help="Write rejected lines here (JSONL: reason, kind, line, original).",
                 callback=out_file),
]


@app.command()
def health(config: ConfigOpt, events: EventsArg, at: AtOpt = None, until: UntilOpt = None,
           deadletter: DeadOpt = None,
           positions: Annotated[bool, typer.Option(
               "--positions", help="One line per position instead: its liquidation and bankruptcy price.")] = False,
           ) -> None:
    """Margin health of every account: one JSON line per account, sorted by account.

    Fields: `account`, `isolated`, `equity`, `maintenance`, `health` (E/M, null when M = 0), `liquidatable`
    (E < M), `liquidation_severity` (smallest shock severity of the primary stress scenario at which the account
    is liquidatable without any cascade; 0 if it already is, null beyond the largest configured severity).
    `isolated` is null for the account's cross margin; a position with an `isolated_margin` in the snapshot has a
    line of its own after it, `isolated` naming its instrument (its own margin, liquidated alone).

    With --positions, one line per position: `account`, `margin` (cross or isolated), `instrument`, `qty`,
    `mark`, `liquidation_price` (the mark at which the health of its margin — the account's cross margin, or its
    own isolated margin — reaches 1) and `bankruptcy_price` (that equity reaches 0): the position's underlying
    moves — every mark on it, its index and the assets that redeem into it (WBETH with ETH, in cross margin) —
    and everything else is held; null where no such price exists. An account already below
    health 1 gets the price it would have to recover to. `adl_rank`: its place in the auto-deleveraging queue
    as venues publish it (config liquidation.adl: the binance or hyperliquid ranking), the share of the
    positions on the same instrument and side ranked at or below it — 1: first to be deleveraged.

    Every event is applied in file order (a later snapshot of an account replaces an earlier one); numbers are
    evaluated at the largest `ts` (or `--at`).

    Example: `liqwatch health --config oct-2025-prefix.yaml events.jsonl | head`
    """
    cfg = _config(config)
    at_ms, until_ms = _parse_time(at, "--at"), _parse_time(until, "--until")
    cfg, engine = _load(cfg, events, deadletter, until_ms)
    rows = engine.position_rows(at_ms) if positions else engine.health_rows(at_ms)
    out = sys.stdout
    for row in rows:
        out.write(json_line(row) + "\n")


def _usd(x: float | None) -> str:
    """Compact dollars for a table cell: 0, 950k, 12.3M, 1.21B."""
    if x is None:
        return "—"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


@app.command()
def liqmap(
    config: ConfigOpt,
    events: EventsArg,
    asset: Annotated[Optional[list[str]], typer.Option(
        "--asset", help="Underlying to map; repeat for several (default: every underlying of an instrument).")] = None,
    span: Annotated[float, typer.Option("--range", help="Levels from −RANGE to +RANGE around the current prices "
                                                        "(0.3 = ±30%).")] = 0.3,
    step: Annotated[float, typer.Option(help="Distance between levels (0.02 = 2%).")] = 0.02,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per level instead of the table.")] = False,
    at: AtOpt = None,
    until: UntilOpt = None,
    deadletter: DeadOpt = None,
) -> None:
    """Liquidation map: per underlying and price level, the notional force-liquidated if its prices moved there.

    A level moves every venue price of the asset by (1 + move), recomputes the indices and marks, and takes the
    accounts liquidatable there: exactly round 1 of the cascade of that shock, without impact, from the real
    accounts in cross margin. Per level: `price` (the asset's index there), `accounts`, `long_usd` (longs
    closed: sold), `short_usd` (shorts closed: bought), `collateral_usd` (collateral sold), `notional_usd`
    (their sum, what that shock liquidates) and `added_usd` (the accounts that fall at this level and not at the
    level next nearer to the current price: the heatmap's cell; at move 0, what is liquidatable already).

    Example: `liqwatch liqmap -c oct-2025-prefix.yaml --asset ETH --range 0.2 --step 0.01 events.jsonl`
    """
    cfg = _config(config)
    known = list(dict.fromkeys(ins.underlying for ins in cfg.instruments.values()))
    for a in asset or ():
        if a not in cfg.assets or cfg.assets[a].index is None:
            _fail(f"--asset: '{a}' has no index in the config (underlyings: {', '.join(known)})")
    if not (math.isfinite(span) and 0 < span < 1):
        _fail(f"--range: must be between 0 and 1, exclusive (got {span})")
    if not (math.isfinite(step) and 0 < step <= span):
        _fail(f"--step: must be > 0 and at most --range (got {step})")
    at_ms, until_ms = _parse_time(at, "--at"), _parse_time(until, "--until")
    cfg, engine = _load(cfg, events, deadletter, until_ms)
    n = int(round(span / step))
    factors = 1.0 + step * np.arange(-n, n + 1)
    console = Console()
    for a in asset or known:
        rows = engine.liquidation_map(a, factors, at_ms)
        if as_json:
            for row in rows:
                sys.stdout.write(json_line(row) + "\n")
            continue
        top = max((r["added_usd"] or 0.0 for r in rows), default=0.0) or 1.0
        table = Table(title=f"{a}: liquidations if its prices moved to each level (round 1, no impact)",
                      caption="USD; longs sold, shorts bought, collateral sold by the accounts liquidatable at "
                              "the level; 'falls': by those not liquidatable at the level nearer the price")
        for col in ("move", "price", "accts", "longs", "shorts", "coll.", "falls"):
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column("", no_wrap=True, min_width=12)
        for r in reversed(rows):  # highest price on top, as on a chart
            bar = "█" * int(round(12 * (r["added_usd"] or 0.0) / top))
            style = "red" if r["move"] < 0 else ("green" if r["move"] > 0 else "bold")
            table.add_row(f"{r['move']:+.0%}", "—" if r["price"] is None else f"{r['price']:,.4g}",
                          f"{r['accounts']:,}", _usd(r["long_usd"]), _usd(r["short_usd"]), _usd(r["collateral_usd"]),
                          _usd(r["added_usd"]), f"[{style}]{bar}[/]")
        console.print(table)


@app.command()
def cascade(
    config: ConfigOpt,
    events: EventsArg,
    scenario: Annotated[str, typer.Option(help="Stress scenario name from the config's stress.scenarios.")],
    severity: Annotated[
        float, typer.Option(help="Shock severity s: asset a moves by d_a × s (0.12 = −12% for a direction of −1).")
    ],
    at: AtOpt = None,
    until: UntilOpt = None,
    deadletter: DeadOpt = None,
) -> None:
    """Simulate a liquidation cascade (SPEC §5) on the state after EVENTS; print the result as one JSON object.

    Shock every venue price by (1 + d_a × s), then rounds: recompute indices, marks and health; liquidate the
    newly liquidatable accounts; move the liquidation venue's books by the net forced sells (impact model).
    Result: `rounds`, `liquidated_accounts`, `liquidated_notional`, `net_sold`, `final_index`, `final_prices`,
    `amplification` (total / round-1 notional), `runaway` (still liquidating after `max_rounds`), plus
    `round_accounts`, `round_notional`, `fees_usd` and `impact_floor` (assets whose impact model took a round's
    price to its 1% floor — warned on stderr: calibrate that depth, `liqwatch calibrate`).

    Example: `liqwatch cascade -c oct-2025-prefix.yaml --scenario risk_off --severity 0.12 events.jsonl`
    """
    cfg = _config(config)
    if scenario not in cfg.stress.scenarios:
        _fail(f"--scenario: unknown scenario '{scenario}' (config has: {', '.join(cfg.stress.scenarios)})")
    if not math.isfinite(severity) or severity < 0:
        _fail(f"--severity: must be a finite number >= 0 (got {severity})")
    for asset, d in cfg.stress.scenarios[scenario].items():
        if d < 0 and -d * severity >= 1:
            _fail(f"--severity: {severity:g} × the direction {d:g} of {asset} in {scenario} moves its price by "
                  f"{d * severity:.0%}, to zero or below (need severity < {-1 / d:g})")
    at_ms, until_ms = _parse_time(at, "--at"), _parse_time(until, "--until")
    cfg, engine = _load(cfg, events, deadletter, until_ms)
    result = engine.cascade(scenario, severity, at_ms)
    sys.stdout.write(json_line(result) + "\n")
    if result["impact_floor"]:
        sys.stderr.write(f"warning: the impact model of {', '.join(result['impact_floor'])} takes the price to its "
                         "floor (1% of it in one round): its depth is probably not calibrated (liqwatch calibrate)\n")


@app.command()
def scenario(
    name: Annotated[str, typer.Argument(help="oct-2025 or calm (synthetic prices), real-2025-10-10 or "
                                             "real-2025-10-07 (recorded prices).", show_default=False, metavar="NAME")],
    accounts: Annotated[
        int, typer.Option(help="Number of accounts (total equity is fixed; this sets granularity).", min=1,
                          max=MAX_ACCOUNTS)
    ] = 100_000,
    seed: Annotated[int, typer.Option(help="Random seed (>= 0): the same seed gives the same bytes.", min=0)] = 7,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write events here (default: stdout).",
                                                callback=out_file)] = None,
    config_out: Annotated[
        Optional[Path], typer.Option("--config-out", help="Also write the scenario's config.", callback=out_file)
    ] = None,
    index: Annotated[
        str,
        typer.Option(
            help="Config variant for --config-out: prefix (the index as it was on 10 "
            "October 2025) or fixed (redemption-weighted, USDe floor)."
        ),
    ] = "prefix",
    no_events: Annotated[bool, typer.Option("--no-events", help="Only write the config.")] = False,
) -> None:
    """Write a scenario's events (JSONL, in event-time order) and optionally its config.

    `oct-2025` replays 20:00–23:00 UTC of 10 October 2025: the tariff post, the cascade, Binance's USDe, WBETH
    and BNSOL books depegging while redemption values hold. `calm` is the same population on a quiet day.

    `real-2025-10-10` is the recorded evening (18:30–00:30 UTC: Binance BTC and SOL perpetual and USDe spot
    minute bars, the Uniswap USDe pool; USDe redeeming at 1.00 is stated, not recorded) with the same kind of
    synthetic accounts opened at its first prices; `real-2025-10-07` the same hours of a calm evening. Their
    configs read BTC and SOL from the perpetual's book (README "Real market data").

    Example: `liqwatch scenario oct-2025 --accounts 5000 --out ev.jsonl --config-out cfg.yaml`

    Example: `liqwatch scenario real-2025-10-10 --accounts 5000 --out real.jsonl --config-out real.yaml`, then
    `liqwatch replay --events real.jsonl --from 2025-10-10T20:30:00Z --to 2025-10-10T22:30:00Z -c real.yaml`
    """
    from liqwatch import scenarios as sc
    from liqwatch.tools import real

    if name not in sc.SCENARIOS and name not in real.DAYS:
        _fail(f"NAME: unknown scenario '{name}' (choose from {', '.join((*sc.SCENARIOS, *real.DAYS))})")
    if index not in ("prefix", "fixed"):
        _fail(f"--index: must be prefix or fixed (got '{index}')")
    if no_events and config_out is None:
        _fail("--no-events: nothing to write without --config-out FILE")
    if config_out is not None:
        path = real.config_path(name, index) if name in real.DAYS else sc.config_path(name, index)
        config_out.write_text(path.read_text())
        err.print(f"config ({index} index) written to {config_out}", highlight=False)
    if no_events:
        return
    from liqwatch.scenarios.write import write_events

    if name in real.DAYS:
        n = write_events(name, accounts, seed, out, events=real.generate(name, accounts, seed), total=accounts)
    else:
        n = write_events(name, accounts, seed, out)
    if out is not None:
        err.print(f"{n:,} events written to {out}", highlight=False)


@app.command()
def demo(
    accounts: Annotated[int, typer.Option(help="Accounts in the scenario's synthetic population.", min=100,
                                          max=MAX_ACCOUNTS)] = 100_000,
    speed: Annotated[float, typer.Option(help="Event time per wall time: 72 plays oct-2025's 20:00–23:00 in 2.5 "
                                              "minutes, a recorded evening's 20:30–22:30 in 100 s.",
                                         min=1.0)] = 72.0,
    no_stack: Annotated[bool, typer.Option("--no-stack", help="Use the running local stack (`liqwatch stack up`) "
                                                              "instead of starting and stopping one.")] = False,
    state_dir: Annotated[Optional[Path], typer.Option(help="Local stack state dir.", file_okay=False)] = None,
    scenario_name: Annotated[str, typer.Option("--scenario", help=(
        "oct-2025, or calm for the false-alarm check (synthetic prices, 20:00–23:00 UTC); real-2025-10-10 (the "
        "recorded crash) or real-2025-10-07 (a calm evening): 20:30–22:30 UTC of that day's recorded prices — the "
        "minutes before are skipped (every indexed book opens a minute bar at 20:30), the synthetic accounts join "
        "at 20:30:00.5, the index designs are compared from 21:10 at risk_off 0.12."))] = "oct-2025",
    partitions: Annotated[int, typer.Option(help="Account partitions shared by the two workers.", min=2,
                                            max=MAX_PARTITIONS)] = 8,
    report: Annotated[Optional[Path], typer.Option(help="Also write the post-mortem report of the run (as "
                                                        "`liqwatch replay` does) into this directory.",
                                                   callback=out_dir)] = None,
) -> None:
    """The October-2025 night through the live pipeline: Kafka, two workers, alerts on screen.

    Starts the local stack, a signed webhook receiver on 127.0.0.1:8099 and two workers; plays the scenario (the
    index as it was) into Kafka at `--speed`× event time; shows indices vs redemption values, accounts by health
    band, liquidatable notional, cascade amplification and critical severity, and alerts as they fire and resolve.
    Ends with the first alert of each kind, the first forced-liquidation wave, the lead time of the first critical
    cascade_risk before it, and the fixed index design side by side. Ctrl-C stops everything it started.
    `--scenario real-2025-10-10` plays the recorded prices of that evening (Binance BTC and SOL perpetuals, USDe
    spot, the Uniswap USDe pool) under synthetic accounts; the post-mortem and the printed `liqwatch replay`
    command cover the window played.

    Example: `liqwatch demo --accounts 20000 --speed 120`, `liqwatch demo --scenario real-2025-10-10`
    """
    from liqwatch import scenarios as sc
    from liqwatch.tools import real
    from liqwatch.tools.demo import run_demo

    names = (*sc.SCENARIOS, *real.DAYS)
    if scenario_name not in names:
        _fail(f"--scenario: unknown scenario '{scenario_name}' (choose from {', '.join(names)})")
    if not math.isfinite(speed):
        _fail(f"--speed: must be a finite number >= 1 (got {speed})")
    try:
        run_demo(accounts, speed, no_stack, state_dir, scenario_name, partitions=partitions, report=report)
    except KeyboardInterrupt:
        err.print("stopped: everything the demo started has been stopped")
        raise typer.Exit(130)
    except RuntimeError as e:
        _fail(str(e), 1)


@app.command()
def worker(
    config: ConfigOpt,
    web_port: Annotated[int, typer.Option(help="Port of this worker's /metrics and /healthz on 127.0.0.1.",
                                          min=1, max=65535)] = 6066,
    bootstrap: Bootstrap = None,
    state_dir: StateDir = None,
    security_protocol: SecurityProtocol = None,
    sasl_mechanism: SaslMechanism = None,
    sasl_username: SaslUsername = None,
    sasl_password_env: SaslPasswordEnv = None,
    ssl_ca: SslCa = None,
    ssl_cert: SslCert = None,
    ssl_key: SslKey = None,
    worker_id: Annotated[Optional[str], typer.Option(help="Name in logs, metrics targets and cascade replies.")] = None,
    partitions: Annotated[int, typer.Option(help="Partitions of the sharded topics (accounts, health).",
                                            min=1, max=MAX_PARTITIONS)] = 8,
    topic_prefix: Annotated[str, typer.Option(help="Prefix of every topic name (side-by-side deployments).",
                                              callback=topic_name)] = "",
    app_id: Annotated[str, typer.Option(help="Faust app id = Kafka consumer group of the workers.",
                                        callback=_app_id)] = "liqwatch",
    evaluate_every_ms: Annotated[Optional[int], typer.Option(
        help="Event time between shard health evaluations. [default: the config's schedule]", min=1,
        show_default=False)] = None,
    cascade_every_ms: Annotated[Optional[int], typer.Option(
        help="Event time between stress cascades. [default: the config's schedule]", min=1,
        show_default=False)] = None,
    idle_s: Annotated[float, typer.Option(help="Wall seconds without input before the exact flush.",
                                          min=0.05)] = 1.0,
    resume_grace_s: Annotated[float, typer.Option(
        help="After a pause in the input (start, broker restart) every input topic holds the event-time merge "
             "this long: producers resume in no particular order. 0 when every input was written before the "
             "workers start (a benchmark on recorded topics).", min=0)] = 10.0,
    boundary_wait_s: Annotated[float, typer.Option(
        help="At the head of the input an evaluation boundary waits this long for records at or before its event "
             "time from partitions that have nothing newer yet: brokers make different partitions' records "
             "visible out of step. Records that still come later are counted (liqwatch_market_late_total) and "
             "said in the log. 0 when every input was written before the workers start.", min=0)] = 1.0,
    account_queue: Annotated[int, typer.Option(
        help="Boundaries whose account work (shard health, severities, cascades) may wait behind the market feed. "
             "The feed never waits for account work unless this many are queued; a burst that the account work "
             "cannot follow is absorbed here and said in the log and in liqwatch_account_work_lag_seconds.",
        min=1, max=10_000)] = 32,
    market_stage: Annotated[bool, typer.Option(
        "--market-stage/--no-market-stage",
        help="Run a market stage beside this worker (a child process, `liqwatch market-stage`): the stages of "
             "all workers share the tick partitions and decode each tick once for the cluster; the worker reads "
             "their admitted rows. Give every worker of a group the same setting.")] = False,
) -> None:
    """Run one Faust worker of the monitor; start several (each with its own --web-port) to scale out.

    Every worker reads every tick and reference (prices are global) and the account partitions Kafka assigns it;
    it emits `health` events for its accounts, `mark` and `cascade` events when it is the leader, dead-letters
    bad records, and serves Prometheus metrics at http://127.0.0.1:WEB_PORT/metrics. Accounts survive a restart
    through the changelog of the `accounts` table.

    Example: `liqwatch worker -c oct-2025-prefix.yaml --web-port 6066` and, in another shell,
    `liqwatch worker -c oct-2025-prefix.yaml --web-port 6067`.
    """
    from aiokafka.errors import KafkaError

    from liqwatch.sinks.topics import replication_factor
    from liqwatch.tools import stack
    from liqwatch.worker.app import WorkerSettings, run_worker
    from liqwatch.tools.transport import TransportError

    cfg = _config(config).with_schedule(evaluate_every_ms=evaluate_every_ms, cascade_every_ms=cascade_every_ms)
    # batch commands need no secrets, so the config loads without them; a worker sends webhooks: check them now
    for i, wh in enumerate(cfg.alerts.webhooks):
        value = os.environ.get(wh.secret_env)
        if not value:
            _fail(f"alerts.webhooks[{i}].secret_env: environment variable {wh.secret_env} is "
                  f"{'empty' if value == '' else 'not set'} (export {wh.secret_env}=<the receiver's secret>)")
    kafka = connect(state_dir, cfg.kafka, bootstrap=bootstrap, security_protocol=security_protocol,
                    sasl_mechanism=sasl_mechanism, sasl_username=sasl_username, sasl_password_env=sasl_password_env,
                    ssl_ca=ssl_ca, ssl_cert=ssl_cert, ssl_key=ssl_key)
    # the local stack's Prometheus scrapes this worker when the worker uses that stack's Kafka
    state = None
    with contextlib.suppress(stack.StackError):
        st = stack.load(state_dir)
        if kafka.bootstrap == stack.bootstrap_servers(st):
            state = st.state_dir
    busy = _port_busy(web_port)
    if busy:
        _fail(f"--web-port: cannot listen on 127.0.0.1:{web_port}: {busy} (another worker? give each its own "
              "--web-port)", 1)
    try:  # fail at start, in seconds and in one line, when no broker answers or it refuses these credentials
        brokers = asyncio.run(probe_kafka(kafka))
    except TransportError as e:
        _fail(str(e), 1)
    log.info("Kafka at %s: %d broker(s)", kafka.describe(), brokers)
    settings = WorkerSettings(kafka=kafka, replicas=replication_factor(brokers), web_port=web_port,
                              partitions=partitions,
                              topic_prefix=topic_prefix, app_id=app_id, idle_s=idle_s, resume_grace_s=resume_grace_s,
                              boundary_wait_s=boundary_wait_s,
                              market_stage=market_stage, config_path=config.resolve(), account_queue=account_queue)
    if worker_id:
        settings.worker_id = worker_id
    if state is not None:
        stack.register_scrape_target(state, settings.worker_id, web_port)
    try:
        run_worker(cfg, settings)  # creates the topics first: the broker may still refuse, or go away
    except KafkaError as e:
        _fail(f"Kafka at {kafka.bootstrap} failed: {e!r}", 1)
    finally:
        if state is not None:
            stack.unregister_scrape_target(state, settings.worker_id)


@app.command("market-stage")
def market_stage(
    config: ConfigOpt,
    bootstrap: Bootstrap = None,
    state_dir: StateDir = None,
    security_protocol: SecurityProtocol = None,
    sasl_mechanism: SaslMechanism = None,
    sasl_username: SaslUsername = None,
    sasl_password_env: SaslPasswordEnv = None,
    ssl_ca: SslCa = None,
    ssl_cert: SslCert = None,
    ssl_key: SslKey = None,
    topic_prefix: Annotated[str, typer.Option(help="Prefix of every topic name (side-by-side deployments).",
                                              callback=topic_name)] = "",
    group: Annotated[str, typer.Option(help="Consumer group of the stages: they share the tick partitions.",
                                       callback=_app_id)] = "liqwatch-market-stage",
    stage_id: Annotated[str, typer.Option(help="Name in logs and Kafka client ids.")] = "market-stage",
) -> None:
    """Decode and judge the ticks once for the whole cluster: read some partitions of liqwatch.ticks (a consumer
    group shares them), put each partition's records through its door, and publish the admitted rows, with the
    dead letters, to liqwatch.market, which the workers started with `--market-stage` read.

    `liqwatch worker --market-stage` runs one beside each worker; run more alone to add market capacity (up to
    one per tick partition). Stops on SIGTERM or Ctrl-C.
    """
    from liqwatch.sinks.topics import TopicNames, create_topics
    from liqwatch.tools.transport import TransportError
    from liqwatch.worker.stage import run_stage

    cfg = _config(config)
    kafka = connect(state_dir, cfg.kafka, bootstrap=bootstrap, security_protocol=security_protocol,
                    sasl_mechanism=sasl_mechanism, sasl_username=sasl_username, sasl_password_env=sasl_password_env,
                    ssl_ca=ssl_ca, ssl_cert=ssl_cert, ssl_key=ssl_key)
    try:
        asyncio.run(probe_kafka(kafka))
        asyncio.run(create_topics(kafka, prefix=topic_prefix))
    except TransportError as e:
        _fail(str(e), 1)
    run_stage(cfg, TopicNames(topic_prefix), kafka, group, stage_id)


@bench_app.command("pipeline")
def bench_pipeline(
    accounts: Annotated[list[int], typer.Option(help="Accounts loaded before the ticks; repeat for several runs "
                                                     "(--accounts 100000 --accounts 1000000).", min=1)] = [100_000],
    workers: Annotated[list[int], typer.Option(help="Workers of the group; repeat for several runs (--workers 1 "
                                                    "--workers 2: the scale-out figure).", min=1, max=8)] = [1],
    rate: Annotated[int, typer.Option(help="Live ticks per second for the latency phase.", min=1)] = 50_000,
    seconds: Annotated[float, typer.Option(help="Length of the measured latency phase.", min=1)] = 20.0,
    warmup: Annotated[float, typer.Option(help="Live seconds before the measured ones (the workers start on a "
                                               "new stream).", min=0)] = 5.0,
    ticks: Annotated[int, typer.Option(help="Ticks of each recorded firehose the ingest is measured on (the one "
                                            "read while the accounts load, and the catch-up one).",
                                       min=10_000)] = 2_000_000,
    state_dir: Annotated[Optional[Path], typer.Option(help="Use this running stack (default: start a temporary "
                                                           "one on free ports and stop it after).",
                                                      file_okay=False)] = None,
    profile: Annotated[Optional[Path], typer.Option(help="Sample the first worker with py-spy into FILE-<phase>-… "
                                                         "(collapsed stacks; `liqwatch bench top` sums them).",
                                                    dir_okay=False)] = None,
    tick_partitions: Annotated[int, typer.Option(help="Partitions of the ticks topic (books spread over them).",
                                                 min=1, max=64)] = 1,
    market_stage: Annotated[bool, typer.Option(
        "--market-stage/--no-market-stage", help="Workers run with --market-stage: the ticks are decoded by the "
                                                 "stages, once for the cluster.")] = False,
) -> None:
    """Workers' throughput vs raw consumers on the same topic, and tick → mark latency at a live rate: every
    --accounts × --workers combination in one run.

    Prints one JSON object: per run `raw_consume_per_s` (aiokafka and confluent-kafka), `worker_ticks_per_s`,
    `cluster_ticks_per_s`, `worker_vs_fastest_raw` (a firehose read while every account loads beside it),
    `catch_up` (the workers paused, a firehose written, then read with every account loaded: the market path's
    own rate against the raw consumers on the same records), `latency_p50_ms`, `latency_p99_ms`,
    `all_live_ticks_processed`; and `scale_out` (what a second worker adds) when --workers has 1 and 2. Progress
    on stderr.

    Example: liqwatch bench pipeline --accounts 100000 --accounts 1000000 --workers 1 --workers 2

    Scale-out of the market path: liqwatch bench pipeline --workers 1 --workers 2 --tick-partitions 4 --market-stage
    """
    from liqwatch.tools import stack
    from liqwatch.tools.bench_pipeline import pipeline

    if not math.isfinite(seconds) or not math.isfinite(warmup):
        _fail(f"--seconds/--warmup: must be finite numbers (got {seconds}, {warmup})")
    err = Console(stderr=True)
    try:
        result = pipeline(accounts, workers, rate, seconds, state_dir, ticks=ticks, profile=profile,
                          warmup_s=warmup, progress=lambda msg: err.print(f"[dim]{escape(msg)}[/]"),
                          tick_partitions=tick_partitions, market_stage=market_stage)
    except stack.StackError as e:
        _fail(str(e), 1)
    sys.stdout.write(json_line(result) + "\n")


@bench_app.command("top")
def bench_top(
    profile: Annotated[Path, typer.Argument(help="A collapsed-stacks file of `bench pipeline --profile`.",
                                            exists=True, dir_okay=False)],
    frames: Annotated[int, typer.Option(help="Frames to list.", min=1)] = 25,
    thread: Annotated[Optional[str], typer.Option(help="Only the threads whose name contains this.")] = None,
) -> None:
    """Where the worker's time goes: the frames of a py-spy profile by share of samples, running (`self`) and on
    the stack (`inclusive`)."""
    from liqwatch.tools.bench_pipeline import top_frames

    got = top_frames(profile, frames, thread)
    table = Table(title=f"{profile.name}: {got['samples']} samples")
    table.add_column("self %", justify="right")
    table.add_column("frame (running)")
    table.add_column("incl. %", justify="right")
    table.add_column("frame (on the stack)")
    for (fs, ps), (fi, pi) in itertools.zip_longest(got["self"], got["inclusive"], fillvalue=("", "")):
        table.add_row(str(ps), fs, str(pi), fi)
    Console(width=200).print(table)


@bench_app.command("kernels")
def bench_kernels(
    accounts: Annotated[int, typer.Option(help="Accounts in the synthetic book.", min=1000)] = 1_000_000,
    repeat: Annotated[int, typer.Option(help="Timed repetitions (the best is reported).", min=1)] = 5,
    reference_sample: Annotated[int, typer.Option(help="Accounts timed with the plain-Python reference.",
                                                  min=1)] = 20_000,
) -> None:
    """Kernel speed and memory on one core: numba health vs a streaming pass, NumPy and plain Python; cascade.

    Prints one JSON object: `accounts`, `health_ms`, `stream_ms`, `health_numpy_ms`, `health_reference_ms`,
    `speedup_vs_reference`, `speedup_vs_numpy`, `cascade_ms`, `bytes_per_account`, …
    """
    from liqwatch.tools.bench import kernels as run

    sys.stdout.write(json_line(run(accounts, repeat, reference_sample)) + "\n")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _port_busy(port: int) -> str | None:
    """Why 127.0.0.1:port cannot be listened on (None: it can), tried as the worker's web server will."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.strerror or str(e)
    return None


def _usage_error(e: Exception) -> NoReturn:
    """click's usage lines, then the message on one line (a rich panel would wrap it over several)."""
    ctx = getattr(e, "ctx", None)
    if ctx is not None:  # unwrapped: click would wrap the usage to the terminal width
        sys.stderr.write(f"Usage: {ctx.command_path} {' '.join(ctx.command.collect_usage_pieces(ctx))}\n")
        if ctx.command.get_help_option(ctx) is not None:
            sys.stderr.write(f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.\n")
    err.print(f"[bold red]error:[/] {escape(e.format_message())}", highlight=False)  # type: ignore[attr-defined]
    sys.exit(getattr(e, "exit_code", 2))


def main() -> None:
    """Run the CLI. A usage mistake prints click's usage lines and one `error:` line (exit 2); an OS error nothing
    checked beforehand prints one line (exit 1): never a traceback for a mistake (`-v` logs the traceback)."""
    try:
        code = app(standalone_mode=False)
    except Exception as e:
        # the click typer vendors (recent typer) or click itself: matched by class name, as typer does
        kinds = {c.__name__ for c in type(e).__mro__}
        if "NoArgsIsHelpError" in kinds:  # the help is already printed
            sys.exit(2)
        if "ClickException" in kinds:
            _usage_error(e)
        if "Abort" in kinds:
            err.print("aborted", highlight=False)
            sys.exit(1)
        if not isinstance(e, (OSError, MemoryError)):
            raise
        log.debug("unexpected error", exc_info=True)
        what = f"{e.strerror}: '{e.filename}'" if isinstance(e, OSError) and e.filename else \
            (e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}")
        err.print(f"[bold red]error:[/] {escape(what)}", highlight=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
