"""Config → the numbers the kernels read: asset and instrument ids, index constituents, bracket tables.

    layout = Layout(cfg)
    layout.asset_id["ETH"], layout.index_params.cons_ptr, layout.scenario_direction("risk_off")

Asset ids follow the index evaluation order (quotes and redemption targets first), so `index_params.order` is
simply 0..A-1. Venue books get "slots" (see `liqwatch.core.state.MarketState`); every book named by the config is
registered here so its slot is fixed, and books first seen in the data are appended later.
"""

from __future__ import annotations

import numpy as np

from liqwatch.kernels.arrays import (
    IMPACT_LINEAR,
    IMPACT_NONE,
    IMPACT_SQRT,
    MARK_INDEX,
    MARK_MEDIAN3,
    METHOD_WEIGHTED_MEDIAN,
    SOURCE_BOOK,
    SOURCE_REDEMPTION,
    ImpactParams,
    IndexParams,
    MarkParams,
    RiskParams,
    bracket_table,
)
from liqwatch.config import Config, LinearImpact, SqrtImpact


def _f64(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64)


def _i32(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int32)


class Layout:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.assets: list[str] = cfg.evaluation_order()
        self.asset_id = {a: i for i, a in enumerate(self.assets)}
        self.instruments: list[str] = list(cfg.instruments)
        self.instrument_id = {n: i for i, n in enumerate(self.instruments)}
        self.settlement = self.asset_id[cfg.settlement]
        # books named by the config: (venue, symbol) in a fixed order → slot
        self.books: list[tuple[str, str]] = []
        self._book_slot: dict[str, int] = {}
        self.venues: list[str] = []
        self.venue_id: dict[str, int] = {}
        self.venue(cfg.liquidation.venue)
        for a in self.assets:
            spec = cfg.assets.get(a)
            if spec is not None and spec.index is not None:
                for c in spec.index.constituents:
                    if not c.is_redemption:
                        self._register_book(c.source)
        for name in self.instruments:
            self._register_book(cfg.mark_source(name))
        for a in self.assets:  # watched books last: adding one leaves the constituents' slots where they were
            spec = cfg.assets.get(a)
            for src in spec.books if spec is not None else ():
                self._register_book(src)
        # the asset each asset redeems into (its index has a `redemption:` source into it), -1 if none: a
        # position's liquidation price moves it with that asset (liqwatch.kernels.positions)
        self.follows = np.full(len(self.assets), -1, dtype=np.int32)
        for a in self.assets:
            spec = cfg.assets.get(a)
            for c in spec.index.constituents if spec is not None and spec.index is not None else ():
                if c.is_redemption and c.in_ in self.asset_id and self.follows[self.asset_id[a]] < 0:
                    self.follows[self.asset_id[a]] = self.asset_id[c.in_]
        self.index_params = self._index_params()
        self.mark_params = self._mark_params()
        self.risk_params = self._risk_params()
        self.impact_params = self._impact_params()
        # (asset, source) per constituent, in cons order: names for `mark` events and reports
        self.constituents: list[tuple[str, str]] = [
            (a, c.source)
            for a in self.assets
            if (spec := cfg.assets.get(a)) is not None and spec.index is not None
            for c in spec.index.constituents
        ]

    # -- ids -------------------------------------------------------------------------------------------------
    def venue(self, name: str) -> int:
        if name not in self.venue_id:
            self.venue_id[name] = len(self.venues)
            self.venues.append(name)
        return self.venue_id[name]

    def _register_book(self, source: str) -> int:
        if source not in self._book_slot:
            venue, symbol = source.split(":", 1)
            self.venue(venue)
            self._book_slot[source] = len(self.books)
            self.books.append((venue, symbol))
        return self._book_slot[source]

    def book_base(self, symbol: str) -> tuple[int, int] | None:
        """(base asset, quote asset or -1) of a book symbol: BASE/QUOTE spot, or an instrument (its underlying,
        quoted in the settlement asset). None when the symbol names nothing this config knows."""
        if "/" in symbol:
            base, quote = symbol.split("/", 1)
            if base in self.asset_id and quote in self.asset_id:
                return self.asset_id[base], self.asset_id[quote]
            return None
        if symbol in self.instrument_id:
            return self.asset_id[self.cfg.instruments[symbol].underlying], -1
        return None

    def scenario_direction(self, scenario: str) -> np.ndarray:
        d = np.zeros(len(self.assets))
        for asset, move in self.cfg.stress.scenarios[scenario].items():
            d[self.asset_id[asset]] = move
        return d

    # -- params -----------------------------------------------------------------------------------------------
    def _index_params(self) -> IndexParams:
        n = len(self.assets)
        fixed_one = np.zeros(n, dtype=np.bool_)
        method = np.zeros(n, dtype=np.int8)
        max_dev = np.zeros(n)
        floor = np.full(n, np.nan)
        cap = np.full(n, np.nan)
        ptr = [0]
        kind, ref, quote, weight, max_age = [], [], [], [], []
        for a, name in enumerate(self.assets):
            spec = self.cfg.assets.get(name)
            ix = spec.index if spec is not None else None
            if ix is None:
                fixed_one[a] = True
                ptr.append(len(kind))
                continue
            method[a] = METHOD_WEIGHTED_MEDIAN if ix.method == "weighted_median" else 0
            max_dev[a] = ix.max_deviation
            floor[a] = np.nan if ix.floor is None else ix.floor
            cap[a] = np.nan if ix.cap is None else ix.cap
            for c in ix.constituents:
                if c.is_redemption:
                    kind.append(SOURCE_REDEMPTION)
                    ref.append(a)
                    quote.append(self.asset_id[c.in_])  # type: ignore[index]
                else:
                    kind.append(SOURCE_BOOK)
                    ref.append(self._book_slot[c.source])
                    quote.append(self.asset_id[self.cfg.source_quote(c)])  # type: ignore[index]
                weight.append(c.weight)
                max_age.append(self.cfg.source_max_age_ms(ix, c))
            ptr.append(len(kind))
        return IndexParams(
            order=_i32(np.arange(n)),
            fixed_one=fixed_one,
            method=method,
            max_deviation=_f64(max_dev),
            floor=_f64(floor),
            cap=_f64(cap),
            cons_ptr=_i32(ptr),
            cons_kind=np.ascontiguousarray(kind, dtype=np.int8),
            cons_ref=_i32(ref),
            cons_quote=_i32(quote),
            cons_weight=_f64(weight),
            cons_max_age_ms=_f64(max_age),
        )

    def _mark_params(self) -> MarkParams:
        ins = [self.cfg.instruments[n] for n in self.instruments]
        return MarkParams(
            underlying=_i32([self.asset_id[i.underlying] for i in ins]),
            method=np.ascontiguousarray(
                [MARK_INDEX if i.mark.method == "index" else MARK_MEDIAN3 for i in ins], dtype=np.int8
            ),
            slot=_i32([self._book_slot[self.cfg.mark_source(n)] for n in self.instruments]),
            funding_interval_ms=_f64([i.mark.funding_interval_s * 1000.0 for i in ins]),
        )

    def basis_window_ms(self, instrument: int) -> float:
        return self.cfg.instruments[self.instruments[instrument]].mark.basis_window_s * 1000.0

    def _risk_params(self) -> RiskParams:
        cfg = self.cfg
        haircuts = []
        for name in self.assets:
            spec = cfg.assets.get(name)
            haircuts.append([(b.upto, b.rate) for b in spec.haircut] if spec is not None else [])
        hu, hr, hc = bracket_table(haircuts)
        mu, mr, mc = bracket_table([[(b.upto, b.rate) for b in cfg.instruments[n].maintenance]
                                    for n in self.instruments])
        borrow = np.zeros(len(self.assets))
        for name, spec in cfg.borrow.items():
            borrow[self.asset_id[name]] = spec.maintenance_rate
        return RiskParams(
            haircut_upto=hu,
            haircut_rate=hr,
            haircut_cum=hc,
            borrow_rate=_f64(borrow),
            maint_upto=mu,
            maint_rate=mr,
            maint_cum=mc,
            underlying=self.mark_params.underlying,
            settlement=self.settlement,
        )

    def _impact_params(self) -> ImpactParams:
        n = len(self.assets)
        model = np.full(n, IMPACT_NONE, dtype=np.int8)
        depth = np.full(n, np.nan)
        volume = np.full(n, np.nan)
        vol = np.full(n, np.nan)
        y = np.full(n, np.nan)
        for a, name in enumerate(self.assets):
            spec = self.cfg.assets.get(name)
            imp = spec.impact if spec is not None else None
            if isinstance(imp, LinearImpact):
                model[a] = IMPACT_LINEAR
                depth[a] = imp.depth_usd_per_pct
            elif isinstance(imp, SqrtImpact):
                model[a] = IMPACT_SQRT
                volume[a], vol[a], y[a] = imp.daily_volume_usd, imp.daily_vol, imp.y
        return ImpactParams(model=model, depth_usd_per_pct=depth, daily_volume_usd=volume, daily_vol=vol, y=y)
