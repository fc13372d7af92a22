"""Local liqwatch stack: a real Kafka broker, Prometheus and Alertmanager on 127.0.0.1.

`up()` starts, `status()` inspects and `down()` stops three local processes,
all listening on 127.0.0.1 only:

* **Kafka 4.0** (one KRaft node, broker+controller, node.id=1; or three with
  ``brokers=3``: services kafka-1..3, static voters, node i on ports + 100 (i - 1)),
  run from Maven Central jars that `liqwatch/data/kafka/pom.xml` resolves into a cache
  outside git (`~/.cache/liqwatch/kafka-<version>/lib`, root overridable with
  ``LIQWATCH_CACHE``). Storage is formatted on first start. ``auth="scram"``: SASL_SSL
  only (SCRAM users at format time, a CA of the stack in <state>/tls); `connection()`
  is how a client reaches it.
* **Prometheus** and **Alertmanager** from Debian's ``prometheus`` and
  ``prometheus-alertmanager`` packages, started by us (never via their
  service units) on `liqwatch/data/dashboards/` configs.

Everything a stack owns lives in one state dir (default
``~/.cache/liqwatch/state``, env ``LIQWATCH_STATE_DIR``): data, rendered
configs, ``logs/<service>.log``, ``run/<service>.pid`` and ``stack.json``
(the ports, so other code can find the stack with `load()`).

Alertmanager sends every notification to the stack's webhook receiver,
``http://127.0.0.1:<ports.receiver>/alertmanager`` (default 8099; the stack
does not run the receiver: the demo, a test or `liqwatch webhook-receiver`
does), with ``Authorization: Bearer <token>``. The token is in
``<state>/config/receiver.token`` (mode 0600; `receiver_token()` reads it),
chosen at each `up`: ``$LIQWATCH_ALERTMANAGER_TOKEN`` if set, else the token a
receiver derives from ``$LIQWATCH_WEBHOOK_SECRET`` if that is set (so
`liqwatch webhook-receiver` with the same secret accepts it), else the one
already there, else a random one.

Example::

    from liqwatch.tools import stack

    cfg = stack.StackConfig.resolve(kafka_port=19092)   # other ports: defaults
    stack.up(cfg)                                        # idempotent
    print(stack.bootstrap_servers(cfg))                  # "127.0.0.1:19092"
    kafka = stack.connection(cfg)                        # liqwatch.kafka.Connection: TLS and SCRAM user if any
    stack.register_scrape_target(cfg.state_dir, "worker-1", 8001)
    # Alertmanager's notifications reach a receiver (liqwatch.tools.receiver) on this stack's port with its token:
    #   Receiver(secret, alertmanager_token=stack.receiver_token(cfg)).start("127.0.0.1", cfg.ports.receiver)
    stack.down(cfg.state_dir)
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from liqwatch.kafka import Connection
from liqwatch.sinks.webhooks import alertmanager_token
from liqwatch.tools.certs import cert_paths, make_certs

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # package data: an installed liqwatch has it too
DASHBOARDS_DIR = DATA_DIR / "dashboards"
KAFKA_POM = DATA_DIR / "kafka" / "pom.xml"
KAFKA_LOG4J = DATA_DIR / "kafka" / "log4j2.yaml"
# Preferred first; the others are fallbacks if Maven Central can't serve it.
KAFKA_VERSIONS = ("4.0.2", "4.0.1", "4.0.0")
PROMETHEUS_BIN = Path("/usr/bin/prometheus")
ALERTMANAGER_BIN = Path("/usr/bin/prometheus-alertmanager")
HOST = "127.0.0.1"
SERVICES = ("kafka", "prometheus", "alertmanager")
# Ports written in liqwatch/data/dashboards/prometheus.yml and alertmanager.yml, swapped for the real ones.
_TEMPLATE_PORTS = {"prometheus": 9090, "alertmanager": 9093, "receiver": 8099}
ALERTMANAGER_TOKEN_ENV = "LIQWATCH_ALERTMANAGER_TOKEN"  # as liqwatch.tools.receiver reads it
WEBHOOK_SECRET_ENV = "LIQWATCH_WEBHOOK_SECRET"  # `liqwatch webhook-receiver`'s default --secret-env
_READY_TIMEOUT = {"kafka": 90.0, "prometheus": 30.0, "alertmanager": 30.0}
_STOP_TIMEOUT = {"kafka": 30.0, "prometheus": 15.0, "alertmanager": 10.0}
_LOG_TAIL_LINES = 30

T = TypeVar("T")


class StackError(RuntimeError):
    """The stack can't be installed, started or found; the message says why."""


def cache_root() -> Path:
    return Path(os.environ.get("LIQWATCH_CACHE") or Path.home() / ".cache" / "liqwatch")


def default_state_dir() -> Path:
    env = os.environ.get("LIQWATCH_STATE_DIR")
    return Path(env) if env else cache_root() / "state"


@dataclass(frozen=True)
class StackPorts:
    kafka: int = 9092
    controller: int = 9097
    prometheus: int = 9090
    alertmanager: int = 9093
    receiver: int = 8099  # the webhook receiver Alertmanager notifies (not run by the stack)


AUTHS = ("none", "scram")
KAFKA_USER = "liqwatch"          # the clients' SCRAM user of an `--auth scram` stack
KAFKA_ADMIN = "admin"            # the brokers' own (inter-broker) SCRAM user
BROKER_PORT_STEP = 100           # node i listens on ports.kafka + 100 (i - 1), its controller on ports.controller + …


@dataclass(frozen=True)
class StackConfig:
    state_dir: Path
    ports: StackPorts = StackPorts()
    kafka_heap: str = "512m"
    dashboards_dir: Path = DASHBOARDS_DIR
    brokers: int = 1             # 1, or 3: a KRaft cluster of three nodes (each broker and controller)
    auth: str = "none"           # "scram": one SASL_SSL listener per broker (SCRAM users, a CA of the run)

    @classmethod
    def resolve(
        cls,
        state_dir: Path | str | None = None,
        *,
        kafka_port: int | None = None,
        controller_port: int | None = None,
        prometheus_port: int | None = None,
        alertmanager_port: int | None = None,
        receiver_port: int | None = None,
        brokers: int | None = None,
        auth: str | None = None,
    ) -> StackConfig:
        """Config for `state_dir`: given ports (brokers, auth), else those in its stack.json, else defaults."""
        state = Path(state_dir).expanduser() if state_dir else default_state_dir()
        last = _read_stack_json(state) if (state / "stack.json").exists() else None
        base = last.ports if last is not None else StackPorts()
        given = {
            "kafka": kafka_port,
            "controller": controller_port,
            "prometheus": prometheus_port,
            "alertmanager": alertmanager_port,
            "receiver": receiver_port,
        }
        ports = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
        if brokers is not None and brokers not in (1, 3):
            raise StackError(f"--brokers: 1 or 3 (got {brokers})")
        if auth is not None and auth not in AUTHS:
            raise StackError(f"--auth: one of {', '.join(AUTHS)} (got {auth!r})")
        return cls(state_dir=state.resolve(), ports=ports,
                   brokers=brokers if brokers is not None else (last.brokers if last is not None else 1),
                   auth=auth if auth is not None else (last.auth if last is not None else "none"))

    # The Kafka nodes.
    def kafka_services(self) -> list[str]:
        """`kafka` for one broker (as before clusters), `kafka-1` … `kafka-3` for a cluster."""
        return ["kafka"] if self.brokers == 1 else [f"kafka-{i + 1}" for i in range(self.brokers)]

    def services(self) -> list[str]:
        return [*self.kafka_services(), "prometheus", "alertmanager"]

    def broker_port(self, node: int) -> int:
        """Client port of node 1..brokers."""
        return self.ports.kafka + BROKER_PORT_STEP * (node - 1)

    def controller_port(self, node: int) -> int:
        return self.ports.controller + BROKER_PORT_STEP * (node - 1)

    def listener(self) -> str:
        return "SASL_SSL" if self.auth == "scram" else "PLAINTEXT"

    # Paths inside the state dir.
    def log_file(self, service: str) -> Path:
        return self.state_dir / "logs" / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.state_dir / "run" / f"{service}.pid"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    healthy: bool

    @property
    def running(self) -> bool:
        return self.pid is not None


# --------------------------------------------------------------------------- addresses


def load(state_dir: Path | str | None = None) -> StackConfig:
    """The config a stack was last started with (from <state>/stack.json)."""
    state = (Path(state_dir).expanduser() if state_dir else default_state_dir()).resolve()
    if not (state / "stack.json").exists():
        raise StackError(f"no stack in {state} (no stack.json): run `liqwatch stack up` first")
    return _read_stack_json(state)


def _as_config(state: StackConfig | Path | str | None) -> StackConfig:
    return state if isinstance(state, StackConfig) else load(state)


def bootstrap_servers(state: StackConfig | Path | str | None = None) -> str:
    cfg = _as_config(state)
    return ",".join(f"{HOST}:{cfg.broker_port(n)}" for n in range(1, cfg.brokers + 1))


def kafka_password_file(state: StackConfig | Path | str | None = None) -> Path:
    """The SCRAM password of the stack's client user (mode 0600), chosen at the first `up --auth scram`."""
    return _as_config(state).state_dir / "config" / "kafka.password"


def ca_file(state: StackConfig | Path | str | None = None) -> Path:
    return cert_paths(_as_config(state).state_dir / "tls").ca


def connection(state: StackConfig | Path | str | None = None) -> Connection:
    """How a client reaches this stack's Kafka: PLAINTEXT, or SASL_SSL as the user `liqwatch` (SCRAM-SHA-512)
    trusting the stack's CA."""
    cfg = _as_config(state)
    if cfg.auth != "scram":
        return Connection.plain(bootstrap_servers(cfg))
    try:
        password = kafka_password_file(cfg).read_text().strip()
    except FileNotFoundError:
        raise StackError(f"no Kafka password in {kafka_password_file(cfg)}: run `liqwatch stack up` first") from None
    return Connection(bootstrap_servers(cfg), "SASL_SSL", "SCRAM-SHA-512", KAFKA_USER, password,
                      ca_file=ca_file(cfg))


def prometheus_url(state: StackConfig | Path | str | None = None) -> str:
    return f"http://{HOST}:{_as_config(state).ports.prometheus}"


def alertmanager_url(state: StackConfig | Path | str | None = None) -> str:
    return f"http://{HOST}:{_as_config(state).ports.alertmanager}"


def receiver_url(state: StackConfig | Path | str | None = None) -> str:
    """Where this stack's Alertmanager sends notifications (POST <url>/alertmanager)."""
    return f"http://{HOST}:{_as_config(state).ports.receiver}"


def receiver_token_file(state: StackConfig | Path | str | None = None) -> Path:
    return _as_config(state).state_dir / "config" / "receiver.token"


def receiver_token(state: StackConfig | Path | str | None = None) -> str:
    """The bearer token this stack's Alertmanager sends to its receiver (see the module docstring)."""
    path = receiver_token_file(state)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise StackError(f"no receiver token in {path}: run `liqwatch stack up` (again) first") from None


def _read_stack_json(state: Path) -> StackConfig:
    try:
        data = json.loads((state / "stack.json").read_text())
        return StackConfig(
            state_dir=state,
            ports=StackPorts(**data["ports"]),
            kafka_heap=data.get("kafka_heap", "512m"),
            dashboards_dir=Path(data.get("dashboards_dir", DASHBOARDS_DIR)),
            brokers=int(data.get("brokers", 1)),
            auth=str(data.get("auth", "none")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # a damaged file: one line, not a traceback
        raise StackError(f"cannot read {state / 'stack.json'} ({type(e).__name__}: {e}); fix or delete it, or use "
                         "another --state-dir") from None


def _write_stack_json(cfg: StackConfig, kafka_version: str) -> None:
    data = {
        "ports": dataclasses.asdict(cfg.ports),
        "bootstrap_servers": bootstrap_servers(cfg),
        "prometheus_url": prometheus_url(cfg),
        "alertmanager_url": alertmanager_url(cfg),
        "receiver_url": receiver_url(cfg),
        "kafka_version": kafka_version,
        "kafka_heap": cfg.kafka_heap,
        "dashboards_dir": str(cfg.dashboards_dir),
        "brokers": cfg.brokers,
        "auth": cfg.auth,
        "listeners": [f"{cfg.listener()}://{HOST}:{cfg.broker_port(n)}" for n in range(1, cfg.brokers + 1)],
    }
    _atomic_write(cfg.state_dir / "stack.json", json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- scrape targets


def register_scrape_target(state_dir: Path | str, name: str, port: int, labels: dict[str, str] | None = None) -> Path:
    """Make Prometheus scrape 127.0.0.1:<port> (job `liqwatch`, label worker=<name>).

    Prometheus watches <state>/targets/*.json (file_sd), so no reload is needed; its
    scrape manager applies target changes every 5 s, so the first scrape follows within ~6 s.
    """
    path = Path(state_dir) / "targets" / f"{name}.json"
    entry = {"targets": [f"{HOST}:{port}"], "labels": {"worker": name, **(labels or {})}}
    _atomic_write(path, json.dumps([entry], indent=2) + "\n")
    return path


def unregister_scrape_target(state_dir: Path | str, name: str) -> bool:
    """Stop scraping the worker `name`; False if it wasn't registered."""
    path = Path(state_dir) / "targets" / f"{name}.json"
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _atomic_write(path: Path, text: str) -> None:
    # file_sd may read a half-written file; a rename is atomic. The temp name
    # doesn't end in .json so the targets/*.json glob never sees it.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --------------------------------------------------------------------------- install


def ensure_installed() -> Path:
    """Install what the stack needs when missing; returns the Kafka lib dir."""
    ensure_debian_packages()
    return ensure_kafka_jars()


def ensure_debian_packages() -> None:
    if PROMETHEUS_BIN.exists() and ALERTMANAGER_BIN.exists():
        return
    if os.geteuid() != 0:
        raise StackError("prometheus/alertmanager missing: run scripts/setup-system.sh as root")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus", "prometheus-alertmanager"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.info("installing Debian packages prometheus, prometheus-alertmanager (apt-get)")
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        log.info("apt-get install failed; running apt-get update and retrying")
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"apt-get install failed:\n{done.stderr[-2000:]}")


def kafka_lib_dir(version: str) -> Path:
    return cache_root() / f"kafka-{version}" / "lib"


def _lib_stamp(version: str) -> str:
    # Re-resolve when the pom changes, not only when the dir is missing.
    return f"{version} {hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()}\n"


def ensure_kafka_jars() -> Path:
    """Resolve the Kafka jars with Maven (once; a marker file records it)."""
    for version in KAFKA_VERSIONS:
        marker = kafka_lib_dir(version) / ".resolved"
        if marker.exists() and marker.read_text() == _lib_stamp(version):
            return kafka_lib_dir(version)
    if shutil.which("mvn") is None:
        raise StackError("mvn not found: install Maven (and Java 17) to fetch the Kafka jars")
    errors = []
    for version in KAFKA_VERSIONS:
        lib = kafka_lib_dir(version)
        tmp = lib.with_name("lib.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("resolving Kafka %s jars with Maven into %s", version, lib)
        t0 = time.monotonic()
        cmd = [
            "mvn",
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(KAFKA_POM),
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0 and any(tmp.glob(f"kafka_2.13-{version}.jar")):
            shutil.rmtree(lib, ignore_errors=True)
            tmp.rename(lib)
            (lib / ".resolved").write_text(_lib_stamp(version))
            log.info("Kafka %s jars ready (%.1f s)", version, time.monotonic() - t0)
            return lib
        shutil.rmtree(tmp.parent if not lib.exists() else tmp, ignore_errors=True)
        errors.append(f"{version}: {(done.stdout + done.stderr)[-1500:]}")
        log.warning("could not resolve Kafka %s; trying the next version", version)
    raise StackError("mvn could not resolve any Kafka version:\n" + "\n".join(errors))


def _installed_kafka_version(lib: Path) -> str:
    return (lib / ".resolved").read_text().split()[0]


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class _Service:
    name: str
    argv: list[str]
    marker: str  # an argv entry unique to this state dir: how we recognise our process
    ports: tuple[int, ...]
    ready: Callable[[], bool]
    address: str
    extra_logs: tuple[Path, ...] = ()


def _kind(name: str) -> str:
    """kafka-2 → kafka: what a service is, for its timeouts."""
    return "kafka" if name.startswith("kafka") else name


def _node(cfg: StackConfig, name: str) -> int:
    """kafka → 1, kafka-2 → 2."""
    return int(name.rpartition("-")[2]) if name != "kafka" else 1


def _kafka_props_file(cfg: StackConfig, node: int) -> Path:
    return cfg.state_dir / "kafka" / ("server.properties" if cfg.brokers == 1 else f"server-{node}.properties")


def _kafka_data_dir(cfg: StackConfig, node: int) -> Path:
    return cfg.state_dir / "kafka" / ("data" if cfg.brokers == 1 else f"data-{node}")


def _services(cfg: StackConfig, kafka_lib: Path | None = None) -> dict[str, _Service]:
    p, s = cfg.ports, cfg.state_dir
    prom_data, am_data = s / "prometheus", s / "alertmanager"
    prometheus = [
        str(PROMETHEUS_BIN),
        f"--config.file={s / 'config' / 'prometheus.yml'}",
        f"--storage.tsdb.path={prom_data}",
        "--storage.tsdb.retention.time=7d",
        f"--web.listen-address={HOST}:{p.prometheus}",
        "--web.enable-lifecycle",
    ]
    alertmanager = [
        str(ALERTMANAGER_BIN),
        f"--config.file={s / 'config' / 'alertmanager.yml'}",
        f"--storage.path={am_data}",
        f"--web.listen-address={HOST}:{p.alertmanager}",
        # Empty turns clustering off; otherwise it binds every interface on :9094.
        "--cluster.listen-address=",
    ]
    kafka = {}
    for name in cfg.kafka_services():
        node = _node(cfg, name)
        props = _kafka_props_file(cfg, node)
        java = [
            "java", f"-Xms{cfg.kafka_heap}", f"-Xmx{cfg.kafka_heap}", "-XX:+UseG1GC",
            # Plain IPv4 sockets: listeners show up as 127.0.0.1, not ::ffff:127.0.0.1.
            "-Djava.net.preferIPv4Stack=true", "-Djava.awt.headless=true",
            # Let Kafka's own shutdown hook log to the end instead of log4j2 closing first.
            "-Dlog4j2.shutdownHookEnabled=false",
            f"-Dkafka.logs.dir={s / 'logs'}", f"-Dkafka.log.name={name}", f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
            "-cp", f"{kafka_lib or ''}/*", "kafka.Kafka", str(props),
        ]  # fmt: skip
        port, controller = cfg.broker_port(node), cfg.controller_port(node)
        kafka[name] = _Service(
            name, java, str(props), (port, controller),
            lambda node=node: _kafka_ready(cfg, node),
            f"{cfg.listener()}://{HOST}:{port} (node {node}, controller {HOST}:{controller})",
            (s / "logs" / f"{name}.stdout.log",),
        )
    return {
        **kafka,
        "prometheus": _Service(
            "prometheus", prometheus, f"--storage.tsdb.path={prom_data}", (p.prometheus,),
            lambda: _http_ready(f"{prometheus_url(cfg)}/-/ready"), prometheus_url(cfg),
        ),
        "alertmanager": _Service(
            "alertmanager", alertmanager, f"--storage.path={am_data}", (p.alertmanager,),
            lambda: _http_ready(f"{alertmanager_url(cfg)}/-/ready"), alertmanager_url(cfg),
        ),
    }  # fmt: skip


def _kafka_properties(cfg: StackConfig, node: int, admin_password: str | None = None) -> str:
    port, controller = cfg.broker_port(node), cfg.controller_port(node)
    voters = ",".join(f"{n}@{HOST}:{cfg.controller_port(n)}" for n in range(1, cfg.brokers + 1))
    replicas, insync = cfg.brokers, (2 if cfg.brokers >= 3 else 1)
    if cfg.auth == "scram":
        tls = cert_paths(cfg.state_dir / "tls")
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{KAFKA_ADMIN}" '
                f'password="{admin_password}";')
        security = f"""\
listeners=SASL_SSL://{HOST}:{port},CONTROLLER://{HOST}:{controller}
advertised.listeners=SASL_SSL://{HOST}:{port}
# No PLAINTEXT anywhere: clients and brokers speak SASL_SSL (SCRAM users made at format time), the controllers
# TLS with a certificate on both sides (SCRAM lives in the metadata the controllers serve, so they cannot use it).
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={jaas}
ssl.keystore.type=PEM
ssl.keystore.location={tls.broker}
ssl.truststore.type=PEM
ssl.truststore.location={tls.ca}
listener.name.controller.ssl.client.auth=required
"""
    else:
        security = f"""\
listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}
advertised.listeners=PLAINTEXT://{HOST}:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
"""
    return f"""\
# Generated by liqwatch/tools/stack.py on every `up`; edit there, not here.
process.roles=broker,controller
node.id={node}
controller.quorum.voters={voters}
controller.listener.names=CONTROLLER
{security}log.dirs={_kafka_data_dir(cfg, node)}
# Internal topics on every node (three at most), writes acknowledged by two of three (one when single).
offsets.topic.replication.factor={replicas}
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={insync}
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={insync}
# Topics made without explicit settings (Faust's changelog and leader topics) as liqwatch's own.
default.replication.factor={replicas}
min.insync.replicas={insync}
group.initial.rebalance.delay.ms=0
# A restarted node can't re-register until its previous broker session expires
# (DUPLICATE_BROKER_REGISTRATION), so the default 9 s session makes every restart
# wait ~10 s. Locally the controller is in the same JVM: a short session is safe.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
num.partitions=8
# Topics are created by the app, with explicit partition counts.
auto.create.topics.enable=false
log.retention.hours=168
"""


def _render_prometheus_config(cfg: StackConfig) -> None:
    """liqwatch/data/dashboards/prometheus.yml -> <state>/config/prometheus.yml (ports, absolute paths)."""
    conf: dict[str, Any] = yaml.safe_load((cfg.dashboards_dir / "prometheus.yml").read_text())
    swap = {
        f"{HOST}:{_TEMPLATE_PORTS['prometheus']}": f"{HOST}:{cfg.ports.prometheus}",
        f"{HOST}:{_TEMPLATE_PORTS['alertmanager']}": f"{HOST}:{cfg.ports.alertmanager}",
    }

    def fix_targets(static_configs: list[dict[str, Any]]) -> None:
        for sc in static_configs:
            sc["targets"] = [swap.get(t, t) for t in sc.get("targets", [])]

    conf["rule_files"] = [str(cfg.dashboards_dir / f) for f in conf.get("rule_files", [])]
    for am in conf.get("alerting", {}).get("alertmanagers", []):
        fix_targets(am.get("static_configs", []))
    for job in conf.get("scrape_configs", []):
        fix_targets(job.get("static_configs", []))
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(cfg.state_dir / f) for f in sd["files"]]
    header = "# Generated by liqwatch/tools/stack.py from liqwatch/data/dashboards/prometheus.yml; edit that.\n"
    _atomic_write(cfg.state_dir / "config" / "prometheus.yml", header + yaml.safe_dump(conf, sort_keys=False))


def _write_receiver_token(cfg: StackConfig) -> Path:
    """<state>/config/receiver.token, mode 0600: the env's token, the one derived from the env's secret, the one
    already there, or a new random one (kept across `up`s so a receiver configured from the file keeps working)."""
    path = receiver_token_file(cfg)
    token = os.environ.get(ALERTMANAGER_TOKEN_ENV)
    if not token and os.environ.get(WEBHOOK_SECRET_ENV):
        token = alertmanager_token(os.environ[WEBHOOK_SECRET_ENV].encode())
    if not token and path.exists():
        token = path.read_text().strip()
    _write_secret(path, token or secrets.token_hex(32))
    return path


def _render_alertmanager_config(cfg: StackConfig) -> None:
    """liqwatch/data/dashboards/alertmanager.yml -> <state>/config/alertmanager.yml: webhooks to the template's receiver
    (127.0.0.1:8099) go to this stack's receiver port, with this stack's token file as their bearer credential."""
    conf: dict[str, Any] = yaml.safe_load((cfg.dashboards_dir / "alertmanager.yml").read_text())
    template = f"//{HOST}:{_TEMPLATE_PORTS['receiver']}/"
    for receiver in conf.get("receivers") or []:
        for hook in receiver.get("webhook_configs") or []:
            if template in hook.get("url", ""):
                hook["url"] = hook["url"].replace(template, f"//{HOST}:{cfg.ports.receiver}/", 1)
                hook.setdefault("http_config", {})["authorization"] = {
                    "type": "Bearer", "credentials_file": str(receiver_token_file(cfg))}
    header = "# Generated by liqwatch/tools/stack.py from liqwatch/data/dashboards/alertmanager.yml; edit that.\n"
    _atomic_write(cfg.state_dir / "config" / "alertmanager.yml", header + yaml.safe_dump(conf, sort_keys=False))


def _cluster_id(cfg: StackConfig) -> str:
    """One id for every node of the cluster, kept in the state dir (a node formatted later joins the same one)."""
    path = cfg.state_dir / "kafka" / "cluster.id"
    if path.exists():
        return path.read_text().strip()
    # Kafka's own Uuid.randomUuid() rerolls ids starting with '-' (CLI parsing).
    cluster_id = "-"
    while cluster_id.startswith("-"):
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    _atomic_write(path, cluster_id + "\n")
    return cluster_id


def _format_kafka_storage(cfg: StackConfig, lib: Path, node: int, passwords: dict[str, str]) -> None:
    data = _kafka_data_dir(cfg, node)
    if (data / "meta.properties").exists():
        return
    cluster_id = _cluster_id(cfg)
    log.info("formatting Kafka storage in %s (cluster id %s)", data, cluster_id)
    # Static controller.quorum.voters => plain format (no --standalone, which is for dynamic quorums). SCRAM users
    # are records of the first metadata: given to every node's format (KIP-900). The tool takes them only on its
    # command line, for the second it runs: the stack's own random passwords, never a user's.
    scram: list[str] = []
    if cfg.auth == "scram":
        for user, password in passwords.items():
            for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
                scram += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
    cmd = ["java", f"-Dkafka.logs.dir={cfg.state_dir / 'logs'}", f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
           "-Dkafka.log.name=kafka-format", "-cp", f"{lib}/*", "kafka.tools.StorageTool", "format",
           "-t", cluster_id, "-c", str(_kafka_props_file(cfg, node)), *scram]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        out = done.stdout + done.stderr
        for password in passwords.values():
            out = out.replace(password, "<password>")
        raise StackError(f"Kafka storage format failed:\n{out}")


# --------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":  # our own exited child, not yet reaped
        _reap(pid)
        return False
    return True


def _reap(pid: int) -> None:
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        proc.poll()
        return
    with contextlib.suppress(ChildProcessError):  # not our child: its parent reaps it
        os.waitpid(pid, os.WNOHANG)


def _our_pid(cfg: StackConfig, svc: _Service) -> int | None:
    """Pid from the pid file if that process is alive and is the one we started."""
    try:
        pid = int(cfg.pid_file(svc.name).read_text().strip())
    except (OSError, ValueError):
        return None
    argv = _cmdline(pid)
    if _alive(pid) and argv and Path(argv[0]).name == Path(svc.argv[0]).name and svc.marker in argv:
        return pid
    return None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # Same option the services set, so a TIME_WAIT leftover doesn't count as busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _http_ready(url: str, method: str = "GET") -> bool:
    # No proxies: an http_proxy in the environment must not see 127.0.0.1 traffic.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, method=method), timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    # Works whether or not the caller already runs an event loop.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _kafka_ready(cfg: StackConfig, node: int) -> bool:
    """The broker answers a metadata request and lists itself (i.e. it is unfenced)."""
    port = cfg.broker_port(node)
    if not _tcp_open(port):
        return False

    async def probe() -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**connection(cfg).with_bootstrap(f"{HOST}:{port}").aiokafka(),
                                    request_timeout_ms=5000)
        try:
            await admin.start()
            return any(b["node_id"] == node for b in (await admin.describe_cluster())["brokers"])
        except Exception:  # any failure just means "not ready yet"
            return False
        finally:
            await admin.close()

    return _run_async(probe)


def _log_tail(paths: Iterable[Path], lines: int = _LOG_TAIL_LINES) -> str:
    out = []
    for path in paths:
        if path.exists() and path.stat().st_size:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- last {len(tail)} lines of {path} ---\n" + "\n".join(tail))
    return "\n".join(out) or "(log is empty)"


# Popen objects of the services this process started: kept so Python neither
# warns about a child still running nor leaves it a zombie (see _alive).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _spawn(cfg: StackConfig, svc: _Service) -> int:
    with open(svc.extra_logs[0] if svc.extra_logs else cfg.log_file(svc.name), "ab") as out:
        proc = subprocess.Popen(
            svc.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cfg.state_dir / "kafka" if _kind(svc.name) == "kafka" else cfg.state_dir,
            start_new_session=True,  # survives the CLI, and Ctrl-C in its terminal
        )
    _CHILDREN[proc.pid] = proc
    _atomic_write(cfg.pid_file(svc.name), f"{proc.pid}\n")
    log.info("started %s (pid %d), logging to %s", svc.name, proc.pid, cfg.log_file(svc.name))
    return proc.pid


def _wait_ready(cfg: StackConfig, svc: _Service, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not svc.ready():
        if not _alive(pid) or time.monotonic() > deadline:
            why = "exited" if not _alive(pid) else f"not ready after {timeout:.0f} s"
            logs = (cfg.log_file(svc.name), *svc.extra_logs)
            raise StackError(f"{svc.name} failed to start ({why}).\n{_log_tail(logs)}")
        time.sleep(0.25)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _stop(pid: int, timeout: float, term_sent: bool = False) -> None:
    """SIGTERM (unless already sent), then SIGKILL if it is still there after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        if not term_sent:
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            log.warning("pid %d ignored SIGTERM for %.0f s; sending SIGKILL", pid, timeout)
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5)


# --------------------------------------------------------------------------- up / down / status


def _check_ports(cfg: StackConfig, svcs: dict[str, _Service], running: dict[str, int | None]) -> None:
    if any(running.values()) and (cfg.state_dir / "stack.json").exists():
        old = _read_stack_json(cfg.state_dir).ports
        if old != cfg.ports:
            raise StackError(
                f"a stack is already running from {cfg.state_dir} on other ports ({old}); "
                "run `liqwatch stack down` first, or use another --state-dir"
            )
    for name, pid in running.items():
        busy = [port for port in svcs[name].ports if pid is None and not _port_free(port)]
        if busy:
            raise StackError(
                f"{HOST}:{busy[0]} (for {name}) is already in use by another process: another "
                "stack (other --state-dir), or a Debian prometheus/alertmanager service "
                "(`service prometheus stop`)? Stop it, or pick other ports (`liqwatch stack up --help`)."
            )


def _reload(cfg: StackConfig, name: str) -> None:
    """Make a running Prometheus/Alertmanager re-read its config (e.g. edited rules)."""
    url = prometheus_url(cfg) if name == "prometheus" else alertmanager_url(cfg)
    if not _http_ready(f"{url}/-/reload", method="POST"):
        log.warning("%s did not accept a config reload; see %s", name, cfg.log_file(name))


def _services_of(cfg: StackConfig, services: Sequence[str] | None) -> list[str]:
    """The services asked for, `kafka` meaning every broker of the cluster."""
    if services is None:
        return cfg.services()
    out = []
    for name in services:
        out += cfg.kafka_services() if name == "kafka" else [name]
    unknown = set(out) - set(cfg.services())
    if unknown:
        raise StackError(f"no service {', '.join(sorted(unknown))} in this stack ({', '.join(cfg.services())})")
    return list(dict.fromkeys(out))


def _check_shape(cfg: StackConfig) -> None:
    """A state dir's Kafka data was formatted for one shape (brokers, auth): another one would not start."""
    if not (cfg.state_dir / "stack.json").exists():
        return
    last = _read_stack_json(cfg.state_dir)
    formatted = any((cfg.state_dir / "kafka").glob("data*/meta.properties"))
    if formatted and (last.brokers, last.auth) != (cfg.brokers, cfg.auth):
        raise StackError(f"{cfg.state_dir} holds a Kafka of {last.brokers} broker(s), auth {last.auth}: "
                         f"not {cfg.brokers}, {cfg.auth}. `liqwatch stack down` and use another --state-dir "
                         "(or delete this one)")


def _kafka_passwords(cfg: StackConfig) -> dict[str, str]:
    """SCRAM users and passwords of an `--auth scram` stack: made at its first `up`, kept (mode 0600)."""
    if cfg.auth != "scram":
        return {}
    users = cfg.state_dir / "config" / "kafka-users.json"
    if not users.exists():
        made = {KAFKA_USER: secrets.token_urlsafe(24), KAFKA_ADMIN: secrets.token_urlsafe(24)}
        _write_secret(users, json.dumps(made))
        _write_secret(kafka_password_file(cfg), made[KAFKA_USER])
    return dict(json.loads(users.read_text()))


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)
    tmp.replace(path)


def up(cfg: StackConfig, services: Sequence[str] | None = None) -> list[ServiceStatus]:
    """Start the stack (idempotent: services already running from this state dir are kept); `services` picks
    some (`kafka`: every broker; `kafka-2`: one)."""
    services = _services_of(cfg, services)
    kafka = [n for n in services if n.startswith("kafka")]
    ensure_debian_packages()
    lib = ensure_kafka_jars() if kafka else None
    for sub in ("logs", "run", "config", "targets", "kafka", "prometheus", "alertmanager"):
        (cfg.state_dir / sub).mkdir(parents=True, exist_ok=True)
    _check_shape(cfg)
    svcs = _services(cfg, lib)
    running = {name: _our_pid(cfg, svcs[name]) for name in services}
    # Every port is checked before anything starts, so a clash starts nothing.
    _check_ports(cfg, svcs, running)
    _write_stack_json(cfg, _installed_kafka_version(lib) if lib else "")
    if "prometheus" in services:
        _render_prometheus_config(cfg)
    if "alertmanager" in services:
        _write_receiver_token(cfg)
        _render_alertmanager_config(cfg)
    passwords = _kafka_passwords(cfg)
    if kafka and cfg.auth == "scram":
        make_certs(cfg.state_dir / "tls", HOST)
    for name in kafka:
        node = _node(cfg, name)
        _write_secret(_kafka_props_file(cfg, node), _kafka_properties(cfg, node, passwords.get(KAFKA_ADMIN)))
    # Start the quick ones first so they boot while Kafka's storage is formatted.
    order = sorted(services, key=lambda n: n.startswith("kafka"))
    started: dict[str, int] = {}
    try:
        for name in order:
            pid = running[name]
            if pid is None:
                if name.startswith("kafka") and lib is not None:
                    _format_kafka_storage(cfg, lib, _node(cfg, name), passwords)
                started[name] = _spawn(cfg, svcs[name])
                continue
            log.info("%s already running (pid %d)", name, pid)
            if not name.startswith("kafka"):
                _reload(cfg, name)
        for name in order:
            t0 = time.monotonic()
            pid = started.get(name) or running[name]
            assert pid is not None
            _wait_ready(cfg, svcs[name], pid, _READY_TIMEOUT[_kind(name)])
            log.info("%s ready at %s (waited %.1f s)", name, svcs[name].address, time.monotonic() - t0)
    except BaseException:
        # A failed (or interrupted) up leaves things as they were: stop what it started.
        for name, pid in started.items():
            if _alive(pid):
                log.info("stopping %s (pid %d), started by this failed `up`", name, pid)
                _stop(pid, _STOP_TIMEOUT[_kind(name)])
            cfg.pid_file(name).unlink(missing_ok=True)
        raise
    return status(cfg, services)


def status(cfg: StackConfig | Path | str | None = None,
           services: Sequence[str] | None = None) -> list[ServiceStatus]:
    """One row per service: where it listens, its pid if running, and whether it answers."""
    cfg = _as_config(cfg)
    svcs = _services(cfg)
    out = []
    for name in _services_of(cfg, services):
        pid = _our_pid(cfg, svcs[name])
        out.append(ServiceStatus(name, svcs[name].address, pid, pid is not None and svcs[name].ready()))
    return out


@dataclass(frozen=True)
class ClusterStatus:
    listeners: list[str]                 # one per broker, as clients reach it
    brokers: list[int]                   # node ids registered and unfenced, as the cluster answers
    controller: int | None               # the KRaft quorum's leader (the active controller), from the nodes' state
    controller_epoch: int | None


def cluster(cfg: StackConfig | Path | str | None = None) -> ClusterStatus:
    """Brokers, active controller and listeners of the stack's Kafka."""
    cfg = _as_config(cfg)
    leader = epoch = None
    for node in range(1, cfg.brokers + 1):  # every voter writes the leader it follows; the newest epoch wins
        try:
            state = json.loads((_kafka_data_dir(cfg, node) / "__cluster_metadata-0" / "quorum-state").read_text())
        except (OSError, ValueError):
            continue
        if state.get("leaderId", -1) >= 0 and (epoch is None or state.get("leaderEpoch", -1) > epoch):
            leader, epoch = state["leaderId"], state.get("leaderEpoch")

    async def brokers() -> list[int]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**connection(cfg).aiokafka(), request_timeout_ms=5000)
        try:
            await admin.start()
            return sorted(b["node_id"] for b in (await admin.describe_cluster())["brokers"])
        except Exception:  # noqa: BLE001 - no broker answers: none registered, as far as a client can tell
            return []
        finally:
            await admin.close()

    listeners = [f"{cfg.listener()}://{HOST}:{cfg.broker_port(n)}" for n in range(1, cfg.brokers + 1)]
    return ClusterStatus(listeners, _run_async(brokers), leader, epoch)


def down(cfg: StackConfig | Path | str | None = None, services: Sequence[str] | None = None) -> list[str]:
    """Stop the services `up` started from this state dir (and nothing else); returns their names."""
    cfg = _as_config(cfg)
    svcs = _services(cfg)
    targets: dict[str, int] = {}
    for name in _services_of(cfg, services):
        pid = _our_pid(cfg, svcs[name])
        if pid is not None:
            log.info("stopping %s (pid %d)", name, pid)
            os.kill(pid, signal.SIGTERM)  # all at once: they shut down in parallel
            targets[name] = pid
        elif cfg.pid_file(name).exists():
            log.info("%s: stale pid file (process gone or not ours); removing it", name)
            cfg.pid_file(name).unlink()
    for name, pid in targets.items():
        _stop(pid, _STOP_TIMEOUT[_kind(name)], term_sent=True)
        cfg.pid_file(name).unlink(missing_ok=True)
        log.info("%s stopped", name)
    return list(targets)
