"""Prometheus rules and the Prometheus/Alertmanager configs, checked by the tools that will load them
(promtool and amtool from Debian's prometheus and prometheus-alertmanager packages, see scripts/setup-system.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DASH = Path(__file__).resolve().parents[2] / "liqwatch" / "data" / "dashboards"
PROMTOOL, AMTOOL = Path("/usr/bin/promtool"), Path("/usr/bin/amtool")


def run(*cmd: str | Path) -> str:
    tool = Path(cmd[0])
    if not tool.exists():
        pytest.fail(f"{tool} is missing: scripts/setup-system.sh installs it (Debian prometheus packages)")
    p = subprocess.run([str(c) for c in cmd], cwd=DASH, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr


def test_rules_are_valid():
    out = run(PROMTOOL, "check", "rules", "rules/liqwatch.yml")
    assert "SUCCESS: 6 rules found" in out


def test_rule_unit_tests_pass():
    assert "SUCCESS" in run(PROMTOOL, "test", "rules", "rules/tests/liqwatch_test.yml")


def test_every_rule_has_a_unit_test():
    groups = yaml.safe_load((DASH / "rules/liqwatch.yml").read_text())["groups"]
    rules = {r["alert"] for g in groups for r in g["rules"]}
    tests = yaml.safe_load((DASH / "rules/tests/liqwatch_test.yml").read_text())["tests"]
    for name in rules:
        cases = [c for t in tests for c in t["alert_rule_test"] if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in cases), f"{name}: no case where it fires"
        assert any(not c["exp_alerts"] for c in cases), f"{name}: no case where it stays quiet"


def test_rules_folder_holds_only_rule_files():
    # prometheus*.yml load `rules/*.yml`: a promtool test file there would make Prometheus refuse its config.
    for f in (DASH / "rules").glob("*.yml"):
        assert set(yaml.safe_load(f.read_text())) == {"groups"}, f"{f.name} is not a rule file"


@pytest.mark.parametrize("config", ["alertmanager.yml", "alertmanager.compose.yml"])
def test_alertmanager_configs_are_valid(config):
    assert "SUCCESS" in run(AMTOOL, "check-config", config)


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_prometheus_configs_are_valid(config, tmp_path):
    # promtool resolves rule_files and file_sd globs against the config's dir, as Prometheus does: check a copy
    # laid out as the containers and the local stack see it (config next to rules/).
    shutil.copy(DASH / config, tmp_path / "prometheus.yml")
    shutil.copytree(DASH / "rules", tmp_path / "rules")
    out = run(PROMTOOL, "check", "config", tmp_path / "prometheus.yml")
    assert "SUCCESS: 6 rules found" in out
