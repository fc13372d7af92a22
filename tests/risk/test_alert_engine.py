"""The alert episode state machine, one reading at a time (no Kafka, no engine)."""

from __future__ import annotations

from liqwatch.config import AlertsSpec, Levels
from liqwatch.risk.alerts import AlertEngine
from liqwatch.sinks.metrics import Metrics

LEVELS = Levels(warning=0.02, critical=0.05)


def engine(publishing: bool = True) -> AlertEngine:
    e = AlertEngine(AlertsSpec(clear_ratio=0.8), "cfg", Metrics(), "USDT")
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


# -- timing: `for_s` and `keep_firing_for_s`, in event time (ms) --------------------------------------------------
TIMED = Levels(warning=0.02, critical=0.05, for_s=30, keep_firing_for_s=300)


def readings(e: AlertEngine, values: list[tuple[int, float]], levels: Levels = TIMED) -> list[dict]:
    out = []
    for t_s, v in values:
        out += e.observe("depeg", "USDe", v, levels, t_s * 1000, "s")
    return out


def test_a_pending_signal_fires_only_once_it_has_held_for_its_duration():
    # over warning at 0, 10, 20 s: pending; at 30 s it has held 30 s: fires, the episode dated from 0
    out = readings(engine(), [(0, 0.03), (10, 0.03), (20, 0.03), (30, 0.03)])
    assert states(out) == [("firing", "warning")]
    assert out[0]["ts"] == 30_000 and out[0]["since"] == 0 and out[0]["id"] == "depeg:USDe:0"


def test_a_blip_shorter_than_the_pending_duration_fires_nothing():
    assert readings(engine(), [(0, 0.06), (10, 0.06), (20, 0.0), (30, 0.06), (50, 0.06)]) == []


def test_a_signal_back_within_keep_firing_for_continues_the_episode_instead_of_re_firing():
    e = engine()
    out = readings(e, [(0, 0.03), (30, 0.03), (40, 0.0), (200, 0.0), (210, 0.03), (220, 0.0)])
    assert states(out) == [("firing", "warning")]  # no resolve at 40 s, no second firing at 210 s
    # clear since 220 s: resolved once it has stayed clear for 300 s
    assert readings(e, [(500, 0.0)]) == []
    assert states(readings(e, [(520, 0.0)])) == [("resolved", "warning")]


def test_without_timing_an_episode_fires_and_resolves_at_once():
    assert states(readings(engine(), [(0, 0.03), (10, 0.0)], LEVELS)) == [("firing", "warning"),
                                                                         ("resolved", "warning")]


def test_a_critical_episode_steps_down_only_once_calm_for_keep_firing_for():
    # critical at 30 s; a dip to warning level at 40 s and back at 100 s does not step down; a dip that lasts
    # keep_firing_for (300 s) does, once
    e = engine()
    out = readings(e, [(0, 0.06), (30, 0.06), (40, 0.03), (100, 0.06), (110, 0.03), (300, 0.03)])
    assert states(out) == [("firing", "critical")]
    assert states(readings(e, [(410, 0.03)])) == [("firing", "warning")]


def test_a_next_leader_loaded_with_the_state_goes_on_exactly_as_the_last_one():
    """The alerts topic has only transitions; `state` keeps pending and clearing timers too (liqwatch.leader): an
    engine loaded with it mid-way emits the same events afterwards as the engine that never stopped."""
    timing = Levels(warning=0.02, critical=0.05, for_s=2, keep_firing_for_s=3)
    readings = [("adl_risk", "BTC", v) for v in (0.03, 0.03, 0.03, 0.06, 0.001, 0.001, 0.03, 0.001, 0.001, 0.001,
                                                 0.001)] + [("adl_risk", "ETH", 0.03)]
    whole = engine()
    want = [ev for t, (k, s, v) in enumerate(readings) for ev in whole.observe(k, s, v, timing, t * 1000, "s")]
    lossy = 0  # cuts where the open episodes alone (what the alerts topic holds) would not go on exactly
    for cut in range(1, len(readings)):
        first = engine()
        got = [ev for t, (k, s, v) in enumerate(readings[:cut]) for ev in first.observe(k, s, v, timing, t * 1000, "s")]
        second = engine()
        second.observe("depeg", "USDe", 0.03, LEVELS, 0, "s")  # its own market episode stays its own
        second.load(first.state({"adl_risk"}), {"adl_risk"})
        got += [ev for t, (k, s, v) in enumerate(readings) if t >= cut
                for ev in second.observe(k, s, v, timing, t * 1000, "s")]
        assert got == want, cut
        assert ("depeg", "USDe") in second.open
        topic_only = engine()
        topic_only.restore(AlertEngine.open_on_topic(got[:len([e for e in want if e["ts"] < cut * 1000])], "cfg"),
                           {"adl_risk"})
        rest = [ev for t, (k, s, v) in enumerate(readings) if t >= cut
                for ev in topic_only.observe(k, s, v, timing, t * 1000, "s")]
        lossy += rest != [e for e in want if e["ts"] >= cut * 1000]
    assert states(want) == [("firing", "warning"), ("firing", "critical"), ("resolved", "critical")]
    assert ("adl_risk", "ETH") in whole.pending and lossy > 0
