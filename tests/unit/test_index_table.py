"""The receiver index table (native/tables/indextable.c) against a
deliberately slow reference (a dict), plus its bounds: any index but 0,
at most half the entries used, probes never past the limit, tombstones
swept by rebuilds."""
import random

from hypothesis import given, settings, strategies as st

from dataplane._native import ffi, lib

EEXIST, ENOENT = -lib.DP_TABLES_EEXIST, -lib.DP_TABLES_ENOENT
ENOSPC, EINVAL = -lib.DP_TABLES_ENOSPC, -lib.DP_TABLES_EINVAL
VALUE_MAX = lib.DP_INDEX_VALUE_MAX


class Table:
    def __init__(self, log2: int):
        self.t = ffi.gc(lib.dp_index_table_new(log2, ffi.NULL), lib.dp_index_table_free)
        assert self.t != ffi.NULL

    def insert(self, index, value):
        return lib.dp_index_table_insert(self.t, index, value)

    def remove(self, index, expected=0):
        return lib.dp_index_table_remove(self.t, index, expected)

    def replace(self, index, expected, value):
        return lib.dp_index_table_replace(self.t, index, expected, value)

    def lookup(self, index):
        return lib.dp_index_table_lookup(self.t, index)

    def stats(self):
        st_ = ffi.new("struct dp_index_table_stats *")
        lib.dp_index_table_stats(self.t, st_)
        return {name: getattr(st_, name)
                for name, _ in ffi.typeof("struct dp_index_table_stats").fields}


def test_sizes_out_of_range_are_refused():
    assert lib.dp_index_table_new(lib.DP_INDEX_LOG2_MIN - 1, ffi.NULL) == ffi.NULL
    assert lib.dp_index_table_new(lib.DP_INDEX_LOG2_MAX + 1, ffi.NULL) == ffi.NULL


def test_index_zero_and_reserved_values_are_refused():
    t = Table(6)
    assert t.insert(0, 1) == EINVAL
    assert t.insert(5, 0) == EINVAL
    assert t.insert(5, VALUE_MAX + 1) == EINVAL
    assert t.insert(5, VALUE_MAX) == 0 and t.lookup(5) == VALUE_MAX
    assert t.lookup(0) == 0
    # a tombstone carries index 0: looking up 0 after a removal finds nothing
    assert t.remove(5) == 0 and t.lookup(0) == 0 and t.lookup(5) == 0


def test_extreme_indices_and_collisions_in_every_low_bit():
    """Indices that agree in their low bits (the old slot scheme put them
    in one slot) and the ends of the range all coexist."""
    t = Table(8)
    indices = [1, 0xFFFFFFFF, 0x80000000] + [0x1234 + (k << 16) for k in range(1, 60)]
    for n, index in enumerate(indices, 1):
        assert t.insert(index, n) == 0, hex(index)
    assert [t.lookup(i) for i in indices] == list(range(1, len(indices) + 1))
    assert t.insert(0x1234 + (5 << 16), 999) == EEXIST
    assert t.lookup(0x1234) == 0


def test_full_at_half_the_entries():
    t = Table(6)  # 64 entries, 32 indices
    rnd = random.Random(1)
    stored = rnd.sample(range(1, 2**32), 40)
    results = [t.insert(i, 7) for i in stored]
    assert results[:32] == [0] * 32 and set(results[32:]) == {ENOSPC}
    st_ = t.stats()
    assert (st_["used"], st_["capacity"], st_["entries"]) == (32, 32, 64)
    assert t.remove(stored[0]) == 0 and t.insert(stored[35], 7) == 0
    assert t.lookup(stored[35]) == 7 and t.lookup(stored[0]) == 0


def test_churn_keeps_tombstones_and_probes_bounded():
    """Insert/remove cycles leave tombstones; rebuilds sweep them, so
    entries plus tombstones stay under 5/8 of the array and the longest
    probe (what a miss costs) stays short."""
    t = Table(10)  # 1024 entries, 512 indices
    rnd = random.Random(2)
    live = set()
    for _ in range(20_000):
        if len(live) < 500 and (not live or rnd.random() < 0.5):
            i = rnd.randrange(1, 2**32)
            if t.insert(i, 3) == 0:
                live.add(i)
        else:
            i = rnd.choice(sorted(live))
            assert t.remove(i) == 0
            live.discard(i)
        st_ = t.stats()
        assert (st_["used"] + st_["tombstones"]) * 8 <= st_["entries"] * 5
        assert st_["max_probe"] <= lib.DP_INDEX_PROBE_LIMIT
    st_ = t.stats()
    assert st_["rebuilds"] > 10
    assert st_["max_probe"] < 64
    assert all(t.lookup(i) == 3 for i in live)


def test_runs_of_consecutive_indices_spread():
    """A control plane numbering its sessions 1, 2, 3, ... must not make
    one long run: the hash spreads them."""
    t = Table(18)
    for i in range(1, 100_001):
        assert t.insert(i, 1) == 0
    assert t.stats()["max_probe"] < 48
    assert t.lookup(100_000) == 1 and t.lookup(100_001) == 0


def test_100k_random_indices_fit_a_table_sized_for_100k_peers():
    from dataplane.interface import table_sizes
    _, log2 = table_sizes(100_000)
    t = Table(log2)
    rnd = random.Random(3)
    indices = rnd.sample(range(1, 2**32), 100_000)
    assert [i for i in indices if t.insert(i, (i % VALUE_MAX) or 1) != 0] == []
    st_ = t.stats()
    assert st_["used"] == 100_000 and st_["max_probe"] < 48
    assert st_["bytes"] >= 8 << log2 and st_["bytes"] < (8 << log2) + 4096
    assert all(t.lookup(i) == ((i % VALUE_MAX) or 1) for i in indices[::97])


# ---- random operations against a dict ----

ops = st.lists(st.tuples(st.sampled_from(["insert", "remove", "replace", "lookup"]),
                         st.integers(0, 40), st.integers(1, 5)), max_size=400)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(0, 2**32 - 1))
def test_random_operations_match_a_dict(plan, salt):
    """Few distinct indices (so operations hit the same ones again) in a
    small table (so it fills, and tombstones force rebuilds)."""
    t = Table(5)  # 32 entries, 16 indices
    ref = {}
    for op, k, v in plan:
        index = (k * 0x9E3779B1 + salt) & 0xFFFFFFFF if k else 0
        if op == "insert":
            if index == 0:
                want = EINVAL
            elif index in ref:
                want = EEXIST
            elif len(ref) >= 16:
                want = ENOSPC
            else:
                want = 0
                ref[index] = v
            assert t.insert(index, v) == want
        elif op == "remove":
            expected = v if v < 4 else 0
            ok = index in ref and (expected == 0 or ref[index] == expected)
            assert t.remove(index, expected) == (0 if ok else ENOENT)
            if ok:
                del ref[index]
        elif op == "replace":
            expected = v if v < 3 else 0
            ok = index in ref and (expected == 0 or ref[index] == expected)
            assert t.replace(index, expected, v + 10) == (0 if ok else ENOENT)
            if ok:
                ref[index] = v + 10
        assert t.lookup(index) == ref.get(index, 0)
    assert all(t.lookup(i) == v for i, v in ref.items())
    assert t.stats()["used"] == len(ref)


def test_lookups_during_churn_and_rebuilds_never_see_a_wrong_value():
    """Reader threads look up while the writer inserts, removes and
    rebuilds (cffi drops the GIL in each call, so they overlap). Indices
    that stay in the table are always found with their value; churned ones
    read as their value or absent, never as another's. Replaced arrays are
    kept until the end (the reclaim hook never says the readers are done),
    as the device's quiescent states would keep them while readers look."""
    import threading

    epochs = []

    @ffi.callback("uint64_t(void *)")
    def retire(ctx):
        epochs.append(len(epochs) + 1)
        return epochs[-1]

    @ffi.callback("int(void *, uint64_t)")
    def passed(ctx, epoch):
        return 0

    hooks = ffi.new("struct dp_index_reclaim *", {"retire": retire, "passed": passed})
    t = lib.dp_index_table_new(8, hooks)  # 256 entries: churn rebuilds it often
    rnd = random.Random(9)
    stable = {i: (i % 1000) + 1 for i in rnd.sample(range(1, 2**32), 40)}
    churn = {i: (i % 1000) + 2000 for i in rnd.sample(range(1, 2**32), 200)}
    for i, v in stable.items():
        assert lib.dp_index_table_insert(t, i, v) == 0
    stop = threading.Event()
    wrong = []

    def reader(seed):
        r = random.Random(seed)
        keys_s, keys_c = list(stable), list(churn)
        while not stop.is_set():
            i = r.choice(keys_s)
            if lib.dp_index_table_lookup(t, i) != stable[i]:
                wrong.append(("stable", i))
            i = r.choice(keys_c)
            got = lib.dp_index_table_lookup(t, i)
            if got not in (0, churn[i]):
                wrong.append(("churn", i, got))

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for th in readers:
        th.start()
    try:
        present = set()
        for _ in range(30_000):
            i = rnd.choice(list(churn))
            if i in present:
                assert lib.dp_index_table_remove(t, i, 0) == 0
                present.discard(i)
            elif len(present) < 80:
                assert lib.dp_index_table_insert(t, i, churn[i]) == 0
                present.add(i)
    finally:
        stop.set()
        for th in readers:
            th.join()
    st_ = ffi.new("struct dp_index_table_stats *")
    lib.dp_index_table_stats(t, st_)
    rebuilds = st_.rebuilds
    lib.dp_index_table_free(t)
    assert wrong == []
    assert rebuilds > 20 and len(epochs) == rebuilds
