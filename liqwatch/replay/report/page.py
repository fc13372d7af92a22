"""The report's page, `index.html`, and the report directory: `render_html` turns the summary into formatted
figures and table rows, `page.html.j2` (next to this module) lays them out; `write_report` writes the plots, one
alerts JSONL per config, `summary.json` and the page."""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import jinja2
from markupsafe import Markup

from liqwatch.replay.report.data import dumps
from liqwatch.replay.report.plots import write_plots


def write_report(out: Path, summary: dict, command: str) -> dict[str, Path]:
    """The whole report into `out` (created; existing files replaced); returns what it wrote, by key."""
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(out, summary)
    files: dict[str, Path] = {k: out / v for k, v in plots.items()}
    for c in summary["configs"]:
        path = out / f"alerts-{_slug(c['name'])}.jsonl"
        path.write_text("".join(json.dumps(a, sort_keys=True) + "\n" for a in c["alerts"]))
        files[f"alerts-{c['name']}"] = path
    (out / "summary.json").write_text(dumps(summary))
    files["summary"] = out / "summary.json"
    (out / "index.html").write_text(render_html(summary, plots, command))
    files["html"] = out / "index.html"
    return files


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)


def render_html(summary: dict, plots: dict[str, str], command: str) -> str:
    """The page: `plots` maps plot key → file name (as `write_plots` returns it), `command` is shown to reproduce."""
    w = summary["window"]
    cs = summary["configs"]
    src = summary["input"]
    warm = src["market_events"] - src["market_events_in_window"]
    return _template().render(
        window_from=w["from_iso"], window_to=w["to_iso"],
        source=f"file {src['path']}" if src.get("kind") == "file" else f"Kafka {src.get('bootstrap')}",
        ticks=f"{src['market_events_in_window']:,}",
        warmup_events=f"{warm:,}" if warm else None, warmup_min=f"{w['warmup_ms'] / 60000:g}" if warm else None,
        snapshots=f"{src['account_snapshots']:,}",
        evaluate_s=f"{w['evaluate_every_ms'] / 1000:g}", cascade_s=f"{w['cascade_every_ms'] / 1000:g}",
        story=[_story(c) for c in cs],
        comparisons=[_comparison(cmp) for cmp in summary["comparisons"]],
        names=[c["name"] for c in cs],
        key_figures=_key_figures(cs),
        price_plots=[(key, img) for key, img in plots.items() if key.startswith("prices-")],
        plots=plots,
        configs=[_config_tables(c) for c in cs],
        liquidation_venue=str(cs[0].get("liquidation_venue", "the configured venue")),
        command=command,
    )


def _as_before(value):
    """Escapes as html.escape does (quotes as &#x27; and &quot;, not markupsafe's &#39; and &#34;): pages stay
    byte-comparable with those written before the template. Markup (the table macro's output) passes as it is."""
    return value if hasattr(value, "__html__") else Markup(html.escape(str(value)))


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined, finalize=_as_before)
    return env.get_template("page.html.j2")


def _usd(x) -> str:
    if x is None:
        return "—"
    if x < 0:
        return "−" + _usd(-x)
    a = abs(x)
    if a >= 1e9:
        return f"${x / 1e9:,.2f}B"
    if a >= 1e6:
        return f"${x / 1e6:,.1f}M"
    return f"${x:,.0f}"


def _hm(ts) -> str:
    return "—" if ts is None else datetime.fromtimestamp(ts / 1000, timezone.utc).strftime("%H:%M:%S")


def _story(c: dict) -> dict:
    """One config's evening in a sentence: what it liquidated, and whether a warning came before the wave."""
    t = c["totals"]
    return {"name": c["name"], "liquidated": _usd(t["liquidated_usd"]), "accounts": f"{t['liquidated_accounts']:,}",
            "lead_min": None if c["lead_time_s"] is None else f"{c['lead_time_s'] / 60:.1f}",
            "warning_at": _hm(c["first_critical_cascade_risk"]),
            "wave_at": None if c["first_wave"] is None else _hm(c["first_wave"]),
            "critical_episodes": t["critical_episodes"]}


def _comparison(cmp: dict) -> dict:
    """A --compare config against the first: what it avoided, and the alerts that fire at another time."""
    changed = [r for r in cmp["alerts"] if r["change"] != "same time"]
    return {"config": cmp["config"], "against": cmp["against"], "avoided": _usd(cmp["liquidated_usd_avoided"]),
            "accounts_avoided": f"{cmp['liquidated_accounts_avoided']:,}",
            "peak_change": _usd(cmp["peak_liquidatable_usd_change"]),
            "same": len(cmp["alerts"]) - len(changed),
            "changed": [[r["kind"], r["subject"], r["severity"], _hm(r["base"]), _hm(r["other"]), r["change"] +
                         ("" if r["shift_s"] in (None, 0) else f" ({r['shift_s'] / 60:+.1f} min)")] for r in changed]}


def _key_figures(cs: list[dict]) -> list[list[str]]:
    """Rows of the side-by-side table: a label, then one cell per config."""
    return [
        ["forced liquidations on the recorded prices"] + [_usd(c["totals"]["liquidated_usd"]) for c in cs],
        ["accounts force-liquidated"] + [f"{c['totals']['liquidated_accounts']:,}" for c in cs],
        ["peak liquidatable notional"] + [f"{_usd(c['totals']['peak_liquidatable_usd'])} at "
                                          f"{_hm(c['totals']['peak_liquidatable_at'])}" for c in cs],
        ["first critical cascade_risk"] + [_hm(c["first_critical_cascade_risk"]) for c in cs],
        ["first liquidation wave (critical liquidations)"] + [_hm(c["first_wave"]) for c in cs],
        ["lead time"] + ["—" if c["lead_time_s"] is None else f"{c['lead_time_s'] / 60:.1f} min" for c in cs],
        ["lowest critical severity"] + [
            "—" if c["totals"]["lowest_critical_severity"] is None or c["totals"]["lowest_critical_severity"] >= 1
            else f"{c['totals']['lowest_critical_severity']:.3f} at {_hm(c['totals']['lowest_critical_severity_at'])}"
            for c in cs],
        ["highest stress amplification"] + [
            "—" if c["totals"]["max_amplification"] is None else
            f"{c['totals']['max_amplification']:.2f} at {_hm(c['totals']['max_amplification_at'])}" for c in cs],
        ["largest insurance fund drawdown in a stress cascade (fees included)"] + [
            "—" if c["totals"]["max_fund_drawdown_usd"] is None else
            f"{_usd(c['totals']['max_fund_drawdown_usd'])} of {_usd(c['totals']['insurance_fund_usd'])}" for c in cs],
        ["largest auto-deleveraging notional in a stress cascade"] + [
            "—" if c["totals"]["max_adl_notional_usd"] is None else _usd(c["totals"]["max_adl_notional_usd"])
            for c in cs],
        ["alert episodes (critical)"] + [f"{c['totals']['episodes']} ({c['totals']['critical_episodes']})" for c in cs],
        ["dead letters"] + [str(c["totals"]["dead_letters"]) for c in cs],
        ["config id"] + [c["config_id"] for c in cs],
    ]


def _config_tables(c: dict) -> dict:
    """One config's rows for the alert episodes, the sources left out and the position limits."""
    return {
        "name": c["name"],
        "episodes": [[ep["kind"], ep["subject"], _hm(ep["fired"]), _hm(ep["critical_at"]), _hm(ep["resolved"]),
                      ep["summary"]] for ep in c["episodes"]],
        "sources_left_out": [[ep["asset"], ep["source"], ep["reason"], _hm(ep["from"]), _hm(ep["until"])]
                             for ep in c["dropped_sources"] if not _startup_gap(ep, c)],
        "nearest": [[r["account"], r["instrument"], f"{r['qty']:,.4g}", f"{r['mark']:,.6g}",
                     f"{r['liquidation_price']:,.6g}", "—" if r["bankruptcy_price"] is None else
                     f"{r['bankruptcy_price']:,.6g}", f"{100 * r['distance']:+.2f}%",
                     "—" if r["adl_rank"] is None else f"{r['adl_rank']:.2f}"] for r in c.get("nearest_liquidation")
                    or []],
        "limits": [[x["asset"], "unbounded" if x["limit_usd"] is None else _usd(x["limit_usd"]),
                    "—" if x["limit_qty"] is None else f"{x['limit_qty']:,.0f}",
                    f"{100 * x['index_drop_per_1m_usd']:.3f}%", _usd(x["largest_usd"]), str(x["accounts_over_limit"]),
                    _usd(x["held_usd"]), ", ".join(x["sources"])] for x in c["limits"]],
    }


def _startup_gap(ep: dict, c: dict) -> bool:
    """A source with no quote yet at the very first evaluation (the first record of the window): not news."""
    t = c["series"]["t"]
    return ep["reason"] == "missing" and bool(t) and ep["from"] == t[0] and ep["until"] is not None and \
        len(t) > 1 and ep["until"] <= t[1]
