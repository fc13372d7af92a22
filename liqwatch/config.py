"""The one config file (SPEC §2): YAML in, frozen typed objects out, every error naming its field.

    cfg = load_config("liqwatch/scenarios/oct-2025-prefix.yaml")
    cfg.assets["WBETH"].index.constituents[1].weight   # 0.8
    cfg.config_id                                      # 'c3f1…' stamps alerts and replays

Errors are collected, not raised one at a time, so a user fixes a file in one pass:

    ConfigError: config.yaml is not valid:
      assets.WBETH.index.constituents[1].weight: must be > 0
      instruments.BTCUSDT-PERP.underlying: unknown asset 'BTX'

Extensions of the spec's file (README "Config and event extensions"):
- a `redemption:A` constituent names the asset it redeems into (`in: ETH`), so that index dependency cycles are a
  config error rather than a runtime surprise;
- `instruments.X.mark.source` (default `<liquidation.venue>:X`) names the venue book of the perpetual, and
  `funding_interval_s` its funding period;
- `stress.primary` picks the scenario used for per-account liquidation severity (default: the first one);
- `ingest.out_of_order_ms` is the tolerance for events older than the last one of the same key;
- index constituents may be derivative books (`venue:INSTRUMENT`), each source has its own freshness limit, and an
  index with fewer than three fresh sources anchors on its reference source (IndexSpec).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Quote assets priced at 1 when the config gives them no index (SPEC §3).
USD_LIKE = ("USD", "USDT", "USDC")

_SOURCE_RE = re.compile(r"^(?P<venue>[A-Za-z0-9_.\-]+):(?P<symbol>[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)?)$")


class ConfigError(ValueError):
    """A config that cannot be used; `problems` holds one 'field.path: message' per problem."""

    def __init__(self, problems: list[str], origin: str = "config"):
        self.problems = problems
        super().__init__(f"{origin} is not valid:\n  " + "\n  ".join(problems))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# Numbers are strict: YAML `true` is not 1 and "5e7" (text to YAML 1.1: write 5.0e+7) is not a number. An int is
# a float; a float is not an int.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
Rate = Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)]
# a stress severity is a fraction of a move: d_a × s with |d_a| × s < 1 for a fall (checked against the directions)
Severity = Annotated[float, Field(strict=True, gt=0, le=1, allow_inf_nan=False)]


class Bracket(_Frozen):
    """One incremental bracket: `rate` applies to the part of the amount up to `upto` (USD); null = no upper end."""

    upto: PositiveFloat | None = None
    rate: Rate


def _check_brackets(brackets: list[Bracket]) -> list[Bracket]:
    for i, b in enumerate(brackets):
        last = i == len(brackets) - 1
        if b.upto is None and not last:
            raise ValueError(f"bracket [{i}] has upto: null but is not the last bracket")
        if last and b.upto is not None:
            raise ValueError(f"the last bracket must have upto: null (open-ended), got {b.upto}")
        if i > 0 and b.upto is not None and b.upto <= brackets[i - 1].upto:  # type: ignore[operator]
            raise ValueError(f"brackets out of order: upto {b.upto} at [{i}] is not above {brackets[i - 1].upto}")
    return brackets


class Constituent(_Frozen):
    source: str = Field(description="`venue:BASE/QUOTE` (a spot book), `venue:INSTRUMENT` (a derivative's book, "
                                    "e.g. a perpetual's mid, in settlement units) or `redemption:ASSET` (the "
                                    "reference rate)")
    weight: PositiveFloat
    in_: str | None = Field(default=None, alias="in", description="for redemption sources: the asset it redeems into")
    # freshness of this source; default: the index's max_age_ms for a book, redemption_max_age_ms for a reference
    max_age_ms: Annotated[int, Field(strict=True, gt=0)] | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str) -> str:
        if not _SOURCE_RE.match(v):
            raise ValueError(f"'{v}' is not of the form venue:BASE/QUOTE or redemption:ASSET")
        venue, symbol = v.split(":", 1)
        if venue == "redemption" and "/" in symbol:
            raise ValueError(f"'{v}': a redemption source names one asset, e.g. redemption:WBETH")
        return v

    @property
    def is_redemption(self) -> bool:
        return self.source.startswith("redemption:")

    @property
    def is_derivative(self) -> bool:
        """A derivative's book (`venue:INSTRUMENT`): priced at its mid, in settlement units."""
        return not self.is_redemption and "/" not in self.source

    @property
    def venue(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def base(self) -> str:
        return self.source.split(":", 1)[1].split("/")[0]

    @property
    def quote(self) -> str:
        """QUOTE of a spot book (Config.source_quote covers every kind)."""
        return self.source.split(":", 1)[1].split("/")[1]


class IndexSpec(_Frozen):
    """SPEC §3, with two extensions (README "Index rules"): a freshness limit per source, and the anchor rule —
    with fewer than three fresh sources the median cannot say which one is wrong, so the deviation filter is
    centred on the fresh reference (`redemption:`) source when the index has one, and not applied when it has none;
    an index never freezes at its last value while a source is fresh."""

    method: Literal["weighted_mean", "weighted_median"] = "weighted_mean"
    max_age_ms: Annotated[int, Field(strict=True, gt=0)] = 10_000  # books: a quote older than this is stale
    # reference rates are published every few minutes (USDe) to once a day (WBETH, BNSOL): a day and two hours
    redemption_max_age_ms: Annotated[int, Field(strict=True, gt=0)] = 93_600_000
    max_deviation: PositiveFloat = 0.05
    constituents: Annotated[list[Constituent], Field(min_length=1)]
    floor: PositiveFloat | None = None
    cap: PositiveFloat | None = None


class LinearImpact(_Frozen):
    """Price × (1 − 0.01 × net_sold_usd / depth_usd_per_pct), never below 1% of the price."""

    model: Literal["linear"]
    depth_usd_per_pct: PositiveFloat


class SqrtImpact(_Frozen):
    """Price × (1 − y × daily_vol × sqrt(net_sold_usd / daily_volume_usd)) — the square-root law."""

    model: Literal["sqrt"]
    daily_volume_usd: PositiveFloat
    daily_vol: PositiveFloat
    y: PositiveFloat = 1.0


class AssetSpec(_Frozen):
    index: IndexSpec | None = None
    haircut: list[Bracket] = Field(default_factory=list)
    impact: Annotated[LinearImpact | SqrtImpact, Field(discriminator="model")] | None = None
    sanity: SanitySpec | None = None  # bounds of this asset's prices and quantities (default: ingest.sanity)
    # venue books of this asset read besides the index constituents (venue:BASE/QUOTE): watched by the alerts
    # (venue_divergence) and moved in cascades, not part of the index. Ticks of any other book are not input.
    books: list[str] = Field(default_factory=list)

    @field_validator("haircut")
    @classmethod
    def _haircut_brackets(cls, v: list[Bracket]) -> list[Bracket]:
        return _check_brackets(v)


class MarkSpec(_Frozen):
    method: Literal["median3", "index"] = "median3"
    basis_window_s: PositiveFloat = 1800.0
    source: str | None = Field(default=None, description="venue:INSTRUMENT book of the perpetual")
    funding_interval_s: PositiveFloat = 28_800.0


class InstrumentSpec(_Frozen):
    underlying: str
    maintenance: Annotated[list[Bracket], Field(min_length=1)]
    mark: MarkSpec = MarkSpec()

    @field_validator("maintenance")
    @classmethod
    def _maintenance_brackets(cls, v: list[Bracket]) -> list[Bracket]:
        return _check_brackets(v)


class BorrowSpec(_Frozen):
    maintenance_rate: Rate


class PartialSpec(_Frozen):
    # a liquidatable account with more than `above_usd` of positions loses `fraction` of every position and of its
    # non-settlement collateral in a cascade round (the proceeds and realised PnL become settlement cash), and is
    # checked again the next round; at or below it, or bankrupt, it is closed in full (Hyperliquid: 20% above
    # $100k of notional, then a cool-down — here, one round)
    fraction: Annotated[float, Field(strict=True, gt=0, lt=1, allow_inf_nan=False)]
    above_usd: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


class LiquidationSpec(_Frozen):
    venue: str
    fee_rate: Rate = 0.0
    # null: a liquidatable account is closed in full (every position and every non-settlement collateral asset)
    partial: PartialSpec | None = None
    # USD in the venue's insurance fund when a cascade starts: liquidation fees go in, the deficits of accounts
    # that end below zero come out, what it cannot cover would be auto-deleveraged (cascade `insurance_fund`);
    # null: not accounted
    insurance_fund: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)] | None = None
    # how the venue ranks positions for auto-deleveraging (the ADL-risk rank of `health --positions`)
    adl: Literal["binance", "hyperliquid"] = "binance"
    # with an insurance fund: execute auto-deleveraging in the cascade (what the fund cannot cover is taken over by
    # the opposite positions highest in the `adl` queue, off the books); false: only accounted (`adl_notional_usd`)
    auto_deleverage: bool = False

    def partial_step(self) -> tuple[float, float] | None:
        """(fraction, above USD) of partial liquidation for the cascade kernels; None: closed in full."""
        return None if self.partial is None else (self.partial.fraction, self.partial.above_usd)


class StressSpec(_Frozen):
    scenarios: Annotated[dict[str, dict[str, Number]], Field(min_length=1)]
    severities: Annotated[list[Severity], Field(min_length=1)]
    max_rounds: Annotated[int, Field(strict=True, ge=1, le=10_000)] = 50
    primary: str | None = None

    @field_validator("severities")
    @classmethod
    def _ascending(cls, v: list[float]) -> list[float]:
        for i in range(1, len(v)):
            if v[i] <= v[i - 1]:
                raise ValueError(f"severities must be strictly ascending: {v[i]} at [{i}] is not above {v[i - 1]}")
        return v

    @property
    def primary_scenario(self) -> str:
        return self.primary or next(iter(self.scenarios))


class SanitySpec(_Frozen):
    """Bounds outside which a number is a broken feed, not market data (dead-lettered `out_of_bounds`): quoted
    prices (bid, ask, last, reference rates, entry prices) of a book or reference of the asset, and quantities of
    it held, borrowed or (for an instrument's underlying) in a position."""

    min_price: PositiveFloat = 1e-9
    max_price: PositiveFloat = 1e9
    max_qty: PositiveFloat = 1e12


class IngestSpec(_Frozen):
    """How input records are admitted (SPEC §1); every rejection is a dead letter with a reason."""

    out_of_order_ms: Annotated[int, Field(strict=True, ge=0)] = 1_000
    # a tick or reference this far ahead of the market's event time is dead-lettered (`ahead_of_stream`): one
    # record dated a day ahead would otherwise make every later record of its key out of order. A gap in the whole
    # stream is not an error: once records of `jump_keys` distinct keys in a row are all that far ahead, the
    # market's event time jumps with them.
    max_ahead_ms: Annotated[int, Field(strict=True, gt=0)] = 300_000
    jump_keys: Annotated[int, Field(strict=True, ge=2, le=100)] = 3
    # ticks of a book the config does not name: dead-lettered (default) or ignored (counted, not applied); never
    # part of an index or an alert
    unknown_sources: Literal["deadletter", "ignore"] = "deadletter"
    min_ts: Annotated[int, Field(strict=True, ge=0)] = 0  # event times (ms) outside min_ts..max_ts are bad_ts
    max_ts: Annotated[int, Field(strict=True, gt=0)] = 4_102_444_800_000  # 2100-01-01
    sanity: SanitySpec = SanitySpec()                         # default bounds; `assets.X.sanity` overrides


Seconds = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


class Timing(_Frozen):
    """When an episode opens and closes, in event time (as Prometheus' `for` and `keep_firing_for`): it fires
    once the signal has been over its warning level for `for_s` without a break, and resolves once it has been
    under the clear level for `keep_firing_for_s` without a break (a signal that comes back within that time
    continues the episode: no re-fire). 0 and 0: fire and resolve at the first reading."""

    for_s: Seconds = 0.0
    keep_firing_for_s: Seconds = 0.0


class Levels(Timing):
    """Warning and critical thresholds of one alert signal (higher is worse), and its timing."""

    warning: PositiveFloat
    critical: PositiveFloat


class MarketLevels(Levels):
    """depeg, venue_divergence: read at every evaluation, where one bad tick would open an episode."""

    for_s: Seconds = 30.0
    keep_firing_for_s: Seconds = 300.0


class StaleLevels(Levels):
    """stale_source: fires at its age level at once (the age is its own duration), keeps firing 5 minutes."""

    keep_firing_for_s: Seconds = 300.0


class MarginClusterAlert(Timing):
    health_below: Annotated[float, Field(strict=True, gt=1, allow_inf_nan=False)] = 1.2
    notional_usd: Levels = Levels(warning=5e7, critical=2e8)


class ConcentrationAlert(Levels):
    """Share of one asset in the collateral whose value the venue depends on: the settlement asset and the
    assets listed in `cash` are left out of both the share and the total (a venue whose collateral is all its
    settlement asset is not concentrated)."""

    cash: list[str] = Field(default_factory=list)


class CascadeRiskAlert(Timing):
    """How close the accounts are to a cascade. The critical severity of the primary stress scenario is the
    smallest shock (scanned on `grid`, then bisected) whose cascade liquidates at least `min_notional_usd` and
    runs away, or amplifies past `amplification_limit`, or liquidates at least `share_limit` of all accounts'
    notional (positions and collateral) — so the signal holds through a crash, when most of what a shock
    liquidates is liquidatable already and amplification falls towards 1. The alert fires when it falls to
    `critical_severity.warning` / `.critical` (lower is worse)."""

    critical_severity: Levels = Levels(warning=0.04, critical=0.02)
    amplification_limit: Annotated[float, Field(strict=True, gt=1, allow_inf_nan=False)] = 2.0
    share_limit: Annotated[float, Field(strict=True, gt=0, le=1, allow_inf_nan=False)] = 0.25
    min_notional_usd: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)] = 1e8
    grid: Annotated[list[Severity], Field(min_length=1)] = [0.01, 0.02, 0.03, 0.04, 0.05]


class Webhook(_Frozen):
    name: Annotated[str, Field(min_length=1)]
    url: Annotated[str, Field(pattern=r"^https?://")]
    secret_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class AlertsSpec(_Frozen):
    """Thresholds and timing per alert type (SPEC §6). An episode resolves when its value falls below warning ×
    clear_ratio (hysteresis: a value hovering at the threshold does not flap) and stays there for the kind's
    `keep_firing_for_s`. The market kinds, read at every evaluation, wait `for_s` before firing; the kinds the
    leader computes from its cascades (every minute) fire and resolve at once by default, because a new leader
    takes over their open episodes from the alerts topic but not a pending or clearing timer."""

    clear_ratio: Annotated[float, Field(strict=True, gt=0, le=1)] = 0.8
    # |index / reference value − 1|
    depeg: MarketLevels = MarketLevels(warning=0.02, critical=0.05)
    # |book / the nearer of (the other books' median, the redemption value) − 1|
    venue_divergence: MarketLevels = MarketLevels(warning=0.03, critical=0.10)
    # seconds of event time without a quote (a source's own freshness limit, if longer, is its warning level)
    stale_source: StaleLevels = StaleLevels(warning=30, critical=120)
    margin_cluster: MarginClusterAlert = MarginClusterAlert()
    liquidations: Levels = Levels(warning=1e6, critical=5e7)             # liquidatable notional now, USD
    cascade_risk: CascadeRiskAlert = CascadeRiskAlert()
    # share of the non-cash collateral value
    collateral_concentration: ConcentrationAlert = ConcentrationAlert(warning=0.4, critical=0.6)
    # with liquidation.insurance_fund: the smallest move of the primary stress scenario whose cascade exhausts the
    # fund (insurance_fund), and per instrument the one at which auto-deleveraging starts on it (adl_risk), among
    # the moves the leader's cascades ran (the cascade_risk grid and stress.severities); lower is worse. The
    # tested moves are few, so the signal jumps between them as the book changes: an episode goes on while it
    # comes back within 15 min (on oct-2025 it otherwise resolved and fired again 6 times in 2 hours)
    insurance_fund: Levels = Levels(warning=0.10, critical=0.05, keep_firing_for_s=900)
    adl_risk: Levels = Levels(warning=0.10, critical=0.05, keep_firing_for_s=900)
    webhooks: list[Webhook] = Field(default_factory=list)


class ScheduleSpec(_Frozen):
    """Event time between evaluations (liqwatch.core.schedule): every worker and the replay evaluate on the same
    boundaries. Part of the config (and its config_id) because the intervals change the alerts."""

    evaluate_every_ms: Annotated[int, Field(strict=True, ge=1)] = 10_000   # shard health, market alerts
    severity_every_ms: Annotated[int, Field(strict=True, ge=1)] = 60_000   # liquidation severities
    cascade_every_ms: Annotated[int, Field(strict=True, ge=1)] = 60_000    # stress cascades, the alerts on them


class LiqmapSpec(_Frozen):
    """The liquidation map the workers export (`liqwatch_liquidation_map_usd`, at each severity boundary): levels
    from −range to +range of each underlying's prices, `step` apart; `assets` (default: every underlying of an
    instrument) are the ones mapped."""

    range: Annotated[float, Field(strict=True, gt=0, lt=1, allow_inf_nan=False)] = 0.2
    step: Annotated[float, Field(strict=True, gt=0, lt=1, allow_inf_nan=False)] = 0.02
    assets: list[str] | None = None

    def levels(self) -> list[float]:
        """The factors of the levels, ascending, 1 (the current prices) among them."""
        n = int(round(self.range / self.step))
        return [1.0 + self.step * k for k in range(-n, n + 1)]


class KafkaSpec(_Frozen):
    """How to reach Kafka (README "Production Kafka"): not part of the config_id (where the events come from does
    not change the alerts). The password is never in the file: `password_env` names the environment variable
    that holds it. Relative file paths are relative to the config file."""

    bootstrap: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] | None = None
    username: Annotated[str, Field(min_length=1)] | None = None
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "LIQWATCH_KAFKA_PASSWORD"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("bootstrap")
    @classmethod
    def _servers(cls, v: str | None) -> str | None:
        for server in (v or "").split(",") if v is not None else ():
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("expected HOST:PORT[,HOST:PORT] with a port 1-65535")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValueError("password: never in the file; put it in an environment variable and name it in "
                             "password_env (default LIQWATCH_KAFKA_PASSWORD)")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "KafkaSpec":
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (self.sasl_mechanism is None or self.username is None):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism and username")
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError("sasl_mechanism needs security_protocol SASL_SSL or SASL_PLAINTEXT")
        if not self.security_protocol.endswith("SSL") and any((self.ca_file, self.cert_file, self.key_file)):
            raise ValueError("ca_file/cert_file/key_file need security_protocol SSL or SASL_SSL")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def relative_to(self, base: Path) -> "KafkaSpec":
        """The file paths made absolute against `base` (the config file's directory)."""
        files = {k: base / v for k in ("ca_file", "cert_file", "key_file")
                 if (v := getattr(self, k)) is not None and not v.is_absolute()}
        return self.model_copy(update=files) if files else self


class Config(_Frozen):
    settlement: str = "USDT"
    assets: Annotated[dict[str, AssetSpec], Field(min_length=1)]
    instruments: dict[str, InstrumentSpec] = Field(default_factory=dict)
    borrow: dict[str, BorrowSpec] = Field(default_factory=dict)
    liquidation: LiquidationSpec
    stress: StressSpec
    ingest: IngestSpec = IngestSpec()
    alerts: AlertsSpec = AlertsSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    liqmap: LiqmapSpec = LiqmapSpec()
    kafka: KafkaSpec = KafkaSpec()

    def liqmap_assets(self) -> list[str]:
        """The underlyings the liquidation map covers."""
        if self.liqmap.assets is not None:
            return list(self.liqmap.assets)
        return list(dict.fromkeys(ins.underlying for ins in self.instruments.values()))

    def with_schedule(self, **intervals: int | None) -> "Config":
        """This config with some schedule intervals replaced (CLI overrides): a new config, a new config_id."""
        given = {k: v for k, v in intervals.items() if v is not None}
        if not given:
            return self
        return parse_config({**self.model_dump(mode="json", by_alias=True),
                             "schedule": {**self.schedule.model_dump(), **given}}, "config")

    @property
    def config_id(self) -> str:
        """Short hash of the validated config: stamps alerts and reports so a number can be traced to its config."""
        canon = json.dumps(self.model_dump(mode="json", by_alias=True, exclude={"kafka"}), sort_keys=True,
                           separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def is_known_asset(self, asset: str) -> bool:
        return asset in self.assets or asset == self.settlement or asset in USD_LIKE

    def sanity(self, asset: str) -> SanitySpec:
        spec = self.assets.get(asset)
        return spec.sanity if spec is not None and spec.sanity is not None else self.ingest.sanity

    def source_max_age_ms(self, ix: IndexSpec, c: Constituent) -> int:
        if c.max_age_ms is not None:
            return c.max_age_ms
        return ix.redemption_max_age_ms if c.is_redemption else ix.max_age_ms

    def source_quote(self, c: Constituent) -> str | None:
        """The asset a constituent's price is quoted in: a spot book's QUOTE, a redemption's `in`, a derivative's
        settlement asset."""
        if c.is_redemption:
            return c.in_
        return self.settlement if c.is_derivative else c.quote

    def mark_source(self, instrument: str) -> str:
        spec = self.instruments[instrument].mark.source
        return spec or f"{self.liquidation.venue}:{instrument}"

    def asset_dependencies(self, asset: str) -> list[str]:
        """Assets whose index this asset's index reads (quote assets, redemption `in` assets)."""
        spec = self.assets.get(asset)
        if spec is None or spec.index is None:
            return []
        deps = []
        for c in spec.index.constituents:
            dep = self.source_quote(c)
            if dep is not None and dep not in deps and (dep in self.assets and self.assets[dep].index is not None):
                deps.append(dep)
        return deps

    def evaluation_order(self) -> list[str]:
        """Every priced asset, each after the assets its index depends on (validated acyclic at load).
        Assets priced at 1 (no index) come first: any source may be quoted in them."""
        order: list[str] = []
        seen: set[str] = set()
        for a in (*self.assets, self.settlement, *USD_LIKE):
            spec = self.assets.get(a)
            if (spec is None or spec.index is None) and a not in seen:
                seen.add(a)
                order.append(a)

        def visit(a: str) -> None:
            if a in seen:
                return
            seen.add(a)
            for d in self.asset_dependencies(a):
                visit(d)
            order.append(a)

        for a in self.assets:
            visit(a)
        return order


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    prev = None
    for part in loc:
        # pydantic puts the discriminator tag of a union into the location; users never wrote it
        if prev in ("impact",) and part in ("linear", "sqrt"):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
        prev = part
    return out


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (not part of the config schema; check the spelling)"
    if kind == "missing":
        return "required"
    if kind in ("float_type", "int_type"):
        got = err.get("input")
        what = "a number" if kind == "float_type" else "a whole number"
        if isinstance(got, bool):
            return f"must be {what}, not a boolean (got {got!r})"
        if isinstance(got, str):
            try:
                float(got)
            except ValueError:
                return f"must be {what} (got {got!r})"
            return (f"must be {what}, not text (got {got!r}: YAML reads 5e7 as text; write 5.0e+7, or leave out "
                    "the quotes)")
        return f"must be {what} (got {got!r})"
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if kind in ("greater_than", "greater_than_equal", "less_than_equal", "less_than"):
        ctx = err.get("ctx", {})
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values())) if ctx else ""
        return f"must be {op} {bound} (got {err.get('input')!r})"
    return f"{msg} (got {err.get('input')!r})" if "input" in err and not isinstance(err["input"], dict) else msg


def _semantic_problems(cfg: Config) -> list[str]:
    p: list[str] = []
    known = cfg.is_known_asset
    if cfg.settlement not in cfg.assets and cfg.settlement not in USD_LIKE:
        p.append(f"settlement: unknown asset '{cfg.settlement}' (not under assets, nor one of {', '.join(USD_LIKE)})")
    for name, spec in cfg.assets.items():
        if spec.index is None and name != cfg.settlement and name not in USD_LIKE:
            p.append(f"assets.{name}.index: required (only the settlement asset and USD, USDT, USDC may have none)")
        if spec.index is None:
            continue
        ix = spec.index
        if ix.floor is not None and ix.cap is not None and ix.floor > ix.cap:
            p.append(f"assets.{name}.index.floor: {ix.floor} is above cap {ix.cap}")
        for i, src in enumerate(spec.books):
            m = _SOURCE_RE.match(src)
            if not m or "/" not in src or src.startswith("redemption:"):
                p.append(f"assets.{name}.books[{i}]: '{src}' is not a spot book venue:BASE/QUOTE")
                continue
            base, quote = src.split(":", 1)[1].split("/", 1)
            if base != name:
                p.append(f"assets.{name}.books[{i}]: '{src}' prices {base}, not {name}")
            if not known(quote):
                p.append(f"assets.{name}.books[{i}]: unknown quote asset '{quote}'")
            if any(c.source == src for c in ix.constituents):
                p.append(f"assets.{name}.books[{i}]: '{src}' is already an index constituent")
        seen: set[str] = set()
        for i, c in enumerate(ix.constituents):
            at = f"assets.{name}.index.constituents[{i}]"
            if c.source in seen:
                p.append(f"{at}.source: '{c.source}' listed twice")
            seen.add(c.source)
            if c.is_redemption:
                if c.base != name:
                    p.append(f"{at}.source: '{c.source}' redeems {c.base}, not {name}")
                if c.in_ is None:
                    p.append(f"{at}.in: required for a redemption source (the asset one {name} redeems into)")
                elif not known(c.in_):
                    p.append(f"{at}.in: unknown asset '{c.in_}'")
            elif c.is_derivative:
                instrument = c.source.split(":", 1)[1]
                if c.in_ is not None:
                    p.append(f"{at}.in: only redemption sources take 'in'")
                if instrument not in cfg.instruments:
                    p.append(f"{at}.source: '{c.source}' is neither a spot book venue:BASE/QUOTE nor a book of a "
                             f"configured instrument (instruments.{instrument})")
                elif cfg.instruments[instrument].underlying != name:
                    p.append(f"{at}.source: '{c.source}' prices {cfg.instruments[instrument].underlying}, not {name}")
            else:
                if c.in_ is not None:
                    p.append(f"{at}.in: only redemption sources take 'in'")
                if c.base != name:
                    p.append(f"{at}.source: '{c.source}' prices {c.base}, not {name}")
                if not known(c.quote):
                    p.append(f"{at}.source: unknown quote asset '{c.quote}'")
    for name, ins in cfg.instruments.items():
        if ins.underlying not in cfg.assets or cfg.assets[ins.underlying].index is None:
            p.append(f"instruments.{name}.underlying: unknown asset '{ins.underlying}'")
        if ins.mark.source is not None and (":" not in ins.mark.source or "/" in ins.mark.source):
            p.append(f"instruments.{name}.mark.source: '{ins.mark.source}' is not of the form venue:{name}")
    if cfg.liqmap.step > cfg.liqmap.range:
        p.append(f"liqmap.step: {cfg.liqmap.step:g} is larger than liqmap.range {cfg.liqmap.range:g}")
    for i, a in enumerate(cfg.liqmap.assets or ()):
        if a not in cfg.assets or cfg.assets[a].index is None:
            p.append(f"liqmap.assets[{i}]: '{a}' is not an asset with an index")
    for name in cfg.borrow:
        if not known(name):
            p.append(f"borrow.{name}: unknown asset '{name}'")
    for sname, moves in cfg.stress.scenarios.items():
        for asset in moves:
            if asset not in cfg.assets:
                p.append(f"stress.scenarios.{sname}.{asset}: unknown asset '{asset}'")
    for i, asset in enumerate(cfg.alerts.collateral_concentration.cash):
        if not known(asset):
            p.append(f"alerts.collateral_concentration.cash[{i}]: unknown asset '{asset}'")
    for kind in ("depeg", "venue_divergence", "stale_source", "liquidations", "collateral_concentration"):
        lv = getattr(cfg.alerts, kind)
        if lv.critical < lv.warning:
            p.append(f"alerts.{kind}.critical: {lv.critical} is below warning {lv.warning}")
    cs = cfg.alerts.cascade_risk.critical_severity
    if cs.critical > cs.warning:
        p.append(f"alerts.cascade_risk.critical_severity.critical: {cs.critical} is above warning {cs.warning} "
                 "(a smaller critical severity is worse)")
    if cfg.stress.primary is not None and cfg.stress.primary not in cfg.stress.scenarios:
        p.append(f"stress.primary: unknown scenario '{cfg.stress.primary}'")
    p.extend(_cycle_problems(cfg))
    p.extend(_consistency_problems(cfg))
    return p


def _consistency_problems(cfg: Config) -> list[str]:
    """Values each valid alone that cannot work together: a liquidation venue no book is read from, a stress
    move past -100%, inverted bounds, webhooks that cannot be told apart."""
    p: list[str] = []
    venues = set()
    for spec in cfg.assets.values():
        venues.update(c.venue for c in (spec.index.constituents if spec.index else ()) if not c.is_redemption)
        venues.update(b.split(":", 1)[0] for b in getattr(spec, "books", ()) if ":" in b)
    venues.update(ins.mark.source.split(":", 1)[0] for ins in cfg.instruments.values()
                  if ins.mark.source and ":" in ins.mark.source)
    if cfg.liquidation.venue not in venues:
        p.append(f"liquidation.venue: unknown venue '{cfg.liquidation.venue}': no index constituent, book or mark "
                 f"source names it, so a cascade would move no price (venues: {', '.join(sorted(venues))})")
    top = max(cfg.stress.severities)
    for sname, moves in cfg.stress.scenarios.items():
        if not moves:
            p.append(f"stress.scenarios.{sname}: moves no asset (give at least one asset: direction)")
        for asset, d in moves.items():
            if d < 0 and -d * top >= 1:
                p.append(f"stress.scenarios.{sname}.{asset}: direction {d:g} × the largest severity {top:g} moves the "
                         f"price by {d * top:.0%}, to zero or below (need |direction| × severity < 1)")
    grid = cfg.alerts.cascade_risk.grid
    for i in range(1, len(grid)):
        if grid[i] <= grid[i - 1]:
            p.append(f"alerts.cascade_risk.grid: must be strictly ascending: {grid[i]} at [{i}] is not above "
                     f"{grid[i - 1]}")
            break
    primary = cfg.stress.primary_scenario
    for asset, d in cfg.stress.scenarios.get(primary, {}).items():
        if d < 0 and -d * max(grid) >= 1:
            p.append(f"alerts.cascade_risk.grid: severity {max(grid):g} × direction {d:g} of "
                     f"stress.scenarios.{primary}.{asset} moves the price by {d * max(grid):.0%}, to zero or below")
    lv = cfg.alerts.margin_cluster.notional_usd
    if lv.critical < lv.warning:
        p.append(f"alerts.margin_cluster.notional_usd.critical: {lv.critical} is below warning {lv.warning}")
    names: dict[str, int] = {}
    for i, wh in enumerate(cfg.alerts.webhooks):
        if wh.name in names:
            p.append(f"alerts.webhooks[{i}].name: '{wh.name}' is also the name of alerts.webhooks[{names[wh.name]}]")
        names.setdefault(wh.name, i)
        try:
            host = urlsplit(wh.url).hostname
        except ValueError:
            host = None
        if not host:
            p.append(f"alerts.webhooks[{i}].url: '{wh.url}' names no host (http(s)://HOST[:PORT]/PATH)")
    ingest = cfg.ingest
    if ingest.min_ts >= ingest.max_ts:
        p.append(f"ingest.min_ts: {ingest.min_ts} is not below max_ts {ingest.max_ts}")
    bounds = [("ingest.sanity", ingest.sanity)]
    bounds += [(f"assets.{a}.sanity", s.sanity) for a, s in cfg.assets.items() if getattr(s, "sanity", None)]
    for at, sanity in bounds:
        if sanity.min_price >= sanity.max_price:
            p.append(f"{at}.min_price: {sanity.min_price:g} is not below max_price {sanity.max_price:g}")
    return p


def _cycle_problems(cfg: Config) -> list[str]:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []
    problems: list[str] = []

    def visit(a: str) -> None:
        state[a] = 1
        stack.append(a)
        for d in cfg.asset_dependencies(a):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                problems.append(f"assets.{d}.index: dependency cycle {' -> '.join(cycle)}")
            elif d not in state:
                visit(d)
        stack.pop()
        state[a] = 2

    for a in cfg.assets:
        if a not in state:
            visit(a)
    return problems


def parse_config(data: Any, origin: str = "config") -> Config:
    """Validate a decoded YAML/JSON document; raise ConfigError listing every problem by field path."""
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping of settlement, assets, instruments, …"], origin)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError([f"{_path(err['loc'])}: {_message(err)}" for err in e.errors()], origin) from None
    problems = _semantic_problems(cfg)
    if problems:
        raise ConfigError(problems, origin)
    return cfg


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError([f"(file): cannot read {path}: {e.strerror}"], str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"(file): {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"],
                          str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError([f"(yaml, {where}): {getattr(e, 'problem', e)}"], str(path)) from None
    cfg = parse_config(data, str(path))
    kafka = cfg.kafka.relative_to(path.resolve().parent)
    return cfg if kafka is cfg.kafka else cfg.model_copy(update={"kafka": kafka})


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
