"""`liqwatch produce FILE` and `liqwatch dump TOPIC` (SPEC §7): JSONL file → input topics, topic → JSONL.

    liqwatch produce oct.jsonl                        # to the stack in ~/.cache/liqwatch/state (or --state-dir)
    liqwatch dump liqwatch.alerts --out alerts.jsonl --bootstrap 127.0.0.1:9092

The main CLI mounts both with `register(app)`; standalone: `python -m liqwatch.cli.transport produce FILE`.
Bad arguments exit 2 naming the option; Kafka problems exit 1 with one line, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import sys
import time
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from liqwatch.tools import stack
from liqwatch.sinks import topics as T

err = Console(stderr=True, soft_wrap=True)  # a message is one line, whatever the terminal width

# The Kafka connection of every command (README "Production Kafka"): options, else their environment variables,
# else the config's `kafka:` block, else the local stack in --state-dir (its TLS and SCRAM user too).
KAFKA = "Kafka connection"
Bootstrap = Annotated[Optional[str], typer.Option(
    "--bootstrap", envvar="LIQWATCH_KAFKA_BOOTSTRAP", rich_help_panel=KAFKA, show_default=False,
    help="Kafka bootstrap servers HOST:PORT[,HOST:PORT]. [default: the config's kafka.bootstrap, else the stack "
         "in --state-dir]")]
SecurityProtocol = Annotated[Optional[str], typer.Option(
    "--security-protocol", envvar="LIQWATCH_KAFKA_SECURITY_PROTOCOL", rich_help_panel=KAFKA, show_default=False,
    help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL. [default: the config's, else PLAINTEXT]")]
SaslMechanism = Annotated[Optional[str], typer.Option(
    "--sasl-mechanism", envvar="LIQWATCH_KAFKA_SASL_MECHANISM", rich_help_panel=KAFKA, show_default=False,
    help="SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN (with a SASL_ protocol).")]
SaslUsername = Annotated[Optional[str], typer.Option(
    "--sasl-username", envvar="LIQWATCH_KAFKA_USERNAME", rich_help_panel=KAFKA, show_default=False,
    help="SASL user.")]
SaslPasswordEnv = Annotated[Optional[str], typer.Option(
    "--sasl-password-env", rich_help_panel=KAFKA, show_default=False,
    help="Name of the environment variable holding the SASL password (never the password itself: it would show "
         "in `ps` and in shell history). [default: LIQWATCH_KAFKA_PASSWORD]")]
SslCa = Annotated[Optional[Path], typer.Option(
    "--ssl-ca", envvar="LIQWATCH_KAFKA_CA", rich_help_panel=KAFKA, show_default=False, dir_okay=False,
    help="PEM file of the CA(s) that signed the brokers' certificates. [default: the system's CAs]")]
SslCert = Annotated[Optional[Path], typer.Option(
    "--ssl-cert", envvar="LIQWATCH_KAFKA_CERT", rich_help_panel=KAFKA, show_default=False, dir_okay=False,
    help="PEM client certificate, for brokers that require one (with --ssl-key).")]
SslKey = Annotated[Optional[Path], typer.Option(
    "--ssl-key", envvar="LIQWATCH_KAFKA_KEY", rich_help_panel=KAFKA, show_default=False, dir_okay=False,
    help="PEM private key of --ssl-cert (unencrypted).")]
StateDir = Annotated[Optional[Path], typer.Option(
    "--state-dir", envvar="LIQWATCH_STATE_DIR", show_default=False, file_okay=False,
    rich_help_panel=KAFKA,
    help="State dir of a stack started with `liqwatch stack up` (its stack.json has the Kafka port). "
         "[default: ~/.cache/liqwatch/state]")]

_OPTION_OF = {"bootstrap": "--bootstrap", "security_protocol": "--security-protocol",
              "sasl_mechanism": "--sasl-mechanism", "username": "--sasl-username",
              "password_env": "--sasl-password-env",
              "ca_file": "--ssl-ca", "cert_file": "--ssl-cert", "key_file": "--ssl-key"}


def connect(state_dir: Optional[Path], spec: Any = None, *, bootstrap: Optional[str] = None,
            security_protocol: Optional[str] = None, sasl_mechanism: Optional[str] = None,
            sasl_username: Optional[str] = None, sasl_password_env: Optional[str] = None,
            ssl_ca: Optional[Path] = None, ssl_cert: Optional[Path] = None,
            ssl_key: Optional[Path] = None) -> Any:
    """The command's Kafka connection (liqwatch.kafka.Connection), or exit 2 with one line naming the option or
    config field: the options over the config's `kafka:` block (`spec`), or, when neither names a bootstrap, over
    the local stack's own connection (its password from <state>/config/kafka.password unless the environment has
    one)."""
    from pydantic import ValidationError

    from liqwatch.config import KafkaSpec
    from liqwatch.kafka import Connection, KafkaSettingError

    given = {k: v for k, v in {"bootstrap": bootstrap, "security_protocol": security_protocol,
                               "sasl_mechanism": sasl_mechanism, "username": sasl_username,
                               "password_env": sasl_password_env, "ca_file": ssl_ca, "cert_file": ssl_cert,
                               "key_file": ssl_key}.items() if v is not None}
    spec = spec if spec is not None else KafkaSpec()
    fallback = None  # the stack's password
    if "bootstrap" not in given and spec.bootstrap is None:
        try:
            local = stack.connection(stack.load(state_dir))
        except stack.StackError as e:
            damaged = ((state_dir or stack.default_state_dir()) / "stack.json").exists()
            _fail(f"--state-dir: {e}" if damaged else f"--bootstrap: not given and {e}; or give the --state-dir "
                  "of a running stack")
        if not given:  # the stack's own user; a password in the environment still wins (as everywhere)
            return replace(local, password=os.environ[local.password_env]) if os.environ.get(
                local.password_env) and local.sasl else local
        base = {"bootstrap": local.bootstrap, "security_protocol": local.security_protocol,
                "sasl_mechanism": local.sasl_mechanism, "username": local.username, "ca_file": local.ca_file}
        fallback = local.password
    else:
        base = spec.model_dump(exclude_none=True)
    if "security_protocol" in given:  # another protocol drops what only the old one used, unless given again
        base = {k: v for k, v in base.items() if k in ("bootstrap", "password_env")}
    try:
        merged = KafkaSpec.model_validate({**base, **given})
    except ValidationError as e:
        err0 = e.errors()[0]
        msg = err0["msg"].removeprefix("Value error, ")
        # a check across fields names its field first ("sasl_mechanism needs …")
        field = str(err0["loc"][0]) if err0["loc"] else msg.split()[0].split("/")[0]
        got = f" (got {err0['input']!r})" if isinstance(err0.get("input"), str) else ""
        _fail(f"{_OPTION_OF.get(field, '--security-protocol')}: {msg}{got}")
    env = dict(os.environ)
    if fallback is not None and not env.get(merged.password_env):
        env[merged.password_env] = fallback
    try:
        kafka = Connection.from_spec(merged, env)
    except KafkaSettingError as e:
        _fail(str(e))
    return kafka


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


# -- checks of arguments shared by the commands (typer callbacks raise BadParameter: click names the option) --

def in_file(value: Optional[Path]) -> Optional[Path]:
    """Callback of an argument naming a file to read, or - for stdin (typer's own `allow_dash` does not work with a
    Path annotation)."""
    if value is None or str(value) == "-":
        return value
    if not value.exists():
        raise typer.BadParameter(f"file '{value}' does not exist")
    if value.is_dir():
        raise typer.BadParameter(f"'{value}' is a directory, not a file")
    if not os.access(value, os.R_OK):
        raise typer.BadParameter(f"cannot read '{value}': permission denied")
    return value


def out_file(value: Optional[Path]) -> Optional[Path]:
    """Callback of an option naming a file to write: not a directory, in a directory that exists."""
    if value is None or str(value) == "-":
        return value
    if value.is_dir():
        raise typer.BadParameter(f"'{value}' is a directory; give a file name")
    parent = value.parent
    if not parent.is_dir():
        raise typer.BadParameter(f"cannot write '{value}': directory '{parent}' does not exist"
                                 if not parent.exists() else f"cannot write '{value}': '{parent}' is not a directory")
    if not os.access(value if value.exists() else parent, os.W_OK):
        raise typer.BadParameter(f"cannot write '{value}': permission denied")
    return value


def out_dir(value: Optional[Path]) -> Optional[Path]:
    """Callback of an option naming a directory to create or fill: not a file, under a directory."""
    if value is None:
        return value
    if value.exists() and not value.is_dir():
        raise typer.BadParameter(f"'{value}' is a file, not a directory")
    above = value
    while not above.exists() and above != above.parent:
        above = above.parent
    if above.exists() and not above.is_dir():
        raise typer.BadParameter(f"cannot create '{value}': '{above}' is a file")
    if above.exists() and not os.access(above, os.W_OK):
        raise typer.BadParameter(f"cannot write in '{above}': permission denied")
    return value


_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]*")


def topic_name(value: Optional[str]) -> Optional[str]:
    """Callback of a topic name (or prefix): Kafka's legal characters, at most 200 of them."""
    if value is not None and (not _TOPIC_RE.fullmatch(value) or len(value) > 200):
        raise typer.BadParameter(f"'{value}' is not a Kafka topic name (letters, digits, '.', '_', '-'; at most 200)")
    return value


async def probe_kafka(kafka: Any, timeout_s: float = 10.0) -> int:
    """Connect as the command's clients will and leave; the cluster's number of brokers. TransportError (one line:
    'cannot reach Kafka at …', a refused password, an untrusted certificate…) otherwise."""
    from liqwatch.kafka import KafkaRefused, probe
    from liqwatch.tools.transport import TransportError

    try:
        return await probe(kafka, timeout_s)
    except KafkaRefused as e:
        raise TransportError(str(e)) from None


def _kafka_spec(config: Optional[Path]) -> Any:
    """The `kafka:` block of a config file, or None; a config that is not valid exits 2 naming its problem."""
    if config is None:
        return None
    from liqwatch.config import ConfigError, load_config

    try:
        return load_config(config).kafka
    except ConfigError as e:
        _fail(f"--config: {e.problems[0]} ({config})")


def _positive(value: float | None, option: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        _fail(f"{option}: must be a finite number > 0 (got {value})")


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    from liqwatch.tools.transport import TransportError

    # aiokafka logs every refused connection at ERROR; the user gets our one line instead.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(coro)
    except TransportError as e:
        _fail(str(e), 1)
    except LookupError as e:
        _fail(f"TOPIC: {e}")
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def produce(
    file: Annotated[Path, typer.Argument(help="JSONL events file (SPEC §1), or - for stdin.", show_default=False,
                                         metavar="FILE", callback=in_file)],
    bootstrap: Bootstrap = None,
    state_dir: StateDir = None,
    security_protocol: SecurityProtocol = None,
    sasl_mechanism: SaslMechanism = None,
    sasl_username: SaslUsername = None,
    sasl_password_env: SaslPasswordEnv = None,
    ssl_ca: SslCa = None,
    ssl_cert: SslCert = None,
    ssl_key: SslKey = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", rich_help_panel=KAFKA, show_default=False, dir_okay=False, callback=in_file,
        help="A liqwatch config whose `kafka:` block to use (nothing else of it is read).")] = None,
    partitions: Annotated[int, typer.Option(
        min=1, max=10_000,
        help="Partitions of liqwatch.accounts (and the other sharded topics) when they are created.")] = 8,
    tick_partitions: Annotated[int, typer.Option(
        min=1, max=10_000,
        help="Partitions of liqwatch.ticks when it is created (a book's ticks stay in one): more than one lets "
             "the workers' market stages share the decoding (`liqwatch worker --market-stage`).")] = 1,
    rate: Annotated[Optional[float], typer.Option(
        help="Send at most this many events per second of wall time. [default: as fast as possible]",
        show_default=False)] = None,
    speed: Annotated[Optional[float], typer.Option(
        help="Replay event time N× faster than real time, by the events' `ts` (60 = one hour in a minute).",
        show_default=False)] = None,
    unknown_to: Annotated[Optional[str], typer.Option(
        "--unknown-to", help="Topic for lines that are not JSON objects or have no input `type` (sent unkeyed, "
        "for the workers' dead-letter path). [default: the accounts topic]", show_default=False,
        callback=topic_name)] = None,
    topic_prefix: Annotated[str, typer.Option(
        "--topic-prefix", help="Put every topic name under this prefix (tests, side-by-side runs; as the workers' "
        "prefix).", callback=topic_name)] = "",
) -> None:
    """Load a JSONL events file into the input topics: each line's bytes unchanged, keyed as in SPEC §1.

    tick → liqwatch.ticks (key venue:symbol), reference → liqwatch.references (asset), account →
    liqwatch.accounts (account); missing topics are created. The Kafka timestamp is the event's `ts`, and file
    order is kept per key. Prints the counts per topic on stderr.

    Example: `liqwatch produce oct.jsonl --speed 60` (three hours of October 2025 in three minutes)
    """
    from liqwatch.tools.transport import produce_file

    _positive(rate, "--rate")
    _positive(speed, "--speed")
    if rate is not None and speed is not None:
        _fail("--rate and --speed: choose one")
    servers = connect(state_dir, _kafka_spec(config), bootstrap=bootstrap, security_protocol=security_protocol,
                      sasl_mechanism=sasl_mechanism, sasl_username=sasl_username,
                      sasl_password_env=sasl_password_env, ssl_ca=ssl_ca, ssl_cert=ssl_cert, ssl_key=ssl_key)
    _run(probe_kafka(servers))  # a refused password or certificate: one line now, not a stalled producer
    report = _run(produce_file(file, servers, partitions=partitions, tick_partitions=tick_partitions,
                               prefix=topic_prefix,
                               unknown_to=unknown_to, rate=rate, speed=speed, console=err))
    err.print(report.summary(), highlight=False)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)


def dump(
    topic: Annotated[str, typer.Argument(help=f"Topic to read, e.g. {T.ALERTS}.", show_default=False,
                                         metavar="TOPIC")],
    bootstrap: Bootstrap = None,
    state_dir: StateDir = None,
    security_protocol: SecurityProtocol = None,
    sasl_mechanism: SaslMechanism = None,
    sasl_username: SaslUsername = None,
    sasl_password_env: SaslPasswordEnv = None,
    ssl_ca: SslCa = None,
    ssl_cert: SslCert = None,
    ssl_key: SslKey = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", rich_help_panel=KAFKA, show_default=False, dir_okay=False, callback=in_file,
        help="A liqwatch config whose `kafka:` block to use (nothing else of it is read).")] = None,
    from_beginning: Annotated[bool, typer.Option(
        "--from-beginning/--latest", help="Start at the oldest message, or only read what arrives from now.")] = True,
    until_idle: Annotated[float, typer.Option(
        "--until-idle", help="Stop once past the end (as of start) and nothing arrived for this many seconds.")
    ] = 2.0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Never stop (Ctrl-C ends).")] = False,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write here. [default: stdout]", show_default=False, callback=out_file)] = None,
    max_messages: Annotated[Optional[int], typer.Option(
        "--max", min=1, help="Stop after N messages.", show_default=False)] = None,
) -> None:
    """Write a topic's messages as JSONL, one value per line, without joining a consumer group.

    Every partition is read in offset order and partitions are merged by message timestamp. A value that is not
    UTF-8 JSON is written as {"_raw_base64", "_partition", "_offset"}. Prints the count on stderr.

    Example: `liqwatch dump liqwatch.alerts --out alerts.jsonl`, or `liqwatch dump liqwatch.health --latest -f`
    """
    from liqwatch.tools.transport import dump_topic

    _positive(until_idle, "--until-idle")
    servers = connect(state_dir, _kafka_spec(config), bootstrap=bootstrap, security_protocol=security_protocol,
                      sasl_mechanism=sasl_mechanism, sasl_username=sasl_username,
                      sasl_password_env=sasl_password_env, ssl_ca=ssl_ca, ssl_cert=ssl_cert, ssl_key=ssl_key)
    _run(probe_kafka(servers))
    sink = sys.stdout.buffer if out is None else out
    # A bar on the same terminal as the lines would garble them.
    progress = not (out is None and sys.stdout.isatty())
    t0 = time.monotonic()
    n = _run(dump_topic(topic, servers, sink, from_beginning=from_beginning, until_idle=until_idle,
                        follow=follow, max_messages=max_messages, progress=progress, console=err))
    took = time.monotonic() - t0
    where = f" to {out}" if out is not None else ""
    if n == 0:
        what = "is empty" if from_beginning else f"had no new message in {until_idle:g} s"
        err.print(f"{topic} {what}: dumped 0 messages{where}", highlight=False)
    else:
        waited = f", incl. {until_idle:g} s idle wait" if max_messages is None or n < max_messages else ""
        err.print(f"dumped {n:,} messages from {topic}{where} ({took:.1f} s{waited})", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `produce FILE` and `dump TOPIC` to a typer app (the main `liqwatch` CLI)."""
    app.command("produce", no_args_is_help=True)(produce)
    app.command("dump", no_args_is_help=True)(dump)


if __name__ == "__main__":
    _app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="markdown")
    register(_app)
    _app()
