"""Read a batch of tick records (JSON, one object each) straight into columns, with the numbers exactly as the
JSON decoder reads them: what the market feed spends most of its time on after the Kafka client.

    ok = scan_ticks(buf, offsets, key_buf, key_offsets, key_slots, slot, ts, bid, ask, last, funding, next_funding)

`buf[offsets[k]:offsets[k + 1]]` is record k; the book names (`venue:symbol`) are `key_buf[key_offsets[j]:
key_offsets[j + 1]]`, book slot `key_slots[j]`. Absent optional numbers are NaN, a book not named is slot −1.
Returns −1 when every record was read, else the first record it declines: anything but the plain shape of a tick
(an unknown or repeated key, an escape or a byte ≥ 0x80 in a string, a number it cannot read exactly, a missing
field, `true`/`false`, nesting). The caller then decodes the batch with msgspec, which judges and names what is
wrong: this reader never judges, it only declines, so it cannot reject what the decoder would take.

A JSON decoder builds a Python object per record and the door then reads each field back out of it (~1.9 µs a
tick in the feed, of which ~0.8 the objects); here one compiled pass over the bytes fills the columns.

Numbers are correctly rounded, as Python's `float()` and msgspec are: exact with Clinger's fast path (a
significand below 2^53 and a power of ten up to 22) and otherwise the Eisel-Lemire algorithm (a 128-bit product
with a truncated power of ten; it declines the rare case it cannot round unambiguously, as Go's `strconv` and
`fast_float` do, and the whole batch then goes to msgspec).
"""

import numpy as np
from numba import njit

POW10_MIN = -348
POW10_MAX = 347


def _pow10_table() -> np.ndarray:
    """(lo, hi) 64-bit words of the 128-bit mantissa of 10^e, e from POW10_MIN to POW10_MAX, normalised to
    [2^127, 2^128) and rounded down (the table Eisel-Lemire's bounds are proven for), computed exactly here."""
    out = np.empty((POW10_MAX - POW10_MIN + 1, 2), np.uint64)
    mask = (1 << 64) - 1
    for k, e in enumerate(range(POW10_MIN, POW10_MAX + 1)):
        if e >= 0:
            v = 10 ** e
            n = v.bit_length()
            m = v >> (n - 128) if n >= 128 else v << (128 - n)
        else:
            d = 10 ** -e
            m = (1 << (127 + d.bit_length())) // d  # in (2^127, 2^128): d is not a power of two
        out[k, 0], out[k, 1] = m & mask, m >> 64
    return out


POW10_128 = _pow10_table()
EXACT_POW10 = np.array([10.0 ** k for k in range(23)])  # 1e0..1e22: exact doubles
POW10_INT = np.array([10 ** k for k in range(16)], np.uint64)
POW5 = np.array([5 ** k for k in range(28)], np.uint64)  # 5^27 < 2^63

_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_ONE = np.uint64(1)
_ZERO = np.uint64(0)
_LOW9 = np.uint64(0x1FF)
_TWO53 = np.uint64(1 << 53)


@njit(cache=True, nogil=True, inline="always")
def mul128(a, b):
    """(hi, lo) of the 128-bit product of two uint64 (numba has no 128-bit type)."""
    a0, a1 = a & _M32, a >> _S32
    b0, b1 = b & _M32, b >> _S32
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> _S32) + (p01 & _M32) + (p10 & _M32)
    return p11 + (p01 >> _S32) + (p10 >> _S32) + (mid >> _S32), (mid << _S32) | (p00 & _M32)


@njit(cache=True, nogil=True, inline="always")
def _leading_zeros(x):
    """Leading zero bits of a nonzero uint64, by halving the window (32, 16, … 1 bits)."""
    n = 0
    for shift in (32, 16, 8, 4, 2, 1):
        if x >> np.uint64(64 - shift) == _ZERO:
            n += shift
            x <<= np.uint64(shift)
    return n


@njit(cache=True, nogil=True)
def decimal_to_double(w, e10, neg, table):
    """The double nearest to (−1)^neg × w × 10^e10 (w a uint64), and whether it was found: (value, ok).
    Declines (ok False) the halfway-ambiguous cases, subnormals and overflow; zero is exact."""
    if w == _ZERO:
        return (-0.0 if neg else 0.0), True
    # an integer (as written, or once trailing zeros of "…913.0" are dropped): the conversion of a uint64 rounds
    # correctly (to nearest, ties to even)
    if e10 == 0:
        return (-float(w) if neg else float(w)), True
    while w > _TWO53 and e10 < 0 and w % np.uint64(10) == _ZERO:
        w //= np.uint64(10)
        e10 += 1
    if e10 == 0:
        return (-float(w) if neg else float(w)), True
    if 22 < e10 <= 22 + 15 and w <= _TWO53 // POW10_INT[e10 - 22]:
        w *= POW10_INT[e10 - 22]  # "4e23" = 40 × 1e22, still exact before the one rounding
        e10 = 22
    if w <= _TWO53 and -22 <= e10 <= 22:  # Clinger: both factors exact, one correctly rounded operation
        v = float(w) * EXACT_POW10[e10] if e10 >= 0 else float(w) / EXACT_POW10[-e10]
        return (-v if neg else v), True
    if -27 <= e10 < 0 and w % POW5[-e10] == _ZERO and w // POW5[-e10] <= _TWO53:
        # a binary fraction written in decimal ("…253.5"): exact, where the truncated table cannot tell
        v = np.ldexp(float(w // POW5[-e10]), e10)
        return (-v if neg else v), True
    if e10 < POW10_MIN or e10 > POW10_MAX:
        return 0.0, False
    clz = _leading_zeros(w)
    w = w << np.uint64(clz)
    exp2 = ((217706 * e10) >> 16) + 64 + 1023 - clz  # floor(log2(10^e10)) + bias, from the normalised product
    row = e10 - POW10_MIN
    hi, lo = mul128(w, table[row, 1])
    if (hi & _LOW9) == _LOW9 and lo + w < w:  # the truncated table may matter: take its low word in
        yhi, ylo = mul128(w, table[row, 0])
        mhi, mlo = hi, lo + yhi
        if mlo < lo:
            mhi += _ONE
        if (mhi & _LOW9) == _LOW9 and mlo + _ONE == _ZERO and ylo + w < w:
            return 0.0, False
        hi, lo = mhi, mlo
    msb = hi >> np.uint64(63)
    mantissa = hi >> (msb + np.uint64(9))
    exp2 -= 1 - int(msb)
    if lo == _ZERO and (hi & _LOW9) == _ZERO and (mantissa & np.uint64(3)) == _ONE:
        return 0.0, False  # exactly halfway between two doubles: needs the exact decimal
    mantissa += mantissa & _ONE  # round half up on 54 bits, then drop one
    mantissa >>= _ONE
    if mantissa >> np.uint64(53) > _ZERO:
        mantissa >>= _ONE
        exp2 += 1
    if exp2 <= 0 or exp2 >= 0x7FF:
        return 0.0, False  # subnormal or overflow: left to the decoder
    v = np.ldexp(float(mantissa), exp2 - 1075)
    return (-v if neg else v), True


# keys of a tick object, in the bit of `seen` each one sets
K_TYPE, K_VENUE, K_SYMBOL, K_TS, K_BID, K_ASK, K_LAST, K_FUNDING, K_NEXT_FUNDING = range(9)
_REQUIRED = (1 << K_TYPE) | (1 << K_VENUE) | (1 << K_SYMBOL) | (1 << K_TS) | (1 << K_BID) | (1 << K_ASK)
KEYS = (b"type", b"venue", b"symbol", b"ts", b"bid", b"ask", b"last", b"funding_rate", b"next_funding_ts")
_KEY_BUF = np.frombuffer(b"".join(KEYS), np.uint8)
_KEY_OFF = np.cumsum([0] + [len(k) for k in KEYS]).astype(np.int64)
_TICK = np.frombuffer(b"tick", np.uint8)


@njit(cache=True, nogil=True, inline="always")
def _ws(buf, p, hi):
    while p < hi and (buf[p] == 32 or buf[p] == 9 or buf[p] == 10 or buf[p] == 13):
        p += 1
    return p


@njit(cache=True, nogil=True, inline="always")
def _string_end(buf, p, hi):
    """p at the opening quote: the position of the closing one, or −1 (an escape, a control or non-ASCII byte)."""
    p += 1
    while p < hi:
        c = buf[p]
        if c == 34:
            return p
        if c == 92 or c < 32 or c >= 128:
            return -1
        p += 1
    return -1


@njit(cache=True, nogil=True, inline="always")
def _same(buf, lo, hi, ref, rlo, rhi):
    if hi - lo != rhi - rlo:
        return False
    for i in range(hi - lo):
        if buf[lo + i] != ref[rlo + i]:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _key(buf, lo, hi):
    """Which of KEYS buf[lo:hi] is (−1: none): told apart by length and first byte, then compared."""
    n, c = hi - lo, buf[lo] if hi > lo else 0
    j = -1
    if n == 4:
        j = K_TYPE if c == 116 else (K_LAST if c == 108 else -1)
    elif n == 5:
        j = K_VENUE
    elif n == 6:
        j = K_SYMBOL
    elif n == 2:
        j = K_TS
    elif n == 3:
        j = K_BID if c == 98 else (K_ASK if c == 97 else -1)
    elif n == 12:
        j = K_FUNDING
    elif n == 15:
        j = K_NEXT_FUNDING
    if j >= 0 and _same(buf, lo, hi, _KEY_BUF, _KEY_OFF[j], _KEY_OFF[j + 1]):
        return j
    return -1


@njit(cache=True, nogil=True)
def _number(buf, p, hi):
    """A JSON number at p: (end, neg, w, e10, is_int); end −1 when it is not one this reader takes (not JSON, or
    more than 19 significant digits)."""
    neg = False
    if p < hi and buf[p] == 45:
        neg = True
        p += 1
    if p >= hi:
        return -1, neg, _ZERO, 0, False
    w = _ZERO
    digits = 0
    e10 = 0
    if buf[p] == 48:
        p += 1
        if p < hi and 48 <= buf[p] <= 57:
            return -1, neg, _ZERO, 0, False  # a leading zero: not JSON
    elif 49 <= buf[p] <= 57:
        while p < hi and 48 <= buf[p] <= 57:
            if digits == 19:
                return -1, neg, _ZERO, 0, False
            w = w * np.uint64(10) + np.uint64(buf[p] - 48)
            digits += 1
            p += 1
    else:
        return -1, neg, _ZERO, 0, False
    is_int = True
    if p < hi and buf[p] == 46:
        is_int = False
        p += 1
        if p >= hi or not (48 <= buf[p] <= 57):
            return -1, neg, _ZERO, 0, False
        while p < hi and 48 <= buf[p] <= 57:
            d = buf[p] - 48
            if digits > 0 or d != 0:  # leading zeros of a fraction are not significant
                if digits == 19:
                    return -1, neg, _ZERO, 0, False
                w = w * np.uint64(10) + np.uint64(d)
                digits += 1
            e10 -= 1
            p += 1
    if p < hi and (buf[p] == 101 or buf[p] == 69):
        is_int = False
        p += 1
        sign = 1
        if p < hi and (buf[p] == 43 or buf[p] == 45):
            sign = -1 if buf[p] == 45 else 1
            p += 1
        if p >= hi or not (48 <= buf[p] <= 57):
            return -1, neg, _ZERO, 0, False
        e = 0
        while p < hi and 48 <= buf[p] <= 57:
            if e > 100_000:
                return -1, neg, _ZERO, 0, False
            e = e * 10 + (buf[p] - 48)
            p += 1
        e10 += sign * e
    return p, neg, w, e10, is_int


@njit(cache=True, nogil=True)
def scan_ticks(buf, offsets, key_buf, key_offsets, key_slots, slot, ts, bid, ask, last, funding, next_funding):
    table = POW10_128
    max_i64 = np.uint64(0x7FFFFFFFFFFFFFFF)
    for k in range(offsets.shape[0] - 1):
        lo, hi = offsets[k], offsets[k + 1]
        p = _ws(buf, lo, hi)
        if p >= hi or buf[p] != 123:
            return k
        p = _ws(buf, p + 1, hi)
        seen = 0
        v_lo = v_hi = s_lo = s_hi = 0
        last[k] = np.nan
        funding[k] = np.nan
        next_funding[k] = np.nan
        closed = False
        if p < hi and buf[p] == 125:
            return k  # {}: no tick
        while p < hi:
            if buf[p] != 34:
                return k
            end = _string_end(buf, p, hi)
            if end < 0:
                return k
            key = _key(buf, p + 1, end)
            if key < 0 or seen & (1 << key):
                return k  # a key a tick does not have, or one repeated
            seen |= 1 << key
            p = _ws(buf, end + 1, hi)
            if p >= hi or buf[p] != 58:
                return k
            p = _ws(buf, p + 1, hi)
            if p >= hi:
                return k
            if key <= K_SYMBOL:  # a string
                if buf[p] != 34:
                    return k
                end = _string_end(buf, p, hi)
                if end < 0:
                    return k
                if key == K_TYPE:
                    if not _same(buf, p + 1, end, _TICK, 0, 4):
                        return k
                elif key == K_VENUE:
                    v_lo, v_hi = p + 1, end
                else:
                    s_lo, s_hi = p + 1, end
                p = end + 1
            elif buf[p] == 110:  # null: only where the tick has an optional number
                if key < K_LAST or p + 4 > hi or buf[p + 1] != 117 or buf[p + 2] != 108 or buf[p + 3] != 108:
                    return k
                p += 4
            else:
                end, neg, w, e10, is_int = _number(buf, p, hi)
                if end < 0:
                    return k
                if key == K_TS or key == K_NEXT_FUNDING:  # integers: a fraction or exponent is not one
                    if not is_int or w > max_i64 or (neg and w == _ZERO):
                        return k
                    if key == K_TS:
                        ts[k] = -np.int64(w) if neg else np.int64(w)
                    else:
                        value, ok = decimal_to_double(w, 0, neg, table)
                        if not ok:
                            return k
                        next_funding[k] = value
                else:
                    if is_int and neg and w == _ZERO:
                        return k  # -0 as an integer: the decoder reads 0, not -0.0
                    value, ok = decimal_to_double(w, e10, neg, table)
                    if not ok:
                        return k
                    if key == K_BID:
                        bid[k] = value
                    elif key == K_ASK:
                        ask[k] = value
                    elif key == K_LAST:
                        last[k] = value
                    else:
                        funding[k] = value
                p = end
            p = _ws(buf, p, hi)
            if p < hi and buf[p] == 44:
                p = _ws(buf, p + 1, hi)
                continue
            if p < hi and buf[p] == 125:
                closed = True
                p = _ws(buf, p + 1, hi)
                break
            return k
        if not closed or p != hi or (seen & _REQUIRED) != _REQUIRED:
            return k
        # the book: venue ":" symbol among the named ones (as the decoded path looks it up)
        slot[k] = -1
        n = (v_hi - v_lo) + 1 + (s_hi - s_lo)
        for j in range(key_slots.shape[0]):
            a, b = key_offsets[j], key_offsets[j + 1]
            if b - a != n:
                continue
            same = True
            for i in range(v_hi - v_lo):
                if buf[v_lo + i] != key_buf[a + i]:
                    same = False
                    break
            if not same or key_buf[a + v_hi - v_lo] != 58:
                continue
            for i in range(s_hi - s_lo):
                if buf[s_lo + i] != key_buf[a + v_hi - v_lo + 1 + i]:
                    same = False
                    break
            if same:
                slot[k] = key_slots[j]
                break
    return -1
