"""`liqwatch stack up | down | status`: the local Kafka + Prometheus + Alertmanager stack.

The main CLI mounts `app`; standalone: `python -m liqwatch.cli.stack up`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from liqwatch.tools import stack

app = typer.Typer(
    name="stack",
    rich_markup_mode="markdown",
    no_args_is_help=True,
    help="""
Run the local liqwatch stack on 127.0.0.1: a real **Kafka 4.0** (one KRaft node, or three with `--brokers 3`;
SASL_SSL with SCRAM users with `--auth scram`), **Prometheus** and **Alertmanager**.

Everything lives in one state dir (default `~/.cache/liqwatch/state`, env `LIQWATCH_STATE_DIR`):
data, `logs/<service>.log`, `run/<service>.pid` and `stack.json` with the ports.
The first `up` fetches the Kafka jars with Maven (cache: `~/.cache/liqwatch`, env `LIQWATCH_CACHE`)
and apt-installs prometheus + prometheus-alertmanager if missing.

**Examples**

* `liqwatch stack up` : start everything on the default ports (Kafka 9092, Prometheus 9090, Alertmanager 9093)
* `liqwatch stack status` : table of services, addresses, pids and health
* `liqwatch stack down` : stop what `up` started
* `liqwatch stack up --state-dir /tmp/lw --kafka-port 19092 --controller-port 19097
  --prometheus-port 19090 --alertmanager-port 19093` : a second, independent stack
""",
)

log = logging.getLogger(__name__)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error is one line, whatever the terminal width

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="LIQWATCH_STATE_DIR",
        file_okay=False,
        help="Directory holding the stack's data, logs, pid files and stack.json. [default: ~/.cache/liqwatch/state]",
        show_default=False,
    ),
]


def _port_option(flag: str, env: str, default: int, what: str) -> Any:
    return typer.Option(
        flag,
        envvar=env,
        min=1,
        max=65535,
        show_default=False,
        help=f"{what} port on 127.0.0.1. [default: the port in stack.json, else {default}]",
    )


@app.callback()
def _main() -> None:
    # No-op if the main CLI already configured logging.
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
    )
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # readiness polls expect refusals


def _table(rows: list[stack.ServiceStatus], title: str) -> Table:
    table = Table(title=title)
    for col in ("service", "address", "pid", "healthy"):
        table.add_column(col)
    for r in rows:
        healthy = "[green]yes[/]" if r.healthy else ("[red]no[/]" if r.running else "[dim]not running[/]")
        table.add_row(r.name, r.address, str(r.pid or "-"), healthy)
    return table


def _port_clash(cfg: stack.StackConfig) -> str | None:
    """Two services of one stack on one port (given, or from stack.json and defaults): name both."""
    seen: dict[int, str] = {}
    ports = [(f"--{name}-port", port) for name, port in vars(cfg.ports).items()]
    for node in range(2, cfg.brokers + 1):
        ports += [(f"--kafka-port (node {node})", cfg.broker_port(node)),
                  (f"--controller-port (node {node})", cfg.controller_port(node))]
    for name, port in ports:
        if port in seen:
            return f"{seen[port]} and {name}: both are {port} (each service of a stack needs its own port)"
        seen[port] = name
    return None


def _fail(exc: stack.StackError) -> typer.Exit:
    # Escaped: log lines like "[data-plane ...]" would otherwise parse as markup.
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    return typer.Exit(1)


@app.command()
def up(
    state_dir: StateDir = None,
    kafka_port: Annotated[int | None, _port_option("--kafka-port", "LIQWATCH_KAFKA_PORT", 9092, "Kafka client")] = None,
    controller_port: Annotated[
        int | None, _port_option("--controller-port", "LIQWATCH_CONTROLLER_PORT", 9097, "Kafka KRaft controller")
    ] = None,
    prometheus_port: Annotated[
        int | None, _port_option("--prometheus-port", "LIQWATCH_PROMETHEUS_PORT", 9090, "Prometheus")
    ] = None,
    alertmanager_port: Annotated[
        int | None, _port_option("--alertmanager-port", "LIQWATCH_ALERTMANAGER_PORT", 9093, "Alertmanager")
    ] = None,
    receiver_port: Annotated[
        int | None,
        _port_option("--receiver-port", "LIQWATCH_RECEIVER_PORT", 8099, "Webhook receiver (Alertmanager notifies it)"),
    ] = None,
    brokers: Annotated[int | None, typer.Option(
        "--brokers", envvar="LIQWATCH_STACK_BROKERS", show_default=False,
        help="Kafka nodes: 1, or 3 (a KRaft cluster, static voters; node i listens on --kafka-port + 100(i-1), its "
             "controller on --controller-port + 100(i-1); topics get 3 replicas, min.insync.replicas 2). "
             "[default: as in stack.json, else 1]")] = None,
    auth: Annotated[str | None, typer.Option(
        "--auth", envvar="LIQWATCH_STACK_AUTH", show_default=False,
        help="`none`: PLAINTEXT. `scram`: one SASL_SSL listener per broker, SCRAM-SHA-512/256 users made at format "
             "time (clients: `liqwatch`, password in <state>/config/kafka.password), a CA and broker certificate "
             "made for the stack (<state>/tls/ca.pem), no PLAINTEXT listener. The liqwatch commands pointed at this "
             "state dir use them. [default: as in stack.json, else none]")] = None,
) -> None:
    """
    Start Kafka, Prometheus and Alertmanager (idempotent: running services are left alone).

    Waits until each one answers (Kafka's first start can take up to a minute), then prints
    where they listen. On failure prints the end of that service's log and exits 1.

    **Examples**

    * `liqwatch stack up`
    * `liqwatch stack up --kafka-port 19092 --controller-port 19097 --state-dir /tmp/lw`
    * `liqwatch stack up --brokers 3 --auth scram --state-dir /tmp/prod-like` : three brokers, SASL_SSL only
    """
    state = Path(state_dir).expanduser() if state_dir else stack.default_state_dir()
    if (state / "stack.json").exists():
        try:  # the ports of the last `up` come from its stack.json: a damaged one is one line, not a traceback
            stack.load(state)
        except stack.StackError as exc:
            raise _fail(exc) from None
    try:
        cfg = stack.StackConfig.resolve(
            state_dir,
            kafka_port=kafka_port,
            controller_port=controller_port,
            prometheus_port=prometheus_port,
            alertmanager_port=alertmanager_port,
            receiver_port=receiver_port,
            brokers=brokers,
            auth=auth,
        )
    except stack.StackError as exc:
        raise typer.BadParameter(str(exc)) from None
    clash = _port_clash(cfg)
    if clash:
        raise typer.BadParameter(clash)
    try:
        rows = stack.up(cfg)
    except stack.StackError as exc:
        raise _fail(exc) from None
    console.print(_table(rows, f"liqwatch stack ({cfg.state_dir})"))
    console.print(
        f"Alertmanager notifies {stack.receiver_url(cfg)}/alertmanager with the bearer token in "
        f"{stack.receiver_token_file(cfg)} (`liqwatch webhook-receiver --port {cfg.ports.receiver}` with "
        f"{stack.ALERTMANAGER_TOKEN_ENV}=$(cat {stack.receiver_token_file(cfg)}))",
        highlight=False, markup=False,
    )


@app.command()
def status(state_dir: StateDir = None) -> None:
    """
    Show each service's address, pid and health. Exits 1 unless all are healthy.

    **Example:** `liqwatch stack status && echo ready`
    """
    try:
        cfg = stack.load(state_dir)
    except stack.StackError as exc:
        raise _fail(exc) from None
    rows = stack.status(cfg)
    console.print(_table(rows, f"liqwatch stack ({cfg.state_dir})"))
    kafka = stack.cluster(cfg)
    controller = (f"node {kafka.controller} (epoch {kafka.controller_epoch})" if kafka.controller is not None
                  else "none known")
    console.print(f"Kafka: {cfg.brokers} node(s), brokers up {kafka.brokers or 'none'}, active controller "
                  f"{controller}; listeners {', '.join(kafka.listeners)}"
                  + (f"; SCRAM user {stack.KAFKA_USER}, CA {stack.ca_file(cfg)}" if cfg.auth == "scram" else ""),
                  highlight=False, markup=False)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


@app.command()
def down(state_dir: StateDir = None) -> None:
    """
    Stop what `up` started from this state dir (SIGTERM, then SIGKILL after a timeout).

    Only processes whose pid file and command line match this state dir are touched;
    data and logs are kept (delete the state dir to start from scratch).

    **Example:** `liqwatch stack down --state-dir /tmp/lw`
    """
    try:
        cfg = stack.load(state_dir)
    except stack.StackError as exc:
        if ((state_dir or stack.default_state_dir()) / "stack.json").exists():  # there, but damaged
            raise _fail(exc) from None
        log.info("no stack in %s: nothing to stop", state_dir or stack.default_state_dir())
        return
    stopped = stack.down(cfg)
    log.info("stopped: %s", ", ".join(stopped) or "nothing was running")


if __name__ == "__main__":
    app()
