"""Integration fixtures: a real local stack (Kafka, Prometheus, Alertmanager) on free 127.0.0.1 ports."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from liqwatch.tools import stack as lwstack


def free_ports(n: int) -> list[int]:
    """n distinct ports that are free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int) -> bool:
    """Can a server bind 127.0.0.1:port now? (SO_REUSEADDR as servers bind: TIME_WAIT is not "in use".)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def stack_config(state_dir: Path) -> lwstack.StackConfig:
    """Config for a stack in `state_dir` on free ports (never the defaults a dev stack uses)."""
    kafka, controller, prometheus, alertmanager, receiver = free_ports(5)
    return lwstack.StackConfig.resolve(
        state_dir,
        kafka_port=kafka,
        controller_port=controller,
        prometheus_port=prometheus,
        alertmanager_port=alertmanager,
        receiver_port=receiver,
    )


@pytest.fixture
def make_stack_config() -> Callable[[Path], lwstack.StackConfig]:
    """For tests that run their own short-lived stack."""
    return stack_config


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lwstack.StackConfig]:
    """A running stack in a temporary state dir, shared by the session; stopped at the end.

    Addresses: lwstack.bootstrap_servers(stack), lwstack.prometheus_url(stack), ...
    """
    cfg = stack_config(tmp_path_factory.mktemp("stack"))
    try:
        lwstack.up(cfg)
        yield cfg
    finally:
        lwstack.down(cfg)
