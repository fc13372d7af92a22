"""A corpus of poison records: every kind of bad input found so far, each line one record that must be rejected.

    lines = corpus(seed=7, per_kind=400)        # [(kind, raw bytes without newline), ...], >= 10,000 lines
    mixed = interleave(valid_lines, lines)      # poison spread through a valid stream, valid order kept

Every record is built against the oct-2025 configs (liqwatch/scenarios/oct-2025-*.yaml): it names real books,
assets and instruments where the point is another defect, so only that defect can reject it. No record of the
corpus is valid under those configs, so a run over valid + poison must give exactly the valid run's numbers, with
one dead letter (or ignored record) per poison line.
"""

from __future__ import annotations

import json
import random

DAY_MS = 86_400_000
BOOKS = ["binance:BTC/USDT", "okx:BTC/USDT", "binance:ETH/USDT", "binance:USDe/USDT", "binance:SOL/USDT"]
PERP = "BTCUSDT-PERP"


def _tick(rng: random.Random, ts: int, **over) -> dict:
    venue, symbol = rng.choice(BOOKS).split(":")
    mid = 100.0 + rng.random()
    return {"type": "tick", "venue": venue, "symbol": symbol, "ts": ts, "bid": mid - 0.01, "ask": mid + 0.01,
            **over}


def _account(rng: random.Random, ts: int, **over) -> dict:
    return {"type": "account", "account": f"fuzz-{rng.randrange(10**9)}", "ts": ts,
            "collateral": {"USDT": 1000.0}, "borrowed": {}, "positions": [], **over}


def _without(obj: dict, field: str) -> dict:
    return {k: v for k, v in obj.items() if k != field}


def _dump(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


def corpus(seed: int = 7, per_kind: int = 400, t0: int = 1_760_126_400_000, t1: int = 1_760_137_200_000
           ) -> list[tuple[str, bytes]]:
    """Poison records of every kind, `per_kind` of each, with event times inside [t0, t1] where a time is
    needed (so a record is not rejected merely for being outside a replay's window)."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []

    def ts() -> int:
        return rng.randrange(t0, t1)

    makers = {
        # bytes that are not UTF-8 inside an otherwise fine tick
        "invalid_utf8": lambda: _dump(_tick(rng, ts())).replace(b'"venue": "', b'"venue": "\xff\xfe', 1),
        "invalid_utf8_account": lambda: _dump(_account(rng, ts())).replace(b'"fuzz-', b'"\xc3\x28fuzz-', 1),
        # event times no int64 holds, or far outside any event time
        "ts_overflow_tick": lambda: _dump(_tick(rng, 2**63 + rng.randrange(10**6))),
        "ts_overflow_account": lambda: _dump(_account(rng, 2**63 + rng.randrange(10**6))),
        "ts_overflow_reference": lambda: _dump({"type": "reference", "asset": "USDe", "ts": 2**64 + 5,
                                                "in": "USD", "rate": 1.0}),
        "ts_huge": lambda: _dump(_tick(rng, 10**30)),
        "ts_negative": lambda: _dump(_tick(rng, -rng.randrange(1, 10**12))),
        "ts_float": lambda: _dump(_tick(rng, ts() + 0.5)),
        "ts_string": lambda: _dump(_tick(rng, str(ts()))),
        "next_funding_overflow": lambda: _dump(_tick(rng, ts(), venue="binance", symbol=PERP, funding_rate=0.0001,
                                                     next_funding_ts=2**63)),
        # nesting that breaks recursive parsers
        "deep_nesting": lambda: b"[" * 5000 + b"]" * 5000,
        "deep_nesting_field": lambda: _dump(_tick(rng, ts())).replace(b'"bid": ', b'"bid": ' + b"[" * 5000 +
                                                                       b"]" * 5000 + b", \"x\": ", 1),
        "deep_object": lambda: b'{"a":' * 3000 + b"1" + b"}" * 3000,
        # numbers that are not prices or quantities
        "price_1e308": lambda: _dump({**_tick(rng, ts()), "venue": "binance", "symbol": "USDe/USDT",
                                      "bid": 1e308, "ask": 1e308}),
        "price_overflow": lambda: _dump(_tick(rng, ts())).replace(b'"ask": ', b'"ask": 1e400, "_": ', 1),
        "price_nan": lambda: _dump(_tick(rng, ts(), bid=float("nan"))),
        "price_inf": lambda: _dump(_tick(rng, ts(), ask=float("inf"))),
        "price_zero": lambda: _dump(_tick(rng, ts(), bid=0.0)),
        "price_tiny": lambda: _dump(_tick(rng, ts(), bid=1e-300, ask=1e-300)),
        "crossed": lambda: _dump(_tick(rng, ts(), bid=200.0, ask=100.0)),
        "qty_1e308": lambda: _dump(_account(rng, ts(), collateral={"USDe": 1e308})),
        "position_1e308": lambda: _dump(_account(rng, ts(), positions=[{"instrument": PERP, "qty": 1e308,
                                                                         "entry": 100.0}])),
        "entry_1e300": lambda: _dump(_account(rng, ts(), positions=[{"instrument": PERP, "qty": 1.0,
                                                                      "entry": 1e300}])),
        "qty_negative": lambda: _dump(_account(rng, ts(), collateral={"USDT": -5.0})),
        "rate_1e308": lambda: _dump({"type": "reference", "asset": "USDe", "ts": ts(), "in": "USD",
                                     "rate": 1e308}),
        "funding_absurd": lambda: _dump(_tick(rng, ts(), venue="binance", symbol=PERP, funding_rate=1e6,
                                              next_funding_ts=ts())),
        # sources and names the config does not know
        "unknown_venue": lambda: _dump(_tick(rng, ts(), venue=f"fake{rng.randrange(3)}", symbol="BTC/USDT",
                                             bid=80_000.0, ask=80_001.0)),
        "unknown_symbol": lambda: _dump(_tick(rng, ts(), venue="binance", symbol="DOGE/USDT")),
        "unknown_instrument": lambda: _dump(_account(rng, ts(), positions=[{"instrument": "XRP-PERP", "qty": 1.0,
                                                                            "entry": 1.0}])),
        "unknown_collateral": lambda: _dump(_account(rng, ts(), collateral={"DOGE": 1.0})),
        "unknown_reference": lambda: _dump({"type": "reference", "asset": "DOGE", "ts": ts(), "in": "USD",
                                            "rate": 1.0}),
        "wrong_redemption": lambda: _dump({"type": "reference", "asset": "WBETH", "ts": ts(), "in": "BTC",
                                           "rate": 1.0}),
        # shapes
        "not_json": lambda: b"garbage " + str(rng.random()).encode(),
        "truncated": lambda: _dump(_tick(rng, ts()))[: rng.randrange(5, 40)],
        "not_object": lambda: rng.choice([b"[]", b"null", b"42", b'"tick"', b"true", b"[1,2,3]"]),
        "empty_object": lambda: b"{}",
        "unknown_type": lambda: _dump({**_tick(rng, ts()), "type": rng.choice(["trade", "alert", "mark", ""])}),
        "missing_field": lambda: _dump(_without(_tick(rng, ts()), rng.choice(["bid", "ask", "venue", "ts"]))),
        "wrong_type": lambda: _dump(_tick(rng, ts(), bid="1.0")),
        "positions_dict": lambda: _dump(_account(rng, ts(), positions={"instrument": PERP})),
        "empty_venue": lambda: _dump(_tick(rng, ts(), venue="")),
        "empty_account": lambda: _dump(_account(rng, ts(), account="")),
        "nul_bytes": lambda: b"\x00" * rng.randrange(1, 64),
        "escape_sequences": lambda: b"\x1b[31m\x1b]0;pwned\x07 not an event",
        "lone_surrogate": lambda: _dump(_tick(rng, ts())).replace(b'"venue": "', b'"venue": "\\ud800', 1),
        "huge_string": lambda: _dump(_tick(rng, ts(), venue="v" * 100_000)),
        "bom": lambda: b"\xef\xbb\xbf" + _dump(_tick(rng, ts(), venue="fakebom")),
        "duplicate_type": lambda: b'{"type":"tick","type":"account"}',
    }
    for kind, make in makers.items():
        for _ in range(per_kind):
            raw = make()
            assert b"\n" not in raw and b"\r" not in raw, kind
            out.append((kind, raw))
    return out


def ahead_of_stream(valid_ts: list[int], seed: int = 11, n: int = 50) -> list[tuple[int, bytes]]:
    """Ticks of real books dated a day ahead, each meant to sit right after the valid record at the position it
    is paired with: (position, raw). One key only, so they never look like a gap in the whole stream."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        i = rng.randrange(len(valid_ts) // 10, len(valid_ts))
        raw = _dump({"type": "tick", "venue": "binance", "symbol": "BTC/USDT", "ts": valid_ts[i] + DAY_MS,
                     "bid": 60_000.0, "ask": 60_001.0})
        out.append((i, raw))
    return out


def interleave(valid: list[bytes], poison: list[bytes], seed: int = 3) -> list[bytes]:
    """Poison spread at random positions through the valid lines; the valid lines keep their order."""
    rng = random.Random(seed)
    slots: dict[int, list[bytes]] = {}
    for raw in poison:
        slots.setdefault(rng.randrange(len(valid) + 1), []).append(raw)
    out = []
    for i, line in enumerate(valid):
        out.extend(slots.get(i, []))
        out.append(line)
    out.extend(slots.get(len(valid), []))
    return out
