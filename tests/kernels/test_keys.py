"""The partition kernel equals Kafka's default partitioner (aiokafka's murmur2, a port of the Java client's)."""

from hypothesis import given, settings, strategies as st
from aiokafka.partitioner import DefaultPartitioner

from liqwatch.kernels.keys import partitions_of


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=40), max_size=50), st.integers(1, 64))
def test_partitions_equal_the_default_partitioner(keys, partitions):
    every = list(range(partitions))
    assert partitions_of(keys, partitions).tolist() == [DefaultPartitioner()(k.encode(), every, every) for k in keys]


def test_known_partitions_of_account_ids():
    # every tail length (0-3 bytes after the 4-byte words), and a multi-byte character
    keys = ["a", "ab", "abc", "abcd", "acct-000001", "acct-1234567", "é-account"]
    every = list(range(12))
    assert partitions_of(keys, 12).tolist() == [DefaultPartitioner()(k.encode(), every, every) for k in keys]
