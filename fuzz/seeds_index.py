"""Writes the seed corpus of the receiver index table harness
(fuzz/index_table.c) to fuzz/corpus/index_table: run it again when the
harness's input layout changes. Deterministic (a fixed random seed), so the
committed files only change when this script does. To be folded into
fuzz/seeds.py (index_table_seeds takes the rng like the others there)."""
import random
import struct

from seeds import write_corpus


# operation kinds (low 4 bits; FAIL fails the next allocation)
INSERT, REPLACE, REMOVE, LOOKUP = 0, 3, 5, 8
BULK_INSERT, BULK_REMOVE, RECLAIM, QUIESCE, QUIESCE_ALL_RECLAIM, SWEEP = 10, 11, 12, 13, 14, 15
FAIL = 0x10
# where an index comes from
POOL, STORED, RECENT, SMALL, TOP, RAW = 0, 3, 4, 5, 6, 7
# where a value comes from
V_SMALL, V_EDGE, V_RAW, V_STORED = 0, 1, 2, 3
# expected value of replace and remove
ANY, RIGHT, WRONG, E_RAW = 0, 1, 2, 3


def header(log2, hooks=False, same_seed=False, fail_new=False, epochs=0, buckets=0,
           seed=0) -> bytes:
    """log2 4..9: 16..512 entries; buckets: low 2 bits put pool A that far
    before the last entry, the rest is pool B's home entry."""
    return bytes([(log2 - 4) | hooks << 3 | same_seed << 4 | fail_new << 5 | epochs << 6,
                  buckets, seed >> 8 & 0xff, seed & 0xff])


def op(kind, index_from=POOL, value_from=V_SMALL, expected_from=ANY, ix=0, vx=0) -> bytes:
    return bytes([kind, index_from, value_from, expected_from]) + struct.pack("<II", ix, vx)


def bulk_insert(start, n, value=1) -> bytes:
    """n (1..64) consecutive pool indices, values from `value` on."""
    return op(BULK_INSERT, ix=start, vx=(n - 1) | value << 8)


def bulk_remove(n, right=True) -> bytes:
    return op(BULK_REMOVE, expected_from=RIGHT if right else ANY, vx=n - 1)


def churn(rng, count, pool=256, fail=0.0) -> bytes:
    """Single inserts (of pool indices and of a few spread ones), removes
    (mostly of stored indices, so that tombstones pile up and rebuilds
    follow), replaces and lookups; `pool` limits the pool indices (fewer:
    more hits)."""
    spread = [rng.getrandbits(32) for _ in range(pool // 4 + 4)]
    out = []
    for _ in range(count):
        kind = rng.choice((INSERT, INSERT, INSERT, REMOVE, REMOVE, REPLACE, LOOKUP))
        if kind == REMOVE:
            index_from = rng.choice((STORED, STORED, STORED, POOL, RECENT))
        else:
            index_from = rng.choice((POOL, RAW, RAW, STORED, RECENT))
        ix = rng.choice(spread) if index_from == RAW else rng.randrange(pool)
        if kind == INSERT and rng.random() < fail:
            kind |= FAIL
        out.append(op(kind, index_from, rng.choice((V_SMALL, V_STORED)),
                      rng.choice((ANY, RIGHT, RIGHT, WRONG)), ix, rng.getrandbits(32)))
    return b"".join(out)


def turnover(rng, log2, count, fail=0.0, fill=True) -> bytes:
    """Fill to one below capacity from the pools, then remove a stored
    index and insert a fresh one, `count` times: tombstones pile up where
    the fresh ones do not reuse them, and rebuilds sweep them."""
    cap = 1 << (log2 - 1)
    out = [bulk_insert(k, min(64, cap - 1 - k), value=k + 1)
           for k in range(0, cap - 1, 64) if fill]
    for _ in range(count):
        out.append(op(REMOVE, STORED, expected_from=rng.choice((ANY, RIGHT)),
                      ix=rng.getrandbits(32)))
        out.append(op(INSERT | (FAIL if rng.random() < fail else 0), RAW,
                      rng.choice((V_SMALL, V_RAW)), ix=rng.getrandbits(32) | 1,
                      vx=rng.getrandbits(31) + 1))
    return b"".join(out)


def index_table_seeds(rng) -> dict[str, bytes]:
    seeds = {}
    # fill to half the entries, then one more (ENOSPC), then churn at the brim
    for log2 in (4, 6, 8):
        cap = 1 << (log2 - 1)
        body = [bulk_insert(k, min(64, cap + 2 - k), value=k) for k in range(0, cap + 2, 64)]
        body += [op(INSERT, RAW, V_RAW, ix=rng.getrandbits(32), vx=rng.getrandbits(31) + 1)]
        body += [churn(rng, 60)]
        seeds[f"fill-{1 << log2}"] = header(log2, buckets=rng.randrange(256),
                                            seed=rng.getrandbits(16)) + b"".join(body)
    # tombstones and rebuilds, with the reclaim hooks: arrays wait until the
    # readers pass a quiescent state
    for log2 in (4, 5, 7):
        body = [turnover(rng, log2, 6 << (log2 - 4))]
        for _ in range(10):
            body.append(churn(rng, 8, pool=48))
            body.append(turnover(rng, log2, 4, fill=False))
            body.append(op(rng.choice((QUIESCE, RECLAIM, QUIESCE_ALL_RECLAIM)),
                           vx=rng.getrandbits(1)))
        seeds[f"churn-hooks-{1 << log2}"] = header(
            log2, hooks=True, epochs=rng.randrange(4), buckets=rng.randrange(256),
            seed=rng.getrandbits(16)) + b"".join(body)
    # runs that wrap from the last entry to entry 0; every array the same seed
    body = [bulk_insert(0, 7), bulk_remove(3), bulk_insert(20, 5), churn(rng, 80, pool=24)]
    seeds["wrap-same-seed-16"] = header(4, hooks=True, same_seed=True, buckets=0,
                                        seed=rng.getrandbits(16)) + b"".join(body)
    body = [bulk_insert(0, 40), bulk_remove(20, right=False), bulk_insert(80, 30),
            op(QUIESCE, vx=1), op(RECLAIM), churn(rng, 60, pool=100)]
    seeds["wrap-64"] = header(6, hooks=True, buckets=1, seed=rng.getrandbits(16)) + b"".join(body)
    # replace and remove with the right, a wrong and any expected value
    body = [bulk_insert(0, 10, value=5)]
    for expected in (RIGHT, WRONG, ANY, E_RAW):
        for kind in (REPLACE, REMOVE):
            for _ in range(4):
                body.append(op(kind, rng.choice((STORED, POOL, RECENT)),
                               rng.choice((V_SMALL, V_STORED, V_EDGE)), expected,
                               rng.randrange(20), rng.getrandbits(32)))
        body.append(op(LOOKUP, RECENT, ix=rng.randrange(8)))
    seeds["expected-32"] = header(5, buckets=rng.randrange(256),
                                  seed=rng.getrandbits(16)) + b"".join(body)
    # index 0, the top of the range, any index; values 0, 1, the maximum and one above
    body = []
    for index_from in (SMALL, TOP, RAW):
        for edge in range(4):
            ix = rng.getrandbits(32)
            body += [op(INSERT, index_from, V_EDGE, ix=ix, vx=edge),
                     op(LOOKUP, index_from, ix=ix),
                     op(REPLACE, index_from, V_EDGE, ANY, ix=ix, vx=3 - edge),
                     op(REMOVE, index_from, expected_from=RIGHT, ix=ix)]
    body.append(op(LOOKUP, SMALL, ix=0))
    seeds["edges-64"] = header(6, seed=rng.getrandbits(16)) + b"".join(body)
    # allocations that fail: in the rebuilds of churn, and in dp_index_table_new
    for log2, hooks in ((4, True), (5, False)):  # without hooks: freed at once
        body = [turnover(rng, log2, 60, fail=0.3), churn(rng, 40, pool=40, fail=0.3),
                op(QUIESCE_ALL_RECLAIM)]
        seeds[f"no-memory-{1 << log2}"] = header(
            log2, hooks=hooks, fail_new=True, buckets=rng.randrange(256),
            seed=rng.getrandbits(16)) + b"".join(body)
    # 512 entries: pools A (last entry) and B (entry 0) make a run past the
    # probe limit, and the insert that meets it rebuilds under a new seed
    body = [bulk_insert(k, 64, value=k) for k in (0, 64, 128)] + [bulk_remove(30),
                                                                  churn(rng, 40)]
    seeds["probe-limit-512"] = header(9, hooks=True, buckets=0,
                                      seed=rng.getrandbits(16)) + b"".join(body)
    # replaced arrays that never pass: free must free them all
    body = [turnover(rng, 4, 50), churn(rng, 40, pool=20)]
    seeds["never-quiescent-16"] = header(4, hooks=True, epochs=3,
                                         seed=rng.getrandbits(16)) + b"".join(body)
    # a mix of everything
    seeds["mixed-128"] = header(7, hooks=True, buckets=rng.randrange(256),
                                seed=rng.getrandbits(16)) + b"".join(
        op(rng.randrange(32), rng.randrange(8), rng.randrange(4), rng.randrange(4),
           rng.getrandbits(32), rng.getrandbits(32)) for _ in range(200))
    return seeds


def main() -> None:
    write_corpus("index_table", index_table_seeds(random.Random(20261206)))

if __name__ == "__main__":
    main()
