"""Public exchange data → liqwatch events (`liqwatch import`), and the bars `liqwatch calibrate` reads.

    spec = ImportSpec(venue="binance", symbol="BTCUSDT-PERP")
    with open("btc.jsonl", "wb") as out:
        report = import_files([Path("BTCUSDT-1m-2025-10-10.csv")], spec, out)
    print(report.summary())   # BTCUSDT-1m-2025-10-10.csv: 361 rows (klines, ms, 1m bars) → 1,444 ticks; …

Layouts of the Binance public data archive (github.com/binance/binance-public-data), with or without a header row
(a layout is recognised by its header or, without one, by its column count and content), and a generic reader:

- `klines` (spot, USDⓈ-M, COIN-M; any interval): open_time, open, high, low, close, volume, close_time,
  quote_volume, count, taker_buy_volume, taker_buy_quote_volume, ignore → 4 ticks a bar (the intra-bar path below)
- `bookTicker` (futures): update_id, best_bid_price, best_bid_qty, best_ask_price, best_ask_qty, transaction_time,
  event_time → a tick of bid and ask at transaction_time
- `aggTrades`: agg_trade_id, price, quantity, first_trade_id, last_trade_id, transact_time, is_buyer_maker
  [, is_best_match (spot)] → a tick of bid = ask = last = price at transact_time
- `generic` (CSV or Parquet): a column mapping (`Mapping`): a time and bid + ask, or a price, or open/high/low/close

CSV is read with pyarrow.csv (also `.gz`, and a `.zip` holding one CSV, as the archive ships them), Parquet with
pyarrow.parquet. Times: milliseconds, except the archive's spot files from 1 January 2025 (microseconds): the unit of
a file is told by the magnitude of its first time (< 1e11 s, < 1e14 ms, < 1e17 µs, else ns) unless given
(`time_unit`), and a row whose time has another magnitude is a bad row. `iso`: ISO-8601 text, UTC unless it says
otherwise; Parquet timestamp columns without a zone are read as UTC.

The intra-bar path. A bar says where the price went, not when. Each bar [t, t + interval) becomes four ticks at t,
t + ¼, t + ½ and t + ¾ of the interval: the open, then the extreme against the bar's direction first (an up bar,
close ≥ open: open → low → high → close; a down bar: open → high → low → close), so the bar's whole range is
visited and its close lies inside its own bar, before the next bar's open. Bars and trades carry no book:
bid = ask = price and last = price (a spread of zero).

Bad rows are never dropped silently: every row is checked (numbers, empty fields, missing or extra columns, times,
the order of open/high/low/close, and each event through `liqwatch.events.decode`, the door every worker uses) and
a bad row is named by file, line (Parquet: row) and column: `BTCUSDT-1m.csv line 812, column high: 'abc' is not
a number`. By default an import with a bad row fails with the first one (after counting them all) and writes
nothing; with `skip_bad` the bad rows go to the rejects sink and the rest is written, so rows read = rows that made
events + rows rejected + rows outside the time window.

A constant reference series (`references`, e.g. USDe in USD at 1.0 every 30 s) can be added over the span of the
output: it is a statement, not a record. No public series of redemption rates exists for the evening of
10 October 2025 (Ethena's redemption value of USDe stayed 1.0). Events are written in event-time order, a reference
before the ticks of the same time, and merged by time with event files imported before (`merge`).
"""

from __future__ import annotations

import gzip
import heapq
import io
import math
import re
import statistics
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Optional

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from liqwatch.events import MAX_TS, BadEvent, decode, peek

KLINES = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "count",
          "taker_buy_volume", "taker_buy_quote_volume", "ignore")
BOOK_TICKER = ("update_id", "best_bid_price", "best_bid_qty", "best_ask_price", "best_ask_qty", "transaction_time",
               "event_time")
AGG_TRADES = ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time",
              "is_buyer_maker", "is_best_match")
LAYOUTS = ("auto", "klines", "bookTicker", "aggTrades", "generic")
TIME_UNITS = ("auto", "ms", "us", "ns", "s", "iso")

# what each layout reads: role -> column; roles: ts, close_time (bars), open/high/low/close, bid/ask, price,
# and quantities that are only checked (>= 0) or read by calibrate (volume, quote_volume)
_ROLES = {
    "klines": {"ts": "open_time", "open": "open", "high": "high", "low": "low", "close": "close",
               "volume": "volume", "close_time": "close_time", "quote_volume": "quote_volume"},
    "bookTicker": {"ts": "transaction_time", "bid": "best_bid_price", "ask": "best_ask_price",
                   "bid_qty": "best_bid_qty", "ask_qty": "best_ask_qty"},
    "aggTrades": {"ts": "transact_time", "price": "price", "quantity": "quantity"},
}
_PRICES = ("open", "high", "low", "close", "bid", "ask", "price")
_QUANTITIES = ("volume", "quote_volume", "bid_qty", "ask_qty", "quantity")
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_INTEGER = r"^[+-]?\d+$"
_DAY_MS = 86_400_000
_BATCH_ROWS = 65_536


class ImportFailed(ValueError):
    """The import cannot go on; the message is one line for the user and names the file."""


@dataclass(frozen=True)
class Mapping:
    """Which column holds what, for the generic reader (and overrides for the Binance layouts: `ts`, `time_unit`).
    Prices: `bid` + `ask` (book ticks), or `price` (trade ticks), or `open`/`high`/`low`/`close` (bars, with
    `interval_ms` or else the median step between bar times). Columns named like that are found without a mapping."""

    ts: Optional[str] = None
    time_unit: str = "auto"
    bid: Optional[str] = None
    ask: Optional[str] = None
    price: Optional[str] = None
    open: Optional[str] = None
    high: Optional[str] = None
    low: Optional[str] = None
    close: Optional[str] = None
    interval_ms: Optional[int] = None
    volume: Optional[str] = None
    quote_volume: Optional[str] = None


@dataclass(frozen=True)
class ReferenceSeries:
    """One unit of `asset` redeems for `rate` units of `into`, stated every `every_ms` (not recorded)."""

    asset: str
    into: str
    rate: float


@dataclass(frozen=True)
class ImportSpec:
    venue: str
    symbol: str
    layout: str = "auto"
    mapping: Mapping = Mapping()
    references: tuple[ReferenceSeries, ...] = ()
    reference_every_ms: int = 30_000
    start_ms: Optional[int] = None  # keep rows whose time (a bar's open) is in [start_ms, end_ms]
    end_ms: Optional[int] = None
    skip_bad: bool = False


@dataclass(frozen=True)
class Reject:
    file: str
    where: str       # "line" (CSV, counting the header) or "row" (Parquet, from 1)
    number: int
    column: str
    reason: str
    text: str = ""

    def message(self) -> str:
        return f"{self.file} {self.where} {self.number}, column {self.column}: {self.reason}"

    def to_dict(self) -> dict:
        return {"file": self.file, self.where: self.number, "column": self.column, "reason": self.reason,
                "text": self.text}


@dataclass
class Rows:
    """The good rows of one file, in file order, as arrays: `kind` bars | book | trades; `ts` in ms (a bar's
    open); `values` by role (open/high/low/close, bid/ask, price, volume, quote_volume); `interval_ms` per bar."""

    file: str
    layout: str
    time_unit: str
    kind: str
    ts: np.ndarray
    values: dict[str, np.ndarray]
    lines: np.ndarray
    interval_ms: Optional[np.ndarray] = None
    where: str = "line"  # how a row is numbered: "line" of a CSV (the header counts), "row" of a Parquet file
    read: int = 0        # data rows read
    outside: int = 0     # rows outside the time window
    rejects: list[Reject] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)


@dataclass
class FileReport:
    file: str
    layout: str
    time_unit: str
    kind: str
    read: int
    outside: int
    rejected: int
    used: int
    ticks: int
    interval_ms: Optional[int] = None

    def line(self) -> str:
        what = f"{self.layout}, {self.time_unit}"
        if self.kind == "bars" and self.interval_ms:
            what += f", {duration_text(self.interval_ms)} bars"
        out = f"{self.file}: {self.read:,} rows ({what}) → {self.ticks:,} ticks; {self.rejected:,} rejected"
        return out + (f"; {self.outside:,} outside the window" if self.outside else "")


@dataclass
class ImportReport:
    files: list[FileReport] = field(default_factory=list)
    ticks: int = 0
    references: int = 0
    merged: int = 0
    first_ts: Optional[int] = None
    last_ts: Optional[int] = None
    rejects: int = 0

    @property
    def events(self) -> int:
        return self.ticks + self.references + self.merged

    def summary(self) -> str:
        lines = [f.line() for f in self.files]
        tail = f"wrote {self.events:,} events: {self.ticks:,} ticks"
        if self.references:
            tail += f", {self.references:,} references (stated, not recorded)"
        if self.merged:
            tail += f", {self.merged:,} merged from other files"
        if self.first_ts is not None:
            tail += f", {iso(self.first_ts)} → {iso(self.last_ts)}"
        return "\n".join(lines + [tail])


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def duration_text(ms: int) -> str:
    for unit, n in (("d", _DAY_MS), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % n == 0:
            return f"{ms // n}{unit}"
    return f"{ms}ms"


# -- opening a file -----------------------------------------------------------------------------------------------

class _Counting(io.RawIOBase):
    """A file that counts the bytes read from it (the progress of a CSV, also under gzip or zip)."""

    def __init__(self, f: IO[bytes], tick: Optional[Callable[[int], None]]):
        self._f, self._tick, self.done = f, tick, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._f.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        if n:
            self.done += n
            if self._tick is not None:
                self._tick(self.done)
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()


def _kind_of_file(path: Path) -> str:
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise ImportFailed(f"{path}: empty file")
    if magic == b"PAR1":
        return "parquet"
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"PK\x03\x04":
        return "zip"
    return "csv"


def _open_text(path: Path, kind: str, tick: Optional[Callable[[int], None]] = None) -> IO[bytes]:
    raw = _Counting(open(path, "rb"), tick)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=io.BufferedReader(raw))
    if kind == "zip":
        try:
            z = zipfile.ZipFile(io.BufferedReader(raw))
        except zipfile.BadZipFile as e:
            raise ImportFailed(f"{path}: not a zip file liqwatch can read ({e})") from None
        members = [m for m in z.namelist() if not m.endswith("/")]
        if len(members) != 1:
            raise ImportFailed(f"{path}: a zip of the archive holds one CSV; this one holds {len(members)} files")
        return z.open(members[0])
    return io.BufferedReader(raw)


def _first_line(path: Path, kind: str) -> str:
    with _open_text(path, kind) as f:
        head = f.readline(1 << 20)
    try:
        return head.decode("utf-8").strip().lstrip("\ufeff")
    except UnicodeDecodeError:
        raise ImportFailed(f"{path}: not a text (CSV) file") from None


def _is_number(text: str) -> bool:
    return re.fullmatch(_NUMBER, text.strip()) is not None


def _sniff_layout(path: Path, fields: list[str], header: bool, asked: str) -> tuple[str, tuple[str, ...]]:
    """(layout, column names) of a CSV from its first row."""
    n = len(fields)
    names = tuple(f.strip() for f in fields) if header else ()
    if asked == "generic":
        return "generic", names or tuple(str(i + 1) for i in range(n))
    if asked == "auto":
        lowered = {x.lower() for x in names}
        if header and ({"open_time", "open", "high", "low", "close"} <= lowered or n == 12 and "open" in lowered):
            asked = "klines"
        elif header and "best_bid_price" in lowered:
            asked = "bookTicker"
        elif header and ("agg_trade_id" in lowered or {"price", "transact_time"} <= lowered):
            asked = "aggTrades"
        elif header:
            return "generic", names
        elif n == 12:
            asked = "klines"
        elif n == 8:
            asked = "aggTrades"
        elif n == 7:
            # futures aggTrades (older files have no header) end with a boolean, bookTicker with a time
            asked = "aggTrades" if fields[-1].strip().lower() in ("true", "false") else "bookTicker"
        else:
            raise ImportFailed(f"{path}: cannot tell the layout of a headerless file with {n} columns; give --layout "
                               f"generic and a column mapping (columns are then named 1..{n})")
    expected = {"klines": (12,), "bookTicker": (7,), "aggTrades": (7, 8)}[asked]
    if n not in expected:
        raise ImportFailed(f"{path}: {n} columns in its first row; a {asked} file has "
                           f"{' or '.join(map(str, expected))}")
    canon = {"klines": KLINES, "bookTicker": BOOK_TICKER, "aggTrades": AGG_TRADES}[asked][:n]
    return asked, canon


# -- reading batches ----------------------------------------------------------------------------------------------

def _csv_batches(path: Path, kind: str, names: tuple[str, ...], header: bool, rejects: list[Reject],
                 tick: Optional[Callable[[int], None]]) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Batches of strings, with the physical line (from 1, the header included) of each row. Rows with too few or
    too many fields are rejects (pyarrow's invalid-row handler); empty lines stay rows (so lines stay exact)."""
    label = str(path)
    bad_lines: set[int] = set()

    def invalid(row) -> str:
        number = row.number if row.number is not None else -1
        bad_lines.add(number)
        got = "no field" if row.actual_columns == 1 and not row.text.strip() else f"{row.actual_columns} fields"
        column = names[row.actual_columns] if row.actual_columns < len(names) else names[-1]
        rejects.append(Reject(label, "line", number, column,
                              f"{got}, expected {row.expected_columns} (a missing or extra column)", row.text[:200]))
        return "skip"

    read = pcsv.ReadOptions(use_threads=False, column_names=list(names), skip_rows=1 if header else 0,
                            block_size=1 << 22)
    parse = pcsv.ParseOptions(invalid_row_handler=invalid, ignore_empty_lines=False)
    convert = pcsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False,
                                  quoted_strings_can_be_null=False)
    next_line = 2 if header else 1
    with _open_text(path, kind, tick) as f:
        try:
            reader = pcsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
            for batch in reader:
                n = batch.num_rows
                if n == 0:
                    continue
                span = np.arange(next_line, next_line + n + len(bad_lines) + 1, dtype=np.int64)
                if bad_lines:
                    span = span[~np.isin(span, np.fromiter(bad_lines, dtype=np.int64))]
                lines = span[:n]
                next_line = int(lines[-1]) + 1
                yield batch, lines
        except (pa.ArrowInvalid, pa.ArrowException) as e:
            raise ImportFailed(f"{path}: not a CSV file liqwatch can read ({str(e).splitlines()[0]})") from None


def _parquet_batches(path: Path,
                     tick: Optional[Callable[[int], None]]) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
        raise ImportFailed(f"{path}: not a Parquet file liqwatch can read ({str(e).splitlines()[0]})") from None
    done = 0
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS):
        lines = np.arange(done + 1, done + batch.num_rows + 1, dtype=np.int64)
        done += batch.num_rows
        if tick is not None:
            tick(done)
        yield batch, lines


# -- values -------------------------------------------------------------------------------------------------------

class _Checker:
    """Marks bad rows of one batch: the first bad column of a row names it."""

    def __init__(self, file: str, where: str, lines: np.ndarray, batch: pa.RecordBatch):
        self.file, self.where, self.lines, self.batch = file, where, lines, batch
        self.bad = np.zeros(batch.num_rows, dtype=bool)
        self.found: list[Reject] = []

    def mark(self, mask: np.ndarray, column: str, reason: Callable[[int], str]) -> None:
        for i in np.flatnonzero(mask & ~self.bad):
            self.found.append(Reject(self.file, self.where, int(self.lines[i]), column, reason(int(i)),
                                     self.text(int(i))))
        self.bad |= mask

    def raw(self, column: str, i: int):
        return self.batch.column(column)[i].as_py()

    def text(self, i: int) -> str:
        return ",".join("" if v is None else str(v) for v in (c[i].as_py() for c in self.batch.columns))[:200]


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "...'"


def _floats(arr: pa.Array, column: str, chk: _Checker) -> np.ndarray:
    """float64 values (NaN where bad); bad values marked: empty, not a number, not finite."""
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        text = pc.utf8_trim_whitespace(arr)
        ok = pc.fill_null(pc.match_substring_regex(text, _NUMBER), False).to_numpy(zero_copy_only=False)
        vals = pc.cast(pc.if_else(pa.array(ok), text, pa.scalar(None, text.type)), pa.float64())
    elif pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type):
        vals = pc.cast(arr, pa.float64())
        ok = arr.is_valid().to_numpy(zero_copy_only=False)
    else:
        raise ImportFailed(f"{chk.file}: column {column} is of type {arr.type}, not numbers")
    out = pc.fill_null(vals, math.nan).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)

    def why(i: int) -> str:
        v = chk.raw(column, i)
        if v is None:
            return "is missing"
        if isinstance(v, str) and not v.strip():
            return "is empty"
        return f"{_shown(v)} is not a number" if isinstance(v, str) and not _is_number(v) else \
            f"{_shown(v)} is not a finite number"

    chk.mark(~ok | ~np.isfinite(out), column, why)
    return out


def _magnitude_unit(value: float) -> str:
    return ("s", "ms", "us", "ns")[int(_classes(np.array([value]))[0])]


_UNIT_CLASS = {"s": 0, "ms": 1, "us": 2, "ns": 3}


def _classes(raw: np.ndarray) -> np.ndarray:
    a = np.abs(raw)
    return np.where(a < 1e11, 0, np.where(a < 1e14, 1, np.where(a < 1e17, 2, 3)))


def _times(arr: pa.Array, column: str, unit: str, chk: _Checker) -> tuple[np.ndarray, np.ndarray, str]:
    """(ms, raw values in the file's unit, unit) of a time column; bad times marked. `unit` auto is told by the
    magnitude of the first valid time; a time of another magnitude is then bad."""
    n = len(arr)
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        ok = arr.is_valid().to_numpy(zero_copy_only=False)
        ms = pc.fill_null(pc.cast(pc.cast(arr, pa.timestamp("ms", tz=getattr(arr.type, "tz", None))), pa.int64()),
                          -1).to_numpy(zero_copy_only=False)
        chk.mark(~ok, column, lambda i: "is missing")
        return ms.astype(np.int64), ms.astype(np.float64), "timestamp"
    if unit == "iso":
        ms = np.full(n, -1, dtype=np.int64)
        good = np.zeros(n, dtype=bool)
        for i, v in enumerate(arr.to_pylist()):
            try:
                dt = datetime.fromisoformat(str(v).strip().replace("Z", "+00:00"))
            except ValueError:
                continue
            ms[i] = int((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp() * 1000)
            good[i] = True
        chk.mark(~good, column, lambda i: f"{_shown(chk.raw(column, i))} is not an ISO-8601 time")
        return ms, ms.astype(np.float64), "iso"
    raw = _floats(arr, column, chk)
    valid = np.isfinite(raw) & ~chk.bad
    if unit == "auto":
        first = np.flatnonzero(valid)
        unit = _magnitude_unit(float(raw[first[0]])) if len(first) else "auto"
    if unit in _UNIT_CLASS:  # a time of another magnitude than the file's unit is not a time of this file
        chk.mark(valid & (_classes(raw) != _UNIT_CLASS[unit]), column,
                 lambda i: f"{_shown(chk.raw(column, i))} is not a time in {unit} (this file's times are in {unit})")
    if unit == "auto":
        return np.full(n, -1, dtype=np.int64), raw, unit
    whole = np.isfinite(raw) & (np.floor(raw) == raw)
    if unit != "s":
        chk.mark(~whole & np.isfinite(raw), column, lambda i: f"{_shown(chk.raw(column, i))} is not a whole number "
                                                              f"of {unit}")
    with np.errstate(invalid="ignore"):
        ms = np.where(np.isfinite(raw), np.round(raw * 1000.0 / _PER_SECOND[unit]), -1).astype(np.int64)
    chk.mark((ms < 0) | (ms > MAX_TS), column,
             lambda i: f"{_shown(chk.raw(column, i))} is not a time in {unit} since 1970")
    return ms, raw, unit


# -- one file -----------------------------------------------------------------------------------------------------

def _generic_roles(path: Path, names: Iterable[str], schema: Optional[pa.Schema], m: Mapping) -> dict[str, str]:
    names = list(names)
    lower = {n.lower(): n for n in names}

    def find(*candidates: str) -> Optional[str]:
        return next((lower[c] for c in candidates if c in lower), None)

    def need(col: Optional[str], what: str) -> Optional[str]:
        if col is not None and col not in names:
            raise ImportFailed(f"{path}: no column '{col}' for {what} (columns: {', '.join(names)})")
        return col

    roles: dict[str, str] = {}
    ts = need(m.ts, "the time")
    if ts is None and schema is not None:
        stamped = [f.name for f in schema if pa.types.is_timestamp(f.type) or pa.types.is_date(f.type)]
        ts = stamped[0] if len(stamped) == 1 else None
    ts = ts or find("ts", "time", "timestamp", "open_time", "datetime", "date", "transact_time", "transaction_time")
    if ts is None:
        raise ImportFailed(f"{path}: which column holds the time? give --ts-column (columns: {', '.join(names)})")
    roles["ts"] = ts
    explicit = {k: need(getattr(m, k), k) for k in ("bid", "ask", "price", "open", "high", "low", "close")}
    if explicit["bid"] or explicit["ask"]:
        if not (explicit["bid"] and explicit["ask"]):
            raise ImportFailed(f"{path}: a book needs both --bid-column and --ask-column")
        roles.update(bid=explicit["bid"], ask=explicit["ask"])
    elif explicit["price"]:
        roles["price"] = explicit["price"]
    elif any(explicit[k] for k in ("open", "high", "low", "close")):
        missing = [k for k in ("open", "high", "low", "close") if not explicit[k]]
        if missing:
            raise ImportFailed(f"{path}: bars need all four of --open/--high/--low/--close-column "
                               f"(missing: {', '.join(missing)})")
        roles.update({k: explicit[k] for k in ("open", "high", "low", "close")})
    elif find("bid") and find("ask"):
        roles.update(bid=find("bid"), ask=find("ask"))
    elif all(find(k) for k in ("open", "high", "low", "close")):
        roles.update({k: find(k) for k in ("open", "high", "low", "close")})
    elif find("price", "last"):
        roles["price"] = find("price", "last")
    else:
        raise ImportFailed(f"{path}: no price columns found: give --bid-column and --ask-column, --price-column, or "
                           f"--open/--high/--low/--close-column (columns: {', '.join(names)})")
    if "open" in roles:
        for role, candidates in (("volume", ("volume",)), ("quote_volume", ("quote_volume", "quote_asset_volume"))):
            col = need(getattr(m, role), role) or find(*candidates)
            if col:
                roles[role] = col
    return roles


def read_rows(path: Path, layout: str = "auto", mapping: Mapping = Mapping(), start_ms: Optional[int] = None,
              end_ms: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None) -> Rows:
    """The good rows of one file and its rejects (see the module doc). `progress(done, total)`: bytes of a CSV,
    rows of a Parquet file."""
    path = Path(path)
    if layout not in LAYOUTS:
        raise ImportFailed(f"layout '{layout}': must be one of {', '.join(LAYOUTS)}")
    if mapping.time_unit not in TIME_UNITS:
        raise ImportFailed(f"time unit '{mapping.time_unit}': must be one of {', '.join(TIME_UNITS)}")
    label = str(path)
    kind = _kind_of_file(path)
    rejects: list[Reject] = []
    invalid_rows: list[Reject] = []  # rows with too few or too many fields: pyarrow leaves them out of the batches
    if kind == "parquet":
        try:
            schema = pq.read_schema(path)
            total = pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
            raise ImportFailed(f"{path}: not a Parquet file liqwatch can read ({str(e).splitlines()[0]})") from None
        if layout not in ("auto", "generic"):
            raise ImportFailed(f"{path}: a Parquet file is read with --layout generic, not {layout}")
        layout, where = "generic", "row"
        roles = _generic_roles(path, schema.names, schema, mapping)
        batches = _parquet_batches(path, (lambda d: progress(d, total)) if progress else None)
    else:
        first = _first_line(path, kind)
        if not first:
            raise ImportFailed(f"{path}: empty file")
        fields = [f.strip().strip('"') for f in first.split(",")]
        header = not any(_is_number(f) for f in fields)  # a data row has a number somewhere; a header has none
        layout, names = _sniff_layout(path, fields, header, layout)
        if layout == "generic":
            roles = _generic_roles(path, names, None, mapping)
        else:
            roles = dict(_ROLES[layout])
            if mapping.ts:
                if mapping.ts not in names:
                    raise ImportFailed(f"{path}: no column '{mapping.ts}' (a {layout} file has: {', '.join(names)})")
                roles["ts"] = mapping.ts
        where = "line"
        total = path.stat().st_size
        batches = _csv_batches(path, kind, names, header, invalid_rows,
                               (lambda d: progress(d, total)) if progress else None)
    unit = mapping.time_unit
    parts: dict[str, list[np.ndarray]] = {}
    ts_parts, line_parts, iv_parts = [], [], []
    read = outside = 0
    for batch, lines in batches:
        read += batch.num_rows
        chk = _Checker(label, where, lines, batch)
        ts, raw_ts, unit = _times(batch.column(roles["ts"]), roles["ts"], unit, chk)
        values = {role: _floats(batch.column(col), col, chk) for role, col in roles.items()
                  if role in _PRICES or role in _QUANTITIES}
        for role in _PRICES:
            if role in values:
                chk.mark(values[role] <= 0, roles[role], lambda i, r=role: f"{_shown(chk.raw(roles[r], i))} is not a "
                                                                           f"price > 0")
        for role in _QUANTITIES:
            if role in values:
                chk.mark(values[role] < 0, roles[role], lambda i, r=role: f"{_shown(chk.raw(roles[r], i))} is "
                                                                           f"negative")
        interval = None
        if "close_time" in roles:
            end, raw_end, _ = _times(batch.column(roles["close_time"]), roles["close_time"], unit, chk)
            scale = 1000.0 / _PER_SECOND.get(unit, 1000)
            interval = np.round((raw_end - raw_ts + (1 if unit != "s" else 0)) * scale).astype(np.int64) \
                if unit in _PER_SECOND else end - ts + 1
            chk.mark(interval <= 0, roles["close_time"], lambda i: "is not after open_time")
        if "open" in values:
            o, h, lo, c = (values[k] for k in ("open", "high", "low", "close"))
            chk.mark(h < np.maximum(o, c), roles["high"],
                     lambda i: f"high {h[i]:g} is below {'open' if o[i] > c[i] else 'close'} {max(o[i], c[i]):g}")
            chk.mark(lo > np.minimum(o, c), roles["low"],
                     lambda i: f"low {lo[i]:g} is above {'open' if o[i] < c[i] else 'close'} {min(o[i], c[i]):g}")
        rejects.extend(chk.found)
        keep = ~chk.bad
        window = np.ones(batch.num_rows, dtype=bool)
        if start_ms is not None:
            window &= ts >= start_ms
        if end_ms is not None:
            window &= ts <= end_ms
        outside += int(np.count_nonzero(keep & ~window))
        keep &= window
        ts_parts.append(ts[keep])
        line_parts.append(lines[keep])
        for role, v in values.items():
            parts.setdefault(role, []).append(v[keep])
        if interval is not None:
            iv_parts.append(interval[keep])
    read += len(invalid_rows)
    rejects += invalid_rows
    if read == 0:
        raise ImportFailed(f"{path}: no data rows" + (" (only a header)" if where == "line" else ""))
    ts_all = np.concatenate(ts_parts) if ts_parts else np.empty(0, np.int64)
    values_all = {role: np.concatenate(p) for role, p in parts.items()}
    kind_of = "bars" if "open" in roles else "book" if "bid" in roles else "trades"
    rows = Rows(label, layout, "auto" if unit == "auto" else unit, kind_of, ts_all, values_all,
                np.concatenate(line_parts) if line_parts else np.empty(0, np.int64), where=where, read=read,
                outside=outside,
                rejects=sorted(rejects, key=lambda r: r.number))
    if kind_of == "bars":
        if iv_parts:
            rows.interval_ms = np.concatenate(iv_parts)
        else:
            step = mapping.interval_ms or _median_step(ts_all)
            if not step:
                raise ImportFailed(f"{path}: cannot tell the bar interval from fewer than two bars; give --interval")
            rows.interval_ms = np.full(len(ts_all), step, dtype=np.int64)
    return rows


def _median_step(ts: np.ndarray) -> Optional[int]:
    steps = np.diff(np.unique(ts))
    return int(statistics.median(steps.tolist())) if len(steps) else None


# -- events -------------------------------------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode


def bar_path(ts: int, interval_ms: int, o: float, h: float, lo: float, c: float) -> list[tuple[int, float]]:
    """The four (time, price) points of one bar: see the module doc."""
    q = interval_ms // 4
    middle = (lo, h) if c >= o else (h, lo)
    return [(ts, o), (ts + q, middle[0]), (ts + 2 * q, middle[1]), (ts + 3 * q, c)]


def _tick(venue: str, symbol: str, ts: int, bid: float, ask: float, last: Optional[float]) -> bytes:
    ev = {"type": "tick", "venue": venue, "symbol": symbol, "ts": ts, "bid": bid, "ask": ask}
    if last is not None:
        ev["last"] = last
    return _encode(ev)


@dataclass
class _Ticks:
    ts: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    last: np.ndarray  # NaN: none


def ticks_of(rows: Rows, venue: str, symbol: str) -> tuple[_Ticks, list[Reject]]:
    """The ticks of the good rows, each through `events.decode`; a row with an event the door refuses is a
    reject (no event of it is kept)."""
    v = rows.values
    n = len(rows)
    if rows.kind == "bars":
        o, h, lo, c, iv = v["open"], v["high"], v["low"], v["close"], rows.interval_ms
        up = c >= o
        q = iv // 4
        ts = np.stack([rows.ts, rows.ts + q, rows.ts + 2 * q, rows.ts + 3 * q], axis=1)
        price = np.stack([o, np.where(up, lo, h), np.where(up, h, lo), c], axis=1)
        bid = ask = last = price
    elif rows.kind == "book":
        ts, bid, ask = rows.ts[:, None], v["bid"][:, None], v["ask"][:, None]
        last = np.full((n, 1), math.nan)
    else:
        ts, bid = rows.ts[:, None], v["price"][:, None]
        ask = last = bid
    bad = np.zeros(n, dtype=bool)
    rejects: list[Reject] = []
    column = {"bid": "best_bid_price", "ask": "best_ask_price"} if rows.layout == "bookTicker" else {}
    for i in range(n):
        for j in range(ts.shape[1]):
            lj = None if math.isnan(last[i, j]) else float(last[i, j])
            try:
                decode(_tick(venue, symbol, int(ts[i, j]), float(bid[i, j]), float(ask[i, j]), lj))
            except BadEvent as e:
                field_name = e.reason.split(":", 1)[0]
                rejects.append(Reject(rows.file, rows.where, int(rows.lines[i]), column.get(field_name, field_name),
                                      f"the tick is refused ({e.kind}): {e.reason}"))
                bad[i] = True
                break
    keep = ~bad
    return _Ticks(ts[keep].ravel(), bid[keep].ravel(), ask[keep].ravel(), last[keep].ravel()), rejects


def _reference_lines(refs: tuple[ReferenceSeries, ...], every_ms: int, first: int, last: int) -> Iterator[tuple]:
    if not refs:
        return
    t = first - first % every_ms
    while t <= last:
        if t >= first:
            for r in refs:
                yield t, 0, _encode({"type": "reference", "asset": r.asset, "ts": t, "in": r.into, "rate": r.rate})
        t += every_ms


def _tick_lines(t: _Ticks, order: np.ndarray, venue: str, symbol: str) -> Iterator[tuple]:
    for k in order:
        last = t.last[k]
        yield int(t.ts[k]), 1, _tick(venue, symbol, int(t.ts[k]), float(t.bid[k]), float(t.ask[k]),
                                     None if math.isnan(last) else float(last))


def _merge_lines(path: Path, rank: int) -> Iterator[tuple]:
    prev = -1
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            kind, ts = peek(line)
            if ts is None:
                raise ImportFailed(f"{path} line {n}: no valid ts; --merge takes event files in event-time order")
            if ts < prev:
                raise ImportFailed(f"{path} line {n}: ts {ts} is before the line above ({prev}); --merge takes "
                                   f"event files in event-time order")
            prev = ts
            yield ts, 0 if kind == "reference" else 1, line, rank


def import_files(paths: list[Path], spec: ImportSpec, out: IO[bytes], merge: tuple[Path, ...] = (),
                 rejects_out: Optional[Callable[[Reject], None]] = None,
                 progress: Optional[Callable[[str, int, int], None]] = None) -> ImportReport:
    """Read every file, check every row, then write the events (and the merged files) in event-time order.
    Raises ImportFailed before writing anything when a row is bad and `spec.skip_bad` is not set."""
    if not spec.venue or not spec.symbol:
        raise ImportFailed("a venue and a symbol are needed (e.g. --venue binance --symbol BTCUSDT-PERP)")
    if spec.reference_every_ms <= 0:
        raise ImportFailed("the reference interval must be positive")
    report = ImportReport()
    all_ticks: list[_Ticks] = []
    bad: list[Reject] = []
    for path in paths:
        rows = read_rows(path, spec.layout, spec.mapping, spec.start_ms, spec.end_ms,
                         (lambda d, t, p=str(path): progress(p, d, t)) if progress else None)
        ticks, refused = ticks_of(rows, spec.venue, spec.symbol)
        file_rejects = sorted(rows.rejects + refused, key=lambda r: r.number)
        bad.extend(file_rejects)
        all_ticks.append(ticks)
        iv = int(statistics.median(rows.interval_ms.tolist())) if rows.kind == "bars" and len(rows) else None
        report.files.append(FileReport(rows.file, rows.layout, rows.time_unit, rows.kind, rows.read, rows.outside,
                                       len(file_rejects), len(rows) - len(refused), len(ticks.ts), iv))
    report.rejects = len(bad)
    if bad and not spec.skip_bad:
        more = f" ({len(bad):,} bad rows in all; --skip-bad writes them to a rejects file and goes on)" \
            if len(bad) > 1 else " (--skip-bad writes bad rows to a rejects file and goes on)"
        raise ImportFailed(bad[0].message() + more)
    if rejects_out is not None:
        for r in bad:
            rejects_out(r)
    ticks = _Ticks(*(np.concatenate([getattr(t, a) for t in all_ticks]) for a in ("ts", "bid", "ask", "last")))
    order = np.argsort(ticks.ts, kind="stable")
    report.ticks = len(order)
    if len(order):
        first, last = int(ticks.ts[order[0]]), int(ticks.ts[order[-1]])
        report.first_ts, report.last_ts = first, last
        for r in spec.references:
            decode(_encode({"type": "reference", "asset": r.asset, "ts": first, "in": r.into, "rate": r.rate}))
        refs = _reference_lines(spec.references, spec.reference_every_ms, first, last)
    else:
        refs = iter(())
    own = heapq.merge(refs, _tick_lines(ticks, order, spec.venue, spec.symbol), key=lambda x: (x[0], x[1]))
    streams = [((ts, k, line, len(merge)) for ts, k, line in own)]
    streams += [_merge_lines(Path(p), i) for i, p in enumerate(merge)]
    for ts, kind, line, rank in heapq.merge(*streams, key=lambda x: (x[0], x[1], x[3])):
        out.write(line + b"\n")
        if rank == len(merge):
            report.references += kind == 0
        else:
            report.merged += 1
            report.first_ts = ts if report.first_ts is None else min(report.first_ts, ts)
            report.last_ts = ts if report.last_ts is None else max(report.last_ts, ts)
    return report
