"""The alert episode state machine, one reading at a time (no Kafka, no engine)."""

from __future__ import annotations

from liqwatch.config import AlertsSpec, Levels
from liqwatch.risk.alerts import AlertEngine
from liqwatch.sinks.metrics import Metrics

LEVELS = Levels(warning=0.02, critical=0.05)


def engine(publishing: bool = True) -> AlertEngine:
    e = AlertEngine(AlertsSpec(clear_ratio=0.8), "cfg", Metrics())
    e.publishing = publishing
    return e


def states(events: list[dict]) -> list[tuple[str, str]]:
    return [(ev["state"], ev["severity"]) for ev in events]


def test_a_reading_above_warning_opens_an_episode():
    assert states(engine().observe("depeg", "USDe", 0.03, LEVELS, 1000, "s")) == [("firing", "warning")]


def test_a_reading_below_warning_opens_nothing():
    assert engine().observe("depeg", "USDe", 0.019, LEVELS, 1000, "s") == []


def test_an_episode_escalates_then_resolves_under_one_id():
    e = engine()
    out = []
    for t, v in enumerate([0.03, 0.06, 0.001]):
        out += e.observe("depeg", "USDe", v, LEVELS, t, "s")
    assert states(out) == [("firing", "warning"), ("firing", "critical"), ("resolved", "critical")]
    assert len({ev["id"] for ev in out}) == 1 and out[0]["id"] == "depeg:USDe:0"


def test_hysteresis_a_value_hovering_at_warning_does_not_flap():
    e = engine()
    out = []
    for t, v in enumerate([0.021, 0.019, 0.021, 0.017, 0.0159]):  # resolves below 0.02 × 0.8 only
        out += e.observe("depeg", "USDe", v, LEVELS, t, "s")
    assert states(out) == [("firing", "warning"), ("resolved", "warning")]


def test_critical_steps_down_only_past_the_clear_margin():
    e = engine()
    out = []
    for t, v in enumerate([0.06, 0.045, 0.039]):  # 0.045 ≥ 0.05 × 0.8: still critical; 0.039 is not
        out += e.observe("depeg", "USDe", v, LEVELS, t, "s")
    assert states(out) == [("firing", "critical"), ("firing", "warning")]


def test_lower_is_worse_signals_fire_below_their_levels():
    levels = Levels(warning=0.5, critical=0.25)  # e.g. a ratio that should stay high
    assert states(engine().observe("x", "y", 0.2, levels, 0, "s", lower_is_worse=True)) == [("firing", "critical")]


def test_nan_readings_change_nothing():
    e = engine()
    e.observe("depeg", "USDe", 0.03, LEVELS, 0, "s")
    assert e.observe("depeg", "USDe", float("nan"), LEVELS, 1, "s") == []
    assert ("depeg", "USDe") in e.open


def test_open_on_topic_replays_the_changelog():
    a = engine()
    events = a.observe("depeg", "USDe", 0.03, LEVELS, 0, "s") + a.observe("depeg", "WBETH", 0.06, LEVELS, 0, "s")
    events += a.observe("depeg", "USDe", 0.0, LEVELS, 1, "s")
    assert set(AlertEngine.open_on_topic(events, "cfg")) == {("depeg", "WBETH")}
    assert AlertEngine.open_on_topic(events, "another config") == {}


def test_restore_takes_only_the_named_kinds():
    follower = engine(publishing=False)
    follower.observe("depeg", "USDe", 0.03, LEVELS, 0, "s")
    follower.observe("liquidations", "all", 0.03, LEVELS, 0, "s")
    leader = engine()
    on_topic = leader.observe("liquidations", "all", 0.06, LEVELS, 0, "s")
    follower.restore(AlertEngine.open_on_topic(on_topic, "cfg"), {"liquidations"})
    assert follower.open[("liquidations", "all")].severity == "critical"  # the leader's episode
    assert follower.open[("depeg", "USDe")].severity == "warning"        # its own market episode stays


def test_a_follower_computes_alerts_but_sets_no_gauge():
    e = engine(publishing=False)
    assert states(e.observe("depeg", "USDe", 0.06, LEVELS, 0, "s")) == [("firing", "critical")]
    assert b"liqwatch_alert_active{" not in e.metrics.exposition()
