"""`liqwatch replay`: a post-mortem report of an event-time window (SPEC §7), from Kafka or a JSONL file.

    liqwatch replay --from 2025-10-10T20:00:00Z --to 2025-10-10T23:00:00Z -c prefix.yaml --compare fixed.yaml \\
        --report pm/
    liqwatch replay --events ev.jsonl --from 1760126400000 --to 1760137200000 -c prefix.yaml --report pm/
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from liqwatch.config import ConfigError, load_config
from liqwatch.cli.transport import (Bootstrap, SaslMechanism, SaslPasswordEnv, SaslUsername, SecurityProtocol, SslCa,
                                    SslCert, SslKey, StateDir, connect, out_dir, probe_kafka, topic_name)

err = Console(stderr=True, soft_wrap=True)

# the last millisecond of the year 9999: later times cannot be printed as dates
MAX_TIME_MS = 253_402_300_799_999


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def load_config_or_exit(path: Path, option: str = "--config"):
    """The config at `path`, or exit 2 with one line per problem: `error: --config FILE: field.path: problem`."""
    try:
        return load_config(path)
    except ConfigError as e:
        for problem in e.problems:
            err.print(f"[bold red]error:[/] {option} {path}: {escape(problem)}", highlight=False)
        raise typer.Exit(2) from None


def parse_time(value: str, option: str) -> int:
    """Epoch milliseconds or ISO-8601 (UTC unless it says otherwise), from 1970 to the year 9999."""
    from datetime import datetime, timezone

    v = value.strip()
    if re.fullmatch(r"\d+", v):
        ms = int(v)
    else:
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            _fail(f"{option}: '{value}' is neither epoch milliseconds nor ISO-8601 (e.g. 2025-10-10T21:15:00Z)")
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        ms = int(dt.timestamp() * 1000)
    if not 0 <= ms <= MAX_TIME_MS:
        _fail(f"{option}: '{value}' is outside 1970-01-01 .. 9999-12-31 (epoch milliseconds 0 .. {MAX_TIME_MS})")
    return ms


def parse_duration(value: str, option: str) -> int:
    """'30m', '90s', '1h', '1500ms' or milliseconds → milliseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*", value)
    if not m:
        _fail(f"{option}: '{value}' is not a duration (e.g. 30m, 90s, 1h, 1500ms)")
    unit = {"ms": 1, None: 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000}[m.group(2)]
    return int(float(m.group(1)) * unit)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), console=err, transient=False, disable=not err.is_terminal)


def _names(paths: list[Path]) -> list[str]:
    names, seen = [], {}
    for p in paths:
        n = p.stem
        seen[n] = seen.get(n, 0) + 1
        names.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return names


def replay_command(
    report: Annotated[Path, typer.Option("--report", help="Directory for index.html, summary.json, the PNG plots "
                                         "and one alerts JSONL per config (created; existing files are replaced).",
                                         show_default=False, callback=out_dir)],
    t_from: Annotated[str, typer.Option("--from", help="Start of the window: ISO-8601 UTC "
                                        "(2025-10-10T20:00:00Z) or epoch ms.", show_default=False)],
    t_to: Annotated[str, typer.Option("--to", help="End of the window (inclusive), same forms.",
                                      show_default=False)],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", envvar="LIQWATCH_CONFIG", show_default=False,
                                                   exists=True, dir_okay=False, readable=True,
                                                   help="The config under review (SPEC §2), e.g. the index as it "
                                                        "was.")] = None,
    compare: Annotated[Optional[list[Path]], typer.Option("--compare", show_default=False, exists=True,
                                                          dir_okay=False, readable=True,
                                                          help="Another config to replay the same window with and "
                                                               "set side by side (repeatable).")] = None,
    events: Annotated[Optional[Path], typer.Option("--events", show_default=False, exists=True, dir_okay=False,
                                                   readable=True,
                                                   help="Replay a JSONL file instead of Kafka.")] = None,
    warmup: Annotated[Optional[str], typer.Option(
        "--warmup", show_default=False, help="Market history read before --from to rebuild prices and basis "
        "averages (30m, 90s, 0). Default: the config's longest look-back (basis window, index max age).")] = None,
    bootstrap: Bootstrap = None,
    state_dir: StateDir = None,
    security_protocol: SecurityProtocol = None,
    sasl_mechanism: SaslMechanism = None,
    sasl_username: SaslUsername = None,
    sasl_password_env: SaslPasswordEnv = None,
    ssl_ca: SslCa = None,
    ssl_cert: SslCert = None,
    ssl_key: SslKey = None,
    topic_prefix: Annotated[str, typer.Option(help="Prefix of the topic names the live workers use.",
                                              callback=topic_name)] = "",
    evaluate_every_ms: Annotated[Optional[int], typer.Option(
        help="Event time between evaluations, as the workers were run with. [default: the config's schedule]",
        min=1, show_default=False)] = None,
    cascade_every_ms: Annotated[Optional[int], typer.Option(
        help="Event time between stress cascades, as the workers were run with. [default: the config's schedule]",
        min=1, show_default=False)] = None,
) -> None:
    """Post-mortem of an event-time window: replay the recorded inputs through the same core as the live workers
    and write a report: index vs venue prices vs redemption value per asset (and the sources left out, and why),
    accounts by health band, liquidatable notional, stress-cascade amplification and critical severity, the alert
    timeline, liquidity-aware position limits, and for each `--compare` config the same side by side with what it
    would have changed (liquidations avoided, alerts earlier, later or not at all).

    Kafka is read by time without a consumer group (live workers are not disturbed): ticks and references from
    `--from` minus the warm-up to `--to`, account snapshots up to `--to` (an account at `--from` is its
    latest snapshot before it). Nothing after `--to` is used. Replaying what the live workers processed gives
    the alerts they emitted (same ids and event times); the same window twice gives a byte-identical
    summary.json.

    Example (the October-2025 evening produced to the local stack, the index as it was against the fix):

    `liqwatch replay --from 2025-10-10T20:00:00Z --to 2025-10-10T23:00:01Z -c liqwatch/scenarios/oct-2025-prefix.yaml
    --compare liqwatch/scenarios/oct-2025-fixed.yaml --report pm/`
    """
    from liqwatch.replay.report import build_summary, write_report
    from liqwatch.replay.replayer import EmptyWindow, default_warmup_ms, read_file, read_kafka, Replayer, iso, describe

    if config is None:
        _fail("--config: required (the config under review), or set LIQWATCH_CONFIG")
    start, end = parse_time(t_from, "--from"), parse_time(t_to, "--to")
    if end < start:
        _fail(f"--to: {iso(end)} is before --from {iso(start)}")
    paths = [config, *(compare or [])]
    cfgs = [load_config_or_exit(p, opt).with_schedule(evaluate_every_ms=evaluate_every_ms,
                                                      cascade_every_ms=cascade_every_ms)
            for opt, p in zip(["--config"] + ["--compare"] * (len(paths) - 1), paths)]
    warm = parse_duration(warmup, "--warmup") if warmup is not None else max(default_warmup_ms(c) for c in cfgs)
    kafka = None
    if events is None:  # the config under review's `kafka:` block, under the options
        kafka = connect(state_dir, cfgs[0].kafka, bootstrap=bootstrap, security_protocol=security_protocol,
                        sasl_mechanism=sasl_mechanism, sasl_username=sasl_username,
                        sasl_password_env=sasl_password_env, ssl_ca=ssl_ca, ssl_cert=ssl_cert, ssl_key=ssl_key)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    t0 = time.monotonic()
    try:
        with _progress() as progress:
            if events is not None:
                task = progress.add_task(f"reading {events.name}", total=None, info="")
                window = read_file(events, start, end, warm, cfgs[0])
                progress.update(task, total=1, completed=1, info=f"{len(window.market):,} market events")
            else:
                from liqwatch.sinks.topics import TopicNames
                from liqwatch.tools.transport import TransportError

                try:
                    asyncio.run(probe_kafka(kafka))
                except TransportError as e:
                    _fail(str(e), 1)
                task = progress.add_task("reading Kafka", total=None, info="")

                def read(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total, info="records")

                try:
                    window = asyncio.run(read_kafka(kafka, TopicNames(topic_prefix), start, end, warm, read,
                                                    cfgs[0]))
                except EmptyWindow:
                    raise
                except Exception as e:  # unreachable broker etc.: one line
                    _fail(f"--bootstrap {kafka.bootstrap}: cannot read the topics ({type(e).__name__}: {e})", 1)
            window.check()
            runs, limits = [], []
            from liqwatch.core.layout import Layout
            from liqwatch.risk.limits import liquidity_limits

            for name, cfg in zip(_names(paths), cfgs):
                task = progress.add_task(f"replaying {name}", total=max(end - start, 1), info="")

                def moved(t: int, task=task) -> None:
                    progress.update(task, completed=min(max(t - start, 0), end - start), info=iso(t))

                run = asyncio.run(Replayer(cfg, name, window).replay(moved))
                progress.update(task, completed=end - start)
                runs.append(run)
                fb = run.first_priced
                limits.append([] if fb is None else liquidity_limits(cfg, Layout(cfg), fb["pv"], fb["accounts"]))
    except EmptyWindow as e:
        _fail(f"empty window: {e}; nothing to report", 1)
    summary = build_summary(window, runs, limits)
    command = "liqwatch replay " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else \
        "liqwatch replay"
    files = write_report(report, summary, command)
    took = time.monotonic() - t0
    err.print(f"replayed {describe(window.source)} from {iso(start)} to {iso(end)} in {took:.1f} s", highlight=False)
    for c in summary["configs"]:
        t = c["totals"]
        lead = "—" if c["lead_time_s"] is None else f"{c['lead_time_s'] / 60:.1f} min"
        err.print(f"  {c['name']}: liquidated ${t['liquidated_usd'] / 1e9:,.2f}B ({t['liquidated_accounts']:,} "
                  f"accounts), {t['episodes']} alert episodes ({t['critical_episodes']} critical), lead time {lead}",
                  highlight=False)
    for cmp in summary["comparisons"]:
        err.print(f"  {cmp['config']} vs {cmp['against']}: ${cmp['liquidated_usd_avoided'] / 1e9:,.2f}B of forced "
                  f"liquidations avoided", highlight=False)
    err.print(f"report: {files['html']}  (summary: {files['summary']})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("replay", no_args_is_help=True)(replay_command)


