"""Square-root impact parameters from recorded bars (`liqwatch calibrate`), SPEC §5:
price × (1 − y × daily_vol × sqrt(net / daily_volume_usd)).

    fit = calibrate("BTC", read_rows(Path("BTCUSDT-1m-2025-10-07.csv")))
    print(impact_yaml([fit]))   # BTC:\\n  impact: {model: sqrt, daily_volume_usd: 1.6e+10, daily_vol: 0.0072, y: 1.0}

From n bars of interval Δ (ms) covering the window W = n × Δ:
- `daily_volume_usd` = Σ quote volume × (1 day / W): the window's turnover scaled to a day. A file without a quote
  volume (e.g. a generic Parquet of base volume) uses Σ volume × typical price (high + low + close) / 3, and says so.
- `daily_vol` = the sample standard deviation of the log returns ln(close_i / close_{i−1}) of consecutive bars ×
  sqrt(1 day / Δ): the bar volatility scaled to a day as for a random walk.
- `y` = 1 unless given (the square-root law's constant is of order one).
- the equivalent linear model at a reference size S (default $10M): the sqrt model moves the price by
  m = y × daily_vol × sqrt(S / daily_volume_usd); the linear model that moves it as much at S has
  `depth_usd_per_pct` = S / (100 × m). Smaller sales move the sqrt model more than that linear one, larger less.

Known limits, to read the numbers by: the volume of a crash window counts the forced selling itself and overstates
the depth that was there (10 October 2025 traded several times a calm evening's volume while books thinned out);
a calm window understates the volatility of a bad day. A few hours scaled to a day carry the hours' own rhythm (the
US afternoon is busier than Asian night). Bars see neither the spread nor the book: this is a rule of thumb to set
`impact:` in a config, not a measurement of depth; compare a calm and a crash window of the same hours.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from liqwatch.tools.importer import ImportFailed, Rows, duration_text, iso

DAY_MS = 86_400_000
DEFAULT_REFERENCE_USD = 10_000_000.0


@dataclass(frozen=True)
class ImpactFit:
    asset: str
    source: str
    bars: int
    interval_ms: int
    first_ts: int
    last_ts: int
    window_ms: int
    quote_volume_usd: float
    volume_from: str             # "quote_volume" or "volume × (high + low + close) / 3"
    daily_volume_usd: float
    bar_vol: float               # std of the bars' log returns
    daily_vol: float
    y: float
    reference_usd: float
    move_at_reference: float     # fraction of the price the sqrt model moves at reference_usd
    depth_usd_per_pct: float     # the linear model with the same move at reference_usd

    def to_dict(self) -> dict:
        d = asdict(self)
        d["from"], d["to"] = iso(self.first_ts), iso(self.last_ts)
        return d


def calibrate(asset: str, rows: Rows, y: float = 1.0, reference_usd: float = DEFAULT_REFERENCE_USD) -> ImpactFit:
    """The fit of one asset from its bars (module doc)."""
    if rows.kind != "bars":
        raise ImportFailed(f"{rows.file}: calibrate reads bars (klines or open/high/low/close), not {rows.kind}")
    if not (y > 0 and math.isfinite(y)):
        raise ImportFailed(f"y must be a finite number > 0 (got {y})")
    if not (reference_usd > 0 and math.isfinite(reference_usd)):
        raise ImportFailed(f"the reference size must be a finite number > 0 (got {reference_usd})")
    n = len(rows)
    if n < 3:
        raise ImportFailed(f"{rows.file}: {n} bars in the window; calibrate needs at least 3")
    order = np.argsort(rows.ts, kind="stable")
    ts, close = rows.ts[order], rows.values["close"][order]
    interval = int(np.median(rows.interval_ms))
    v = rows.values
    if "quote_volume" in v:
        quote, source = v["quote_volume"], "quote_volume"
    elif "volume" in v:
        quote, source = v["volume"] * (v["high"] + v["low"] + v["close"]) / 3.0, "volume × (high + low + close) / 3"
    else:
        raise ImportFailed(f"{rows.file}: no volume column (quote_volume or volume) to scale depth by")
    window = n * interval
    total = float(np.sum(quote))
    if total <= 0:
        raise ImportFailed(f"{rows.file}: no volume traded in the window")
    daily_volume = total * DAY_MS / window
    returns = np.diff(np.log(close))
    bar_vol = float(np.std(returns, ddof=1))
    daily_vol = bar_vol * math.sqrt(DAY_MS / interval)
    move = y * daily_vol * math.sqrt(reference_usd / daily_volume)
    depth = reference_usd / (100.0 * move) if move > 0 else math.inf
    return ImpactFit(asset, rows.file, n, interval, int(ts[0]), int(ts[-1]), window, total, source, daily_volume,
                     bar_vol, daily_vol, y, reference_usd, move, depth)


def _num(x: float) -> str:
    """Four significant figures, written so YAML reads a float back (PyYAML wants a dot in `1.0e+7`)."""
    if not math.isfinite(x):
        return ".inf"
    text = f"{x:.4g}"
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + (f"e{int(exponent):+d}" if exponent else "")


def impact_yaml(fits: list[ImpactFit]) -> str:
    """One `impact:` block per asset, under `assets:`, with how it was made as comments."""
    out = ["# liqwatch calibrate: square-root impact (SPEC §5) from recorded bars; paste under a config's assets",
           "assets:"]
    for f in fits:
        out += [
            f"  {f.asset}:",
            f"    # {f.bars} {duration_text(f.interval_ms)} bars of {f.source}, {iso(f.first_ts)} → {iso(f.last_ts)}",
            f"    # {f.volume_from} ${_money(f.quote_volume_usd)} in {duration_text(f.window_ms)} → a day; "
            f"σ of {duration_text(f.interval_ms)} log returns {_num(f.bar_vol)} → daily_vol",
            f"    impact: {{model: sqrt, daily_volume_usd: {_num(f.daily_volume_usd)}, daily_vol: {_num(f.daily_vol)}, "
            f"y: {_num(f.y)}}}",
            f"    # same move ({_num(100 * f.move_at_reference)}%) at ${_money(f.reference_usd)} as linear: "
            f"impact: {{model: linear, depth_usd_per_pct: {_num(f.depth_usd_per_pct)}}}",
        ]
    return "\n".join(out) + "\n"


def impact_json(fits: list[ImpactFit]) -> str:
    return json.dumps({f.asset: f.to_dict() for f in fits}, indent=2)


def _money(x: float) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"
