"""The tick scanner (liqwatch.kernels.ticks) reads what msgspec reads, bit for bit, or declines: numbers against
Python's `float()` (correctly rounded, like msgspec) on random and known-hard decimals; whole records against
the feed's msgspec decoder on random shapes of tick objects, valid and not."""

from __future__ import annotations

import json
import math
import random
import struct

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from liqwatch.core.columns import _columns, scan
from liqwatch.events import Event, Tick
from liqwatch.kernels.ticks import POW10_128, POW10_MIN, _leading_zeros, decimal_to_double, mul128

SLOTS = {"binance:BTC/USDT": 0, "okx:BTC-USDT-SWAP": 1, "binance:WBETH/ETH": 2, "a:b:c": 3}
DECODE = msgspec.json.Decoder(list[Event])


def bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def test_the_powers_of_ten_are_the_published_table():
    """Rows of Go's strconv detailedPowersOfTen (the table Eisel-Lemire's bounds are proven for)."""
    assert tuple(POW10_128[-348 - POW10_MIN]) == (0x1732C869CD60E453, 0xFA8FD5A0081C0288)
    assert tuple(POW10_128[43 - POW10_MIN]) == (0x6D9CCD05D0000000, 0xE596B7B0C643C719)  # 1e43, exact
    assert tuple(POW10_128[0 - POW10_MIN]) == (0, 1 << 63)


@settings(deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_the_128_bit_product(a, b):
    hi, lo = mul128(np.uint64(a), np.uint64(b))
    assert (int(hi) << 64) | int(lo) == a * b


@settings(deadline=None)
@given(st.integers(1, 2**64 - 1))
def test_leading_zeros(x):
    assert _leading_zeros(np.uint64(x)) == 64 - x.bit_length()


def parsed(text: str) -> tuple[float, bool]:
    """decimal_to_double of a JSON number's text (the scanner's split into significand and exponent)."""
    neg = text.startswith("-")
    body = text.lstrip("-").lower()
    mant, _, exp = body.partition("e")
    whole, _, frac = mant.partition(".")
    digits = (whole + frac).lstrip("0") or "0"
    w = int(digits)
    e10 = (int(exp) if exp else 0) - len(frac)
    assert w < 2**64
    return decimal_to_double(np.uint64(w), e10, neg, POW10_128)


HARD = ["9007199254740993", "9007199254740995", "2.2250738585072014e-308", "1.7976931348623157e308",
        "4.35679104e-322", "0.1", "0.30000000000000004", "1e23", "8.98846567431158e307", "5e-324", "1e-400",
        "2.4703282292062328e-324", "7.2057594037927933e16", "1.0000000000000001110", "1.0000000000000001111",
        "4e23", "2232389646077913.0", "2480130479628253.5", "123456789012345678", "9999999999999999999",
        "18014398509481985", "-0.0", "0", "1.5e308", "1e308"]


@pytest.mark.parametrize("text", HARD)
def test_known_hard_decimals_are_exact_or_declined(text):
    value, ok = parsed(text)
    if ok:
        assert bits(value) == bits(float(text)), text


def test_random_doubles_and_decimals_are_exact_and_almost_never_declined():
    rng = random.Random(7)
    texts = [repr(rng.uniform(1e-6, 1e6) * 10 ** rng.randint(-30, 30)) for _ in range(20_000)]
    texts += [repr(struct.unpack("<d", struct.pack("<q", rng.getrandbits(63)))[0]) for _ in range(20_000)]
    texts += [f"{rng.randint(1, 10**rng.randint(1, 19) - 1)}e{rng.randint(-345, 330)}" for _ in range(20_000)]
    texts += [str(rng.randint(2**53, 2**64 - 1)) for _ in range(10_000)]  # integers rounded to 53 bits
    texts += [str((rng.randint(2**52, 2**53 - 1) << 11) + 1024 + rng.choice([-1, 0, 1])) for _ in range(2_000)]
    texts = [t for t in texts if t not in ("inf", "nan") and "e" not in t.split("e")[-1]]
    declined = 0
    for t in texts:
        value, ok = parsed(t)
        if not ok:
            exact = float(t)
            if exact == 0.0 or math.isinf(exact) or abs(exact) < 2.2250738585072014e-308:
                continue  # underflow, subnormal or overflow: always left to the decoder
            declined += 1
            continue
        assert bits(value) == bits(float(t)), t
    assert declined <= 0.001 * len(texts)  # only the rare case too close to a halfway point to round from 128 bits


# -- whole records -----------------------------------------------------------------------------------------------
def number_text(draw, x: float, integer_ok: bool = True) -> str:
    form = draw(st.sampled_from(["repr", "exp", "int", "fixed"]))
    if form == "exp":
        return f"{x:.{draw(st.integers(0, 18))}e}"
    if form == "int" and integer_ok and abs(x) < 1e18:
        return str(int(x))
    if form == "fixed":
        return f"{x:.{draw(st.integers(0, 12))}f}"
    return repr(x)


@st.composite
def records(draw) -> bytes:
    """A tick object in many shapes: key order, spacing, optional fields absent/null/set, numbers written as
    integers or with exponents, and now and then something a tick may not have."""
    fields = {"type": '"tick"',
              "venue": json.dumps(draw(st.sampled_from(["binance", "okx", "a", "bïnance", "bin\\u0061nce", ""]))),
              "symbol": json.dumps(draw(st.sampled_from(["BTC/USDT", "BTC-USDT-SWAP", "b:c", "WBETH/ETH"]))),
              "ts": str(draw(st.sampled_from([0, 1760126402000, 2**53, 2**63 - 1, -5]))),
              "bid": number_text(draw, draw(st.floats(1e-9, 1e9))),
              "ask": number_text(draw, draw(st.floats(1e-9, 1e9)))}
    for k in ("last", "funding_rate", "next_funding_ts"):
        how = draw(st.sampled_from(["absent", "null", "set"]))
        if how == "null":
            fields[k] = "null"
        elif how == "set":
            fields[k] = (str(draw(st.integers(0, 2**63 - 1))) if k == "next_funding_ts"
                         else number_text(draw, draw(st.floats(-1.0, 1e6))))
    odd = draw(st.sampled_from([None] * 6 + ["unknown key", "repeated", "nested", "bool", "float ts", "no bid",
                                             "type ref", "big int", "trailing", "leading zero", "neg zero"]))
    items = list(fields.items())
    draw(st.randoms()).shuffle(items)
    if odd == "unknown key":
        items.append(("extra", "1"))
    elif odd == "repeated":
        items.append(("bid", "1.5"))
    elif odd == "nested":
        items.append(("last", '{"x": 1}'))
    elif odd == "bool":
        items.append(("funding_rate", "true"))
    elif odd == "float ts":
        items = [(k, "1760126402000.0" if k == "ts" else v) for k, v in items]
    elif odd == "no bid":
        items = [(k, v) for k, v in items if k != "bid"]
    elif odd == "type ref":
        items = [(k, '"reference"' if k == "type" else v) for k, v in items]
    elif odd == "big int":
        items = [(k, "123456789012345678901234" if k == "bid" else v) for k, v in items]
    elif odd == "leading zero":
        items = [(k, "0123.5" if k == "ask" else v) for k, v in items]
    elif odd == "neg zero":
        items = [(k, "-0" if k == "bid" else v) for k, v in items]
    sp = draw(st.sampled_from(["", " ", "\n  "]))
    text = "{" + sp + ("," + sp).join(f'"{k}"{sp}:{sp}{v}' for k, v in items) + sp + "}"
    if odd == "trailing":
        text += " x"
    return text.encode()


def decoded_columns(values: list[bytes]):
    """What the decoder path gives: the columns of the decoded batch, or None when the batch is not all ticks
    that decode."""
    try:
        events = DECODE.decode(b"[" + b",".join(values) + b"]")
    except msgspec.DecodeError:
        return None
    if len(events) != len(values) or any(type(e) is not Tick for e in events):
        return None
    return _columns(events, SLOTS)


@settings(max_examples=400, deadline=None)
@given(st.lists(records(), min_size=1, max_size=6))
def test_the_scanner_reads_what_the_decoder_reads_or_declines(values):
    got = scan(values, SLOTS)
    want = decoded_columns(values)
    if got is None:
        return  # declined: the decoder judges the batch
    assert want is not None, values  # never takes what the decoder refuses
    for name, a, b in zip(("slot", "ts", "bid", "ask", "last", "funding_rate", "next_funding_ts"), got, want):
        assert a.dtype == b.dtype, name
        if a.dtype.kind == "f":
            assert np.array_equal(a.view(np.int64), b.view(np.int64)), (name, a, b, values)
        else:
            assert np.array_equal(a, b), (name, a, b, values)


def test_plain_ticks_are_scanned_not_declined():
    """The common shape (the scenario's ticks, as `json.dumps` and msgspec write them) takes the fast path."""
    from liqwatch import scenarios

    ticks = [e for _, e in zip(range(3000), (e for e in scenarios.generate("oct-2025", 0, seed=3)
                                                if e["type"] == "tick"))]
    for enc in (lambda e: json.dumps(e).encode(), msgspec.json.encode):
        values = [enc(e) for e in ticks]
        got = scan(values, SLOTS)
        assert got is not None
        want = decoded_columns(values)
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, want))
        assert not math.isnan(got[2][0])
