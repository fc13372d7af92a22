"""The wheel, as a user installs it: built from the sources the Dockerfile copies, installed into a fresh venv,
and run from a directory that has nothing of the repo: `liqwatch stack up`, a scenario produced to its Kafka,
`liqwatch replay` of those topics, `liqwatch stack down`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.integration.conftest import free_ports, port_free

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of what the Dockerfile copies (pyproject.toml, README.md, liqwatch/), not from the tree."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "liqwatch", src / "liqwatch", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(dist), str(src)], src,
        dict(os.environ))
    (whl,) = dist.glob("liqwatch-*.whl")
    return whl


def test_the_wheel_installs_one_package_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"liqwatch", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}"
                                                           ".dist-info"}
    for data in ("liqwatch/data/kafka/pom.xml", "liqwatch/data/kafka/log4j2.yaml",
                 "liqwatch/data/dashboards/prometheus.yml", "liqwatch/data/dashboards/alertmanager.yml",
                 "liqwatch/data/dashboards/rules/liqwatch.yml", "liqwatch/data/dashboards/grafana/overview.json",
                 "liqwatch/data/dashboards/grafana/operations.json",
                 "liqwatch/data/dashboards/grafana/provisioning/datasources/prometheus.yml",
                 "liqwatch/scenarios/oct-2025-prefix.yaml", "liqwatch/scenarios/oct-2025-fixed.yaml"):
        assert data in names, data


def test_an_installed_liqwatch_runs_its_stack_and_a_replay(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_ = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_}:{env['PATH']}"
    t0 = time.monotonic()
    run([str(bin_ / "python"), "-m", "pip", "install", "-q", str(wheel)], tmp_path, env, timeout=900)
    installed = time.monotonic() - t0
    work = tmp_path / "elsewhere"  # no pyproject, no liqwatch/ beside it: everything comes from the wheel
    work.mkdir()
    r = run([str(bin_ / "python"), "-c", "import liqwatch, sys; print(liqwatch.__file__)"], work, env)
    assert r.stdout.strip().startswith(str(venv)), r.stdout
    kafka, controller, prom, am, receiver = free_ports(5)
    state = tmp_path / "state"
    lw = [str(bin_ / "liqwatch")]
    stack = ["--state-dir", str(state)]
    try:
        run([*lw, "stack", "up", *stack, "--kafka-port", str(kafka), "--controller-port", str(controller),
             "--prometheus-port", str(prom), "--alertmanager-port", str(am), "--receiver-port", str(receiver)],
            work, env)
        bootstrap = f"127.0.0.1:{kafka}"
        run([*lw, "scenario", "oct-2025", "--accounts", "300", "--out", "evening.jsonl", "--config-out",
             "pre.yaml"], work, env)
        run([*lw, "produce", "evening.jsonl", "--bootstrap", bootstrap, "--topic-prefix", "w."], work, env)
        run([*lw, "replay", "--bootstrap", bootstrap, "--topic-prefix", "w.", "--from", "2025-10-10T20:00:00Z",
             "--to", "2025-10-10T23:00:01Z", "-c", "pre.yaml", "--report", "pm"], work, env)
        alerts = [json.loads(x) for x in (work / "pm" / "alerts-pre.jsonl").read_text().splitlines()]
        assert any(a["kind"] == "cascade_risk" for a in alerts), alerts[:3]
        assert (work / "pm" / "index.html").exists() and (work / "pm" / "summary.json").exists()
    finally:
        subprocess.run([*lw, "stack", "down", *stack], cwd=work, env=env, capture_output=True, timeout=120)
    assert all(port_free(p) for p in (kafka, controller, prom, am)), "the stack's ports are still taken"
    print(f"\nwheel {wheel.name}: installed into a fresh venv in {installed:.0f} s; stack up, produce, replay and "
          f"stack down from {work}")
