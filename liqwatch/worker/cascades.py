"""The distributed cascade (SPEC §5 over sharded accounts): a round-based exchange over two Kafka topics.

    coordinator (leader worker)                       every worker (a shard: its account partitions)
    ─────────────────────────                         ───────────────────────────────────────────────
    shock the market snapshot, compute prices  ──▶  liqwatch.cascade-rounds  {cascade, round, index, mark}
                                                     round 1: freeze a copy of the shard's accounts
                                                     liquidate_round on the copy
    sum replies once every account partition   ◀──  liquidatable liqwatch.cascade-flows {partitions, count,
    is covered, apply impact, next round              notional, net_sold, caught_up}

The coordinator drives `liqwatch.kernels.cascade.cascade_rounds`, the same generator `liqwatch cascade` drives with local
books, and sums replies in partition order: a distributed run equals the single-process run on the same
snapshot. Every shard first confirms that it has applied the account events up to the snapshot's event time (or
reached the end of its partitions); until then the coordinator retries, so cascades — and the alerts that read
them — depend on event time only, not on how fast each consumer ran.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from liqwatch.core.engine import adl_rule, cascade_dict
from liqwatch.core.monitor import Monitor
from liqwatch.kafka import Connection
from liqwatch.kernels.cascade import (AdlClose, AdlCloseResult, AdlQueue, AdlQueueResult, RoundRequest, RoundResult,
                                      Shard, cascade_rounds, combine, sum_results)
from liqwatch.kernels.health import exposure_summary
from liqwatch.kernels.arrays import AccountArrays
from liqwatch.risk.stress import StressRuns
from liqwatch.sinks.topics import TopicNames

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


def _pack(a: np.ndarray) -> str:
    """An array as the base64 of its bytes: JSON has no inf (an ADL queue key, a cutoff) and no NaN."""
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def _unpack(text: str, dtype, shape=None) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(text), dtype=dtype).copy()
    return a if shape is None else a.reshape(shape)


class CascadeAborted(RuntimeError):
    pass


class NotAligned(RuntimeError):
    """A shard's accounts lag the market snapshot's event time: run the cascade again shortly."""


def _copy(accounts: AccountArrays) -> AccountArrays:
    return AccountArrays(*(np.array(a, copy=True) for a in accounts))


def _frozen(accounts: AccountArrays, ts: np.ndarray, t: int) -> AccountArrays:
    """A copy of the accounts as of event time t: snapshots newer than t left out."""
    copy = _copy(accounts)
    copy.active[ts > t] = False
    return copy


class ShardService:
    """Answers round requests with this worker's frozen accounts."""

    def __init__(self, monitor: Monitor, names: TopicNames, kafka: Connection, worker_id: str,
                 owned_partitions: Callable[[], list[int]], caught_up: Callable[[int], bool],
                 retain: Callable[[], Awaitable[None]],
                 refresh: Callable[[], Awaitable[None]] | None = None):
        self.monitor = monitor
        self.names = names
        self.kafka = kafka
        self.worker_id = worker_id
        self.owned_partitions = owned_partitions
        self.caught_up = caught_up
        self.retain = retain
        self.refresh = refresh  # brings the consumed offsets of partitions just taken over up to date
        self.shards: dict[str, tuple[Shard, list[int], bool]] = {}
        self.lock = asyncio.Lock()  # the shard's accounts (the worker passes its account work's lock)
        self.frozen: dict[int, tuple[AccountArrays, list[int], bool]] = {}

    async def freeze(self, t: int, keep: int = 8) -> None:
        """Copy this shard's accounts at the cascade boundary t (every worker crosses the same boundaries: they read
        the same market stream in the same order). The leader's cascade for t may come later, while the feed
        has moved on; it then reads this copy, not a copy that has meanwhile taken newer snapshots. A copy
        taken before the accounts up to t were all consumed is not kept (the request falls back to filtering).
        The copy is made in a thread (hundreds of MB for a million accounts): the caller keeps the accounts
        unchanged until it returns (worker/evaluations.py)."""
        await self.retain()
        if not self.caught_up(t):
            return
        accounts = self.monitor.engine.accounts
        view, ts = accounts.view(), accounts.ts[: accounts.n]
        copy = await asyncio.to_thread(_frozen, view, ts, t)
        self.frozen[t] = (copy, sorted(self.owned_partitions()), True)
        for old in sorted(self.frozen)[:-keep]:
            del self.frozen[old]

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(**self.kafka.aiokafka(), group_id=None, enable_auto_commit=False,
                                    client_id=f"{self.worker_id}-shard")
        await consumer.start()
        try:
            tp = TopicPartition(self.names.CASCADE_ROUNDS, 0)
            consumer.assign([tp])
            await consumer.seek_to_end(tp)
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=100)
                for rec in batch.get(tp, []):
                    try:
                        await self._answer(_decode(rec.value))
                    except Exception:
                        log.exception("cascade round request at offset %d failed", rec.offset)
                if batch:  # the replies to every request of the batch leave together
                    await self.monitor.sink.flush()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _answer(self, req: dict) -> None:
        cid = req["cascade"]
        if req.get("done"):
            self.shards.pop(cid, None)
            return
        if req.get("step"):
            await self._answer_adl(cid, req)
            return
        if req["round"] == 1:
            t = int(req["t"])
            frozen = self.frozen.get(t)
            if frozen is not None and frozen[1] != sorted(self.owned_partitions()):
                frozen = None  # partitions moved since (a worker died): answer for the ones owned now
            if frozen is not None:  # the accounts as they were when this worker's feed crossed the boundary t
                copy, partitions, caught_up = frozen
            else:
                async with self.lock:
                    await self.retain()
                    if self.refresh is not None:
                        await self.refresh()
                    accounts = self.monitor.engine.accounts
                    # the cascade's event time: a shard whose market ran ahead leaves out snapshots newer than it
                    # in a thread, like `freeze`: the copy of a million accounts stood the loop 0.6-1.0 s (the
                    # cascades of an idle flush, whose time is no boundary the feed froze)
                    copy = await asyncio.to_thread(_frozen, accounts.view(), accounts.ts[: accounts.n], t)
                    partitions, caught_up = sorted(self.owned_partitions()), self.caught_up(t)
            # liquidate_round only reads the accounts (the round each account fell is the Shard's own array; with
            # partial liquidation the quantities it changes are its own copy)
            liq = self.monitor.cfg.liquidation
            shard = Shard(copy, self.monitor.engine.layout.risk_params, fee_rate=liq.fee_rate,
                          partial=liq.partial_step(), adl_rule=adl_rule(self.monitor.cfg))
            self.shards[cid] = (shard, partitions, caught_up)
        entry = self.shards.get(cid)
        if entry is None:  # joined mid-cascade (restart, rebalance): the coordinator will time out and retry
            return
        shard, partitions, caught_up = entry
        exposure = None
        if req["round"] == 1 and "base_index" in req:
            lay = self.monitor.engine.layout
            by_asset = np.zeros(len(lay.assets))
            n = shard.accounts.active.shape[0]
            # in threads (the kernels release the GIL; the frozen copy is this shard's own): the feed keeps going
            liq, cluster, total = await asyncio.to_thread(
                exposure_summary, np.asarray(req["base_index"], dtype=np.float64),
                np.asarray(req["base_mark"], dtype=np.float64), shard.accounts, lay.risk_params,
                float(req["cluster_health"]), by_asset, np.empty(n), np.empty(n))
            exposure = {"liquidatable": liq, "cluster": cluster, "total": total, "collateral": by_asset.tolist()}
        res = await asyncio.to_thread(shard.run, RoundRequest(req["round"], req["commit"],
                                                              np.asarray(req["index"], dtype=np.float64),
                                                              np.asarray(req["mark"], dtype=np.float64)),
                                      len(req["index"]))
        await self.monitor.sink.emit(self.names.CASCADE_FLOWS, {
            "cascade": cid, "round": req["round"], "worker": self.worker_id, "partitions": partitions,
            "count": res.count, "notional": res.notional, "net_sold": res.net_sold.tolist(),
            "fees": res.fees, "deficit": res.deficit, "bankrupt_notional": res.bankrupt_notional,
            "bankrupt": res.bankrupt, "bankrupt_by_instrument": res.bankrupt_by_instrument.tolist(),
            "partial": res.partial, "bankrupt_by_side": res.bankrupt_by_side.tolist(),
            "caught_up": caught_up, "exposure": exposure}, key=cid.encode())

    async def _answer_adl(self, cid: str, req: dict) -> None:
        """Auto-deleveraging's two steps of a round (kernels/adl.py): this shard's queue, then closing its part."""
        entry = self.shards.get(cid)
        if entry is None:  # joined mid-cascade: the coordinator times out and retries
            return
        shard, partitions, _ = entry
        groups = (2, int(req["instruments"]))
        if req["step"] == "adl_queue":
            got = await asyncio.to_thread(shard.queue, AdlQueue(req["round"], _unpack(req["index"], np.float64),
                                                                _unpack(req["mark"], np.float64),
                                                                _unpack(req["need"], np.bool_, groups)))
            reply = {"groups": _pack(got.groups), "keys": _pack(got.keys), "notionals": _pack(got.notionals)}
        else:
            done = await asyncio.to_thread(shard.deleverage, AdlClose(
                req["round"], _unpack(req["mark"], np.float64), _unpack(req["cutoff"], np.float64, groups),
                _unpack(req["tie"], np.float64, groups), float(req["loss_rate"])))
            reply = {"accounts": done.accounts, "closed": _pack(done.closed)}
        await self.monitor.sink.emit(self.names.CASCADE_FLOWS, {
            "cascade": cid, "round": req["round"], "step": req["step"], "worker": self.worker_id,
            "partitions": partitions, **reply}, key=cid.encode())


class Coordinator(StressRuns):
    """Runs every configured scenario × severity as a distributed cascade (on the leader)."""

    def __init__(self, monitor: Monitor, names: TopicNames, kafka: Connection, partitions: int, worker_id: str,
                 services=None, round_timeout_s: float = 15.0):
        async def emit(result: dict) -> None:  # published by the leadership with the alerts on them (worker/leader.py)
            self.results.append(result)

        self.results: list[dict] = []
        super().__init__(monitor.engine, monitor.cfg, monitor.metrics, monitor.config_id, emit)
        self.monitor = monitor
        self.names = names
        self.kafka = kafka
        self.partitions = partitions
        self.worker_id = worker_id
        self.round_timeout_s = round_timeout_s
        self.replies: dict[tuple[str, int, str], list[dict]] = {}
        self.arrived = asyncio.Event()
        self.provisional = False
        self.services = services
        self._listening = asyncio.Event()

    async def start(self) -> None:
        """Listen for replies (a supervised service: restarted, from the end of the topic, after a failure; a
        round in flight then times out and the run is retried)."""
        if self.services is not None:
            self.services.start("cascade replies", self._collect)
        else:
            asyncio.get_running_loop().create_task(self._collect())
        await self._listening.wait()

    async def _collect(self) -> None:
        consumer = AIOKafkaConsumer(**self.kafka.aiokafka(), group_id=None, enable_auto_commit=False,
                                    client_id=f"{self.worker_id}-coordinator")
        await consumer.start()
        try:
            tp = TopicPartition(self.names.CASCADE_FLOWS, 0)
            consumer.assign([tp])
            await consumer.seek_to_end(tp)
            self._listening.set()
            while True:
                batch = await consumer.getmany(tp, timeout_ms=200, max_records=1000)
                for rec in batch.get(tp, []):
                    try:
                        msg = _decode(rec.value)
                        self.replies.setdefault((msg["cascade"], msg["round"], msg.get("step", "")), []).append(msg)
                    except Exception as e:  # noqa: BLE001 - a reply we cannot read is no reply: the round retries
                        log.warning("cascade reply at offset %d unreadable: %s", rec.offset, e)
                if batch:  # wake every waiting round; later waiters take the fresh event
                    arrived, self.arrived = self.arrived, asyncio.Event()
                    arrived.set()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _ask(self, cid: str, req, t: int, extra: dict | None):
        """One request of `cascade_rounds` to every shard, and their answers as one."""
        if isinstance(req, RoundRequest):
            return await self._round(cid, req, t, extra)
        groups = req.need if isinstance(req, AdlQueue) else req.cutoff
        step = "adl_queue" if isinstance(req, AdlQueue) else "adl_close"
        msg = {"cascade": cid, "round": req.round_no, "step": step, "t": t, "instruments": groups.shape[1],
               "mark": _pack(np.asarray(req.mark, dtype=np.float64))}
        if isinstance(req, AdlQueue):
            msg.update(index=_pack(np.asarray(req.index, dtype=np.float64)), need=_pack(req.need.astype(np.bool_)))
        else:
            msg.update(cutoff=_pack(req.cutoff), tie=_pack(req.tie), loss_rate=req.loss_rate)
        await self.monitor.sink.emit(self.names.CASCADE_ROUNDS, msg, key=cid.encode())
        await self.monitor.sink.flush()
        got = await self._gather(cid, req.round_no, step)
        if step == "adl_queue":
            return combine([AdlQueueResult(_unpack(r["groups"], np.int64), _unpack(r["keys"], np.float64),
                                           _unpack(r["notionals"], np.float64)) for r in got]
                           or [AdlQueueResult(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))])
        return combine([AdlCloseResult(int(r["accounts"]), _unpack(r["closed"], np.float64, groups.shape))
                        for r in got] or [AdlCloseResult(0, np.zeros(groups.shape))])

    async def _gather(self, cid: str, round_no: int, step: str = "") -> list[dict]:
        """Every partition's answer to a request (ordered by partition), or CascadeAborted after the timeout."""
        deadline = time.monotonic() + self.round_timeout_s
        want = set(range(self.partitions))
        while True:
            arrived = self.arrived  # taken before looking: a reply landing meanwhile still wakes this round
            got = self.replies.get((cid, round_no, step), [])
            covered = [p for r in got for p in r["partitions"]]
            if set(covered) == want and len(covered) == len(want):
                break
            if time.monotonic() > deadline:
                raise CascadeAborted(f"round {round_no}{' ' + step if step else ''}: partitions "
                                     f"{sorted(want - set(covered))} unanswered after {self.round_timeout_s:.0f} s "
                                     "(rebalance or a worker down)")
            try:
                await asyncio.wait_for(arrived.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
        del self.replies[(cid, round_no, step)]
        return sorted((r for r in got if r["partitions"]), key=lambda r: min(r["partitions"]))

    async def _round(self, cid: str, req: RoundRequest, t: int, extra: dict | None = None) -> RoundResult:
        await self.monitor.sink.emit(self.names.CASCADE_ROUNDS, {
            "cascade": cid, "round": req.round_no, "commit": req.commit, "t": t,
            "index": req.index.tolist(), "mark": req.mark.tolist(), **(extra or {})}, key=cid.encode())
        await self.monitor.sink.flush()
        got = await self._gather(cid, req.round_no)
        if req.round_no == 1 and not all(r["caught_up"] for r in got):
            raise NotAligned(f"a shard has not applied every account event up to {t} yet")
        if any(r.get("exposure") for r in got):
            self.exposures = [r["exposure"] for r in got if r.get("exposure")]
        if not got:
            return RoundResult(0, 0.0, np.zeros(req.index.shape[0]))
        return sum_results([RoundResult(r["count"], r["notional"], np.asarray(r["net_sold"]), r.get("fees", 0.0),
                                        r.get("deficit", 0.0), r.get("bankrupt_notional", 0.0), r.get("bankrupt", 0),
                                        np.asarray(r["bankrupt_by_instrument"], dtype=np.float64)
                                        if r.get("bankrupt_by_instrument") is not None else None,
                                        r.get("partial", 0),
                                        np.asarray(r["bankrupt_by_side"], dtype=np.float64)
                                        if r.get("bankrupt_by_side") is not None else None)
                            for r in got])

    async def run_one(self, pv, scenario: str, severity: float, with_exposure: bool = False) -> dict:
        """One distributed cascade on the market snapshot `pv` (a PriceView taken at an evaluation boundary),
        once every shard has applied the accounts up to its event time."""
        for attempt in range(600):
            try:
                return await self._run_once(pv, scenario, severity, with_exposure)
            except NotAligned:
                await asyncio.sleep(0.1)
        raise CascadeAborted(f"shards still behind event time {pv.t} after 60 s")

    async def _run_once(self, pv, scenario: str, severity: float, with_exposure: bool) -> dict:
        eng = self.monitor.engine
        lay = eng.layout
        gen = cascade_rounds(float(pv.t), float(severity), lay.scenario_direction(scenario), pv.quotes,
                             lay.index_params, lay.mark_params, pv.index, lay.impact_params,
                             lay.venue_id[self.monitor.cfg.liquidation.venue], self.monitor.cfg.stress.max_rounds,
                             self.monitor.cfg.liquidation.insurance_fund, adl_rule(self.monitor.cfg))
        cid = f"{self.worker_id}-{uuid.uuid4().hex[:10]}"
        extra = None
        if with_exposure:
            extra = {"base_index": pv.index.tolist(), "base_mark": pv.mark.tolist(),
                     "cluster_health": self.monitor.cfg.alerts.margin_cluster.health_below}
        req = next(gen)
        try:
            while True:
                req = gen.send(await self._ask(cid, req, pv.t, extra if req.round_no == 1 else None))
        except StopIteration as done:
            res = done.value
        finally:
            await self.monitor.sink.emit(self.names.CASCADE_ROUNDS, {"cascade": cid, "done": True},
                                         key=cid.encode())
        return cascade_dict(eng, pv.t, scenario, severity, res)

    async def run_all(self, pv):
        self.provisional = False
        self.results = []
        try:
            return await super().run_all(pv)
        finally:
            await self.monitor.sink.flush()

    def take_results(self) -> list[dict]:
        """The cascade events of the last run, to publish (once)."""
        out, self.results = self.results, []
        return out
