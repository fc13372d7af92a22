"""Input events (SPEC §1): one decoder for JSONL files and Kafka messages.

    event = decode(b'{"type":"tick","venue":"binance","symbol":"BTC/USDT","ts":1760130000000,"bid":1,"ask":2}')
    # -> Tick(venue='binance', symbol='BTC/USDT', ts=1760130000000, bid=1.0, ask=2.0, ...)

Anything wrong raises `BadEvent(kind, reason)`: `kind` is a short stable class for metrics
(`invalid_json`, `missing_field`, `bad_field`, `bad_number`, `crossed_book`, `unknown_asset`,
`unknown_instrument`, `unknown_symbol`, `out_of_order`, `unknown_type`), `reason` names the field:
`bid: must be a finite number > 0 (got -1.0)`. Checks that need the config (known assets, tolerances) live in
`liqwatch.core.state`; this module checks the shape and the numbers.

Extensions of the spec: a tick of a perpetual may carry `funding_rate` and `next_funding_ts` (ms), used by the
`median3` mark.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Union

import msgspec


class BadEvent(ValueError):
    def __init__(self, kind: str, reason: str):
        self.kind = kind
        self.reason = reason
        super().__init__(reason)


class Tick(msgspec.Struct, tag_field="type", tag="tick", kw_only=True, gc=False):  # scalars only: no cycles to track
    venue: str
    symbol: str
    ts: int
    bid: float
    ask: float
    last: float | None = None
    funding_rate: float | None = None
    next_funding_ts: int | None = None

    @property
    def key(self) -> str:
        return f"{self.venue}:{self.symbol}"


class Reference(msgspec.Struct, tag_field="type", tag="reference", kw_only=True, gc=False):
    asset: str
    ts: int
    in_: str = msgspec.field(name="in")
    rate: float

    @property
    def key(self) -> str:
        return self.asset


class Position(msgspec.Struct, kw_only=True):
    instrument: str
    qty: float
    entry: float
    # isolated margin (settlement asset): the position has its own margin and is liquidated alone; null: cross
    isolated_margin: float | None = None


class Account(msgspec.Struct, tag_field="type", tag="account", kw_only=True):
    account: str
    ts: int
    collateral: dict[str, float] = {}
    borrowed: dict[str, float] = {}
    positions: list[Position] = []
    closed: bool = False

    @property
    def key(self) -> str:
        return self.account


Event = Union[Tick, Reference, Account]
OUTPUT_TYPES = ("alert", "mark", "health", "cascade")

_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()

_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`(?: - at `\$(?P<at>[^`]*)`)?")
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<at>[^`]*)`)?$")


def _field_path(at: str | None, leaf: str | None = None) -> str:
    path = (at or "").lstrip(".")
    if leaf:
        path = f"{path}.{leaf}" if path else leaf
    return path or "(event)"


def _translate(err: msgspec.DecodeError, raw: bytes) -> BadEvent:
    text = str(err)
    if isinstance(err, msgspec.ValidationError):
        m = _MISSING.match(text)
        if m:
            return BadEvent("missing_field", f"{_field_path(m.group('at'), m.group('field'))}: required")
        m = _AT.match(text)
        msg, at = m.group("msg"), m.group("at")  # type: ignore[union-attr]
        if at == ".type" or "tag" in msg.lower():
            tag = _peek_type(raw)
            if tag in OUTPUT_TYPES:
                return BadEvent("unknown_type", f"type: '{tag}' is an output of liqwatch, not an input event")
            return BadEvent("unknown_type", f"type: must be one of tick, reference, account (got {tag!r})")
        if "out of range" in msg:
            return BadEvent("bad_number", f"{_field_path(at)}: must be a finite number (got a value out of range)")
        return BadEvent("bad_field", f"{_field_path(at)}: {msg[0].lower() + msg[1:]}")
    return BadEvent("invalid_json", f"(json): not valid JSON: {text}")


def _peek_type(raw: bytes):
    return peek(raw)[0]


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        need = ">= 0" if allow_zero else "> 0"
        raise BadEvent("bad_number", f"{name}: must be a finite number {need} (got {value!r})")


_INF = float("inf")
MAX_TS = (1 << 53) - 1  # ms; beyond this a time is not exact as a float (kernels) and not an event time anyway


def check(event: Event) -> Event:
    """Number and shape checks that need no config."""
    if type(event) is Tick and 0.0 < event.bid <= event.ask < _INF and event.last is None \
            and event.funding_rate is None and event.next_funding_ts is None and 0 <= event.ts <= MAX_TS \
            and event.venue and event.symbol:
        return event  # the common spot tick, checked in one expression (hot path of every worker)
    if isinstance(event, Tick):
        _positive("bid", event.bid)
        _positive("ask", event.ask)
        if event.bid > event.ask:
            raise BadEvent("crossed_book", f"bid: {event.bid!r} is above ask {event.ask!r} (crossed book)")
        if event.last is not None:
            _positive("last", event.last)
        if event.funding_rate is not None and not math.isfinite(event.funding_rate):
            raise BadEvent("bad_number", f"funding_rate: must be finite (got {event.funding_rate!r})")
        if event.funding_rate is not None and event.next_funding_ts is None:
            raise BadEvent("missing_field", "next_funding_ts: required with funding_rate")
        if event.next_funding_ts is not None and not 0 <= event.next_funding_ts <= MAX_TS:
            raise BadEvent("bad_number", f"next_funding_ts: must be milliseconds since the epoch "
                                         f"(got {event.next_funding_ts})")
        if not event.venue or not event.symbol:
            raise BadEvent("bad_field", f"{'venue' if not event.venue else 'symbol'}: must not be empty")
    elif isinstance(event, Reference):
        _positive("rate", event.rate)
    else:
        if not event.account:
            raise BadEvent("bad_field", "account: must not be empty")
        for asset, qty in event.collateral.items():
            _positive(f"collateral.{asset}", qty, allow_zero=True)
        for asset, qty in event.borrowed.items():
            _positive(f"borrowed.{asset}", qty, allow_zero=True)
        for i, p in enumerate(event.positions):
            if not math.isfinite(p.qty):
                raise BadEvent("bad_number", f"positions[{i}].qty: must be finite (got {p.qty!r})")
            _positive(f"positions[{i}].entry", p.entry)
            if p.isolated_margin is not None:
                _positive(f"positions[{i}].isolated_margin", p.isolated_margin, allow_zero=True)
    if not 0 <= event.ts <= MAX_TS:
        raise BadEvent("bad_ts", f"ts: must be milliseconds since the epoch, 0 to 2^53 (got {event.ts})")
    return event


def decode(raw: bytes | str) -> Event:
    """Decode and check one event; raise BadEvent naming the field. Nothing else ever escapes: a record that
    breaks the decoder in an unforeseen way (bad UTF-8, absurd nesting, a number out of every range) is still
    one bad record, not a stopped stream."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        event = _decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise _translate(e, raw) from None
    except UnicodeDecodeError as e:
        raise BadEvent("invalid_json", f"(json): not valid UTF-8 at byte {e.start}") from None
    except RecursionError:
        raise BadEvent("invalid_json", "(json): nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - whatever the decoder raises is a property of this record
        raise BadEvent("invalid_json", f"(json): {type(e).__name__}: {e}"[:200]) from None
    return check(event)


def peek(raw: bytes) -> tuple[str | None, int | None]:
    """(type, ts) of a record without judging the rest, for routing (`produce`, replay windows); (None, None)
    when it has neither. Never raises."""
    try:
        obj = msgspec.json.decode(raw)
    except Exception:  # noqa: BLE001 - unreadable: no type, no time
        return None, None
    if not isinstance(obj, dict):
        return None, None
    kind = obj.get("type")
    ts = obj.get("ts")
    return (kind if isinstance(kind, str) else None), (ts if type(ts) is int and 0 <= ts <= MAX_TS else None)


def number(x) -> float | None:
    """One number for JSON: a float, or None when it is missing or not finite."""
    return None if x is None or not math.isfinite(x) else float(x)


def finite(x):
    """`x` with every non-finite float (in dicts, lists, tuples) replaced by None: JSON has no NaN or Infinity."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def json_line(obj) -> str:
    """One JSON line of liqwatch output: a non-finite number is null (NaN and Infinity are not JSON)."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json.dumps(finite(obj), allow_nan=False)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)
