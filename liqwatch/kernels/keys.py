"""Which partition a key lands on: Kafka's default partitioner (the Java client's murmur2), over many keys at once.

A worker drops the accounts of partitions it no longer owns after a rebalance, so it needs every account's
partition; computed in Python (aiokafka's murmur2) that was ~8 µs a key, 2.5 s of the event loop at 300,000
accounts. Here the keys are one byte buffer with offsets, hashed in one pass.
"""

import numpy as np
from numba import njit

@njit(cache=True, nogil=True)
def murmur2_partitions(buf, offsets, partitions, out):
    """out[k] = the partition of the key buf[offsets[k]:offsets[k+1]] among `partitions` (Java's
    `Utils.toPositive(Utils.murmur2(key)) % partitions`). 32-bit arithmetic in int64, masked: numba widens
    uint32 products."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    for k in range(out.shape[0]):
        lo, hi = offsets[k], offsets[k + 1]
        n = hi - lo
        h = (0x9747B28C ^ n) & mask
        for i in range(n // 4):
            p = lo + 4 * i
            w = (np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8) | (np.int64(buf[p + 2]) << 16)
                 | (np.int64(buf[p + 3]) << 24))
            w = (w * m) & mask
            w ^= w >> 24
            w = (w * m) & mask
            h = ((h * m) & mask) ^ w
        tail = lo + (n & ~3)
        extra = n % 4
        if extra >= 3:
            h ^= np.int64(buf[tail + 2]) << 16
        if extra >= 2:
            h ^= np.int64(buf[tail + 1]) << 8
        if extra >= 1:
            h ^= np.int64(buf[tail])
            h = (h * m) & mask
        h ^= h >> 13
        h = (h * m) & mask
        h ^= h >> 15
        out[k] = (h & 0x7FFFFFFF) % partitions


def partitions_of(keys: list[str], partitions: int) -> np.ndarray:
    """The partition of each key (str, UTF-8), as Kafka's default partitioner assigns it."""
    encoded = [k.encode() for k in keys]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, dtype=np.uint8)
    out = np.empty(len(encoded), dtype=np.int32)
    murmur2_partitions(buf, offsets, partitions, out)
    return out
