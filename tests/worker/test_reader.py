"""The feed's reader groups librdkafka's messages by partition, in offset order, and judges errors, without a
broker: the consumer is replaced by one that hands over prepared messages."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from confluent_kafka import KafkaError, Message

from liqwatch.worker.reader import Reader, ReaderError


class _Handing:
    def __init__(self, msgs):
        self.msgs = msgs

    def consume(self, num_messages, timeout):
        out, self.msgs = self.msgs[:num_messages], self.msgs[num_messages:]
        return out


def _reader(msgs) -> Reader:
    r = object.__new__(Reader)
    r.consumer = _Handing(msgs)
    return r


def _fetch(msgs, max_records=1000):
    return asyncio.run(_reader(msgs).fetch(max_records, wait_s=0.01))


def _m(topic, partition, offset, error=None):
    return Message(topic=topic, partition=partition, offset=offset, value=f"{topic}{partition}@{offset}".encode(),
                   error=error)


def test_runs_of_partitions_are_grouped_in_offset_order():
    # librdkafka interleaves runs of partitions: a partition seen again later extends its first run
    msgs = ([_m("ticks", 0, k) for k in range(3)] + [_m("refs", 0, 0)] + [_m("ticks", 1, k) for k in range(2)]
            + [_m("ticks", 0, k) for k in range(3, 5)] + [_m("refs", 0, 1)])
    got = _fetch(msgs)
    assert list(got) == [TopicPartition("ticks", 0), TopicPartition("refs", 0), TopicPartition("ticks", 1)]
    assert [r.offset for r in got[TopicPartition("ticks", 0)]] == [0, 1, 2, 3, 4]
    assert got[TopicPartition("refs", 0)].values() == [b"refs0@0", b"refs0@1"]
    assert [r.value for r in got[TopicPartition("ticks", 1)]] == [b"ticks1@0", b"ticks1@1"]
    # the same topic name with another partition, and the same partition of another topic, are other groups
    assert sum(len(v) for v in got.values()) == len(msgs)


def test_a_retriable_error_is_skipped_and_a_fatal_one_raises():
    retriable = KafkaError(KafkaError._TRANSPORT, "broker down", retriable=True)
    got = _fetch([_m("ticks", 0, 0), Message(topic="ticks", partition=0, error=retriable), _m("ticks", 0, 1)])
    assert [r.offset for r in got[TopicPartition("ticks", 0)]] == [0, 1]
    fatal = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "not allowed")
    with pytest.raises(ReaderError, match=r"ticks\[0\]"):
        _fetch([_m("ticks", 0, 0), Message(topic="ticks", partition=0, error=fatal)])


def test_an_empty_queue_waits_and_gives_nothing():
    assert _fetch([]) == {}
