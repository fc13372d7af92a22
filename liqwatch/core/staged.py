"""A tick partition's admitted rows as one Kafka record: what the market stage (liqwatch.worker.stage) publishes on
`liqwatch.market` and every worker's feed reads back instead of the ticks themselves.

    value = pack(rules_id(cfg, gate, slots, assets), partition, first, last, door, batch, offsets, values, rejected, ignored)
    staged = unpack(value)                  # Staged
    rows = staged.market_rows(ticks_topic)  # MarketRows whose records are the source records (dead letters)

Decoding and judging a tick costs microseconds of Python per record (the Kafka client's record objects, the JSON
parse, the door's checks); a row costs a memory copy. The stage does the first once per tick for the whole
cluster, each worker only the second. A record carries:
- the source offsets it covers (`first`..`last`, and each row's): a stage that restarts, or a partition that
  moves to another stage, may publish some rows again; the feed keeps the first copy of each offset;
- the door's clock after it (`clock`): the stage taking a partition over resumes with the clock the previous
  one had, so merge times, and so the replay's order, do not depend on which stage read what;
- the source bytes of each row (a row the market state rejects later is dead-lettered with them) and the
  records the door rejected (every worker dead-letters market records, as it does for references).
"""

from __future__ import annotations

import hashlib
import json

import msgspec
import numpy as np

from liqwatch.core.columns import ROW, MarketRows


class Rejected(msgspec.Struct, array_like=True):
    offset: int
    kind: str
    reason: str
    value: bytes
    key: bytes | None


class Staged(msgspec.Struct, array_like=True):
    rules: str           # `rules_id` of the stage: the book slots, assets and door rules the rows were made with
    partition: int       # of the ticks topic
    first: int           # source offsets covered, first..last
    last: int
    clock: tuple[int, float, dict[str, int]]  # the door's EventClock after this record: t, limit, run
    rows: bytes          # ROW
    offsets: bytes       # int64 source offset of each row
    values: bytes        # the rows' source values, concatenated
    ends: bytes          # int64 end of each row's value in `values`
    rejected: list[Rejected]
    ignored: int         # records ignored by rule (ingest.unknown_sources: ignore)

    def market_rows(self, topic: str, after: int = -1) -> MarketRows:
        """The rows, their records the source records; only those with an offset above `after`."""
        rows = np.frombuffer(self.rows, ROW)
        offsets = np.frombuffer(self.offsets, np.int64)
        ends = np.frombuffer(self.ends, np.int64)
        starts = np.concatenate(([0], ends[:-1])) if ends.size else ends
        keep = slice(None) if after < self.first else slice(int(np.searchsorted(offsets, after, "right")), None)
        return MarketRows(rows[keep].copy(), SourceRecords(topic, self.partition, offsets[keep], starts[keep],
                                                           ends[keep], self.values))


def rules_id(cfg, gate, slots: dict[str, int], assets: dict[str, int]) -> str:
    """A hash of what a staged row depends on: book slots, asset ids, the door's rules (ingest, sanity bounds,
    redemptions). Stages and workers whose configs differ elsewhere (a schedule, alerts) still share rows."""
    canon = json.dumps({"slots": slots, "assets": assets, "ingest": cfg.ingest.model_dump(mode="json"),
                        "books": gate.books, "redeems": gate.redeems_into}, sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


def pack(rules: str, partition: int, first: int, last: int, clock, batch: MarketRows, offsets: np.ndarray,
         values: list[bytes], rejected: list[Rejected], ignored: int) -> bytes:
    """One staged record: `batch` with each row's source offset and value (in row order)."""
    ends = np.cumsum(np.fromiter((len(v) for v in values), np.int64, len(values)))
    limit = float(clock.limit)
    return _encode(Staged(rules, partition, first, last, (int(clock.t), limit, dict(clock.run)),
                          batch.rows.tobytes(), np.ascontiguousarray(offsets, np.int64).tobytes(), b"".join(values),
                          ends.tobytes(), rejected, ignored))


def unpack(raw: bytes) -> Staged:
    return _decode(raw)


def restore_clock(clock, state: tuple[int, float, dict[str, int]]) -> None:
    """Set a door's EventClock to a staged record's `clock`."""
    t, limit, run = state
    clock.t = int(t)
    clock.limit = limit if limit == float("inf") else int(limit)
    clock.run = dict(run)


class SourceRecord:
    __slots__ = ("topic", "partition", "offset", "value", "key")

    def __init__(self, topic: str, partition: int, offset: int, value: bytes, key: bytes | None = None):
        self.topic, self.partition, self.offset, self.value, self.key = topic, partition, offset, value, key


class SourceRecords:
    """The source records of staged rows, made only when one is asked for (a dead letter)."""

    __slots__ = ("topic", "partition", "offsets", "starts", "ends", "values")

    def __init__(self, topic, partition, offsets, starts, ends, values):
        self.topic, self.partition = topic, partition
        self.offsets, self.starts, self.ends, self.values = offsets, starts, ends, values

    def __len__(self) -> int:
        return self.offsets.shape[0]

    def __getitem__(self, k):
        if isinstance(k, slice):
            return SourceRecords(self.topic, self.partition, self.offsets[k], self.starts[k], self.ends[k],
                                 self.values)
        return SourceRecord(self.topic, self.partition, int(self.offsets[k]),
                            self.values[int(self.starts[k]):int(self.ends[k])])

    def __iter__(self):
        return (self[k] for k in range(len(self)))


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Staged).decode
