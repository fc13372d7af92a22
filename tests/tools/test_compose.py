"""docker-compose.yml: valid for Compose, and consistent with the CLI, the repo's files and the local stack's ports.

There is no Docker engine here; `docker compose config` (or Debian's docker-compose v1) validates without one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from liqwatch.tools.stack import StackPorts

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WORKERS = [name for name in SERVICES if name.startswith("worker-")]


def compose_cli() -> list[str] | None:
    """`docker compose` (plugin) if it works, else `docker-compose` (v1), else None."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def help_text(*command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}  # rich must not cut option names
    return subprocess.run([sys.executable, "-m", "liqwatch", *command, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (named volumes left out)."""
    out = {}
    for v in SERVICES[service].get("volumes", []):
        host, container = v.split(":")[:2]
        if host.startswith("./"):
            out[container] = ROOT / host
    return out


def host_ports(service: str) -> dict[int, tuple[str, int]]:
    """Container port -> (host address, host port)."""
    out = {}
    for p in SERVICES[service].get("ports", []):
        address, host, container = p.split(":")
        out[int(container)] = (address, int(host))
    return out


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_compose_config_is_valid():
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is on PATH (Debian package: docker-compose)")
    p = subprocess.run([*cli, "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_services():
    want = {"kafka", "worker-1", "worker-2", "prometheus", "alertmanager", "webhook-receiver", "grafana"}
    assert want <= set(SERVICES)
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:4.0.")
    assert (ROOT / "Dockerfile").exists()


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_command_exists_in_the_cli(worker):
    command = SERVICES[worker]["command"]
    assert command[:2] == ["liqwatch", "worker"]
    usage = help_text("worker")
    assert usage.returncode == 0, usage.stderr
    for arg in command[2:]:
        if arg.startswith("--"):
            assert re.search(rf"{arg}\b", usage.stdout), f"{worker}: `liqwatch worker` has no {arg}"
    assert flag(command, "--bootstrap") == "kafka:9092"
    assert SERVICES[worker]["environment"]["LIQWATCH_WEB_BIND"] == "0.0.0.0"  # else Prometheus can't scrape it


def test_webhook_receiver_command():
    command = SERVICES["webhook-receiver"]["command"]
    assert command[:2] == ["liqwatch", "webhook-receiver"] and flag(command, "--port") == "8099"
    usage = help_text("webhook-receiver")
    if usage.returncode != 0:
        pytest.xfail("`liqwatch webhook-receiver` is not in the CLI yet (being written)")
    assert "--port" in usage.stdout


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_mounted_files_exist(service):
    for container, host in mounts(service).items():
        assert host.exists(), f"{service}: {host} (mounted at {container}) is not in the repo"
    # Paths a command names inside a mount must exist too (e.g. the worker's --config).
    for arg in SERVICES[service].get("command", []):
        for container, host in mounts(service).items():
            if isinstance(arg, str) and arg.startswith(container + "/"):
                assert (host / arg[len(container) + 1:]).exists(), f"{service}: {arg} is not in {host}"


def test_prometheus_and_alertmanager_use_the_compose_configs():
    assert mounts("prometheus")["/etc/prometheus/prometheus.yml"] == ROOT / "liqwatch/data/dashboards/prometheus.compose.yml"
    assert mounts("prometheus")["/etc/prometheus/rules"] == ROOT / "liqwatch/data/dashboards/rules"
    assert mounts("alertmanager")["/etc/alertmanager/alertmanager.yml"] == ROOT / "liqwatch/data/dashboards/alertmanager.compose.yml"
    assert mounts("grafana")["/etc/grafana/provisioning"] == ROOT / "liqwatch/data/dashboards/grafana/provisioning"


def test_host_ports_are_the_local_stacks_on_loopback():
    defaults = StackPorts()
    assert host_ports("kafka")[29092] == ("127.0.0.1", defaults.kafka)
    assert host_ports("prometheus")[9090] == ("127.0.0.1", defaults.prometheus)
    assert host_ports("alertmanager")[9093] == ("127.0.0.1", defaults.alertmanager)
    assert host_ports("webhook-receiver")[8099] == ("127.0.0.1", 8099)
    for service in SERVICES:
        assert all(address == "127.0.0.1" for address, _ in host_ports(service).values()), service
    # The HOST listener tells clients on the host to come back to the published port.
    assert f"HOST://127.0.0.1:{defaults.kafka}" in SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]


def test_compose_configs_point_at_the_services():
    prom = yaml.safe_load((ROOT / "liqwatch/data/dashboards/prometheus.compose.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "liqwatch")
    scraped = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert scraped == {f"{w}:{flag(SERVICES[w]['command'], '--web-port')}" for w in WORKERS}
    assert prom["rule_files"] == ["rules/*.yml"]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    am = yaml.safe_load((ROOT / "liqwatch/data/dashboards/alertmanager.compose.yml").read_text())
    port = flag(SERVICES["webhook-receiver"]["command"], "--port")
    assert am["receivers"][0]["webhook_configs"][0]["url"] == f"http://webhook-receiver:{port}/alertmanager"


# -- profile production: three SASL_SSL brokers, as `liqwatch stack up --brokers 3 --auth scram` ---------------------

PRODUCTION = [name for name, svc in SERVICES.items() if "production" in svc.get("profiles", [])]
BROKERS = ["kafka-1", "kafka-2", "kafka-3"]
BROKER_SCRIPT = ROOT / "liqwatch/data/kafka/compose-broker.sh"


def test_production_profile_config_is_valid():
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is on PATH (Debian package: docker-compose)")
    p = subprocess.run([*cli, "-f", "docker-compose.yml", "--profile", "production", "config"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    resolved = yaml.safe_load(p.stdout)["services"]
    assert set(PRODUCTION) <= set(resolved)


def test_production_profile_services():
    assert set(PRODUCTION) == {"kafka-tls", *BROKERS, "secure-topic-init", "secure-worker-1", "secure-worker-2"}
    # the default setup is unchanged: nothing of the plaintext demo is in a profile
    assert {"kafka", "topic-init", "worker-1", "worker-2"}.isdisjoint(PRODUCTION)
    for n, broker in enumerate(BROKERS, start=1):
        env = {**SERVICES["kafka-1"]["environment"], **SERVICES[broker]["environment"]}
        assert env["NODE_ID"] == n
        port = 19092 + 100 * (n - 1)  # the step the local stack's nodes have
        assert env["HOST_PORT"] == port and host_ports(broker)[29092] == ("127.0.0.1", port)
        assert mounts(broker)["/compose-broker.sh"] == BROKER_SCRIPT
        assert SERVICES[broker]["entrypoint"] == ["/bin/bash", "/compose-broker.sh"]


def broker_properties() -> dict[str, str]:
    """The properties compose-broker.sh writes (its first heredoc), as written for node 1."""
    text = BROKER_SCRIPT.read_text()
    body = text.split('cat > "$props" <<EOF\n', 1)[1].split("\nEOF\n", 1)[0]
    body = body.replace("${NODE_ID}", "1").replace("${HOST_PORT}", "19092").replace("${LISTEN_HOST}", "0.0.0.0")
    return dict(line.split("=", 1) for line in body.splitlines() if line and not line.startswith("#"))


def test_broker_script_is_the_stacks_cluster(tmp_path):
    from liqwatch.tools.stack import StackConfig, _kafka_properties

    assert subprocess.run(["bash", "-n", str(BROKER_SCRIPT)]).returncode == 0
    compose = broker_properties()
    stack = dict(line.split("=", 1) for line in _kafka_properties(
        StackConfig(tmp_path, brokers=3, auth="scram"), 1, "pw").splitlines() if line and not line.startswith("#"))
    same = ["process.roles", "controller.listener.names", "inter.broker.listener.name", "sasl.enabled.mechanisms",
            "sasl.mechanism.inter.broker.protocol", "ssl.keystore.type", "ssl.truststore.type",
            "listener.name.controller.ssl.client.auth", "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor", "transaction.state.log.min.isr",
            "default.replication.factor", "min.insync.replicas", "auto.create.topics.enable"]
    assert {k: compose[k] for k in same} == {k: stack[k] for k in same}
    # no PLAINTEXT anywhere; every listener's protocol is SASL_SSL except the controllers' TLS
    protocols = dict(x.split(":") for x in compose["listener.security.protocol.map"].split(","))
    assert set(protocols.values()) == {"SASL_SSL", "SSL"} and protocols["CONTROLLER"] == "SSL"
    assert compose["controller.quorum.voters"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
    assert compose["advertised.listeners"] == "SASL_SSL://kafka-1:9092,HOST://127.0.0.1:19092"
    # the script binds 127.0.0.1 unless told otherwise; only docker-compose.yml says 0.0.0.0 (inside a container)
    assert 'LISTEN_HOST="${LISTEN_HOST:-127.0.0.1}"' in BROKER_SCRIPT.read_text()
    assert SERVICES["kafka-1"]["environment"]["LISTEN_HOST"] == "0.0.0.0"


def test_production_certificates_name_the_brokers(tmp_path):
    """kafka-tls's own command, run here: the certificate verifies for every name a client or broker dials."""
    from cryptography import x509

    command = SERVICES["kafka-tls"]["command"][2].split(" && ")[0].split()
    assert command[:3] == ["python", "-m", "liqwatch.tools.certs"] and command[3] == "/tls"
    p = subprocess.run([sys.executable, *command[1:3], str(tmp_path), *command[4:]], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    cert = x509.load_pem_x509_certificates((tmp_path / "broker.pem").read_bytes())[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(BROKERS) <= set(san.get_values_for_type(x509.DNSName))
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


@pytest.mark.parametrize("worker", ["secure-worker-1", "secure-worker-2"])
def test_secure_workers_use_the_cli_connection_settings(worker):
    command = SERVICES[worker]["command"]
    env = SERVICES[worker]["environment"]
    usage = help_text("worker")
    assert usage.returncode == 0, usage.stderr
    for arg in command[2:]:
        if arg.startswith("--"):
            assert re.search(rf"{arg}\b", usage.stdout), f"{worker}: `liqwatch worker` has no {arg}"
    # every connection variable is one the CLI reads (the password's is the default of --sasl-password-env)
    for name in (k for k in env if k.startswith("LIQWATCH_KAFKA_")):
        assert name in usage.stdout, f"{worker}: `liqwatch worker --help` does not mention {name}"
    assert env["LIQWATCH_KAFKA_BOOTSTRAP"] == ",".join(f"{b}:9092" for b in BROKERS)
    assert env["LIQWATCH_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["LIQWATCH_KAFKA_CA"] == "/tls/ca.pem"
    assert "kafka-tls:/tls:ro" in SERVICES[worker]["volumes"]
    assert env["LIQWATCH_WEB_BIND"] == "0.0.0.0"


def test_prometheus_finds_the_secure_workers_by_name():
    prom = yaml.safe_load((ROOT / "liqwatch/data/dashboards/prometheus.compose.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "liqwatch")
    (dns,) = job["dns_sd_configs"]
    assert set(dns["names"]) == {"secure-worker-1", "secure-worker-2"} and dns["port"] == 6066
