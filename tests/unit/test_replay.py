"""The anti-replay window (native/tables/replay.c), at every window size a
device may be configured with: the numbered cases of the Linux WireGuard
counter self-test, re-tabled here for each size, and random sequences
checked against a deliberately slow reference (a set of every counter
seen)."""
import random

import pytest
from hypothesis import given, settings, strategies as st

from dataplane._native import ffi, lib

REJECT = lib.DP_REPLAY_REJECT_AFTER_MESSAGES
U64_MAX = 2**64 - 1
# Every size a device takes: powers of two from DP_REPLAY_BITS_MIN to _MAX.
SIZES = [1 << k for k in range(lib.DP_REPLAY_BITS_MIN.bit_length() - 1,
                               lib.DP_REPLAY_BITS_MAX.bit_length())]


def window_of(bits: int) -> int:
    """How far below the highest a counter may be: one word is the spare."""
    return bits - 64


def new_window(bits: int):
    buf = ffi.new("uint64_t[]", lib.dp_replay_size(bits) // 8)
    r = ffi.cast("struct dp_replay *", buf)
    assert lib.dp_replay_init(r, bits) == 0
    return r, buf  # keep buf alive with r


class SlowReplay:
    """Every accepted counter in a set; accept a counter below the reject
    limit that is new and no more than `window` below the highest."""

    def __init__(self, window: int):
        self.window = window
        self.seen = set()
        self.highest = None

    def check(self, counter):
        if counter >= REJECT or counter in self.seen:
            return False
        if self.highest is not None and self.highest - counter > self.window:
            return False
        self.seen.add(counter)
        self.highest = counter if self.highest is None else max(self.highest, counter)
        return True


def test_sizes_cover_wireguards_and_smaller():
    assert SIZES == [1024, 2048, 4096, 8192]
    assert lib.DP_REPLAY_BITS_DEFAULT == 8192  # the kernel's and wireguard-go's
    assert lib.DP_REPLAY_WORD_BITS == 64
    assert REJECT == 2**64 - 2**13 - 1
    for bits in SIZES:
        assert lib.dp_replay_size(bits) == ffi.sizeof("struct dp_replay") + bits // 8
        assert lib.dp_replay_window(bits) == window_of(bits)
    assert ffi.sizeof("struct dp_replay") == 16


@pytest.mark.parametrize("bits", [0, 64, 512, 1000, 1536, 3000, 16384, 2**31])
def test_sizes_that_are_refused(bits):
    assert lib.dp_replay_size(bits) == 0 and lib.dp_replay_window(bits) == 0
    buf = ffi.new("uint64_t[]", 2048)
    assert lib.dp_replay_init(ffi.cast("struct dp_replay *", buf), bits) == -lib.DP_TABLES_EINVAL


# The kernel's counter self-test (drivers/net/wireguard/selftest/counter.c),
# one fresh window, in order: (case number, counter, accepted). LIM is one
# past the window: the first distance from the highest that is too old.
def kernel_sequence(bits):
    WINDOW = window_of(bits)
    LIM = WINDOW + 1
    return [
        (1, 0, True),
        (2, 1, True),
        (3, 1, False),
        (4, 9, True),
        (5, 8, True),
        (6, 7, True),
        (7, 7, False),
        (8, LIM, True),
        (9, LIM - 1, True),
        (10, LIM - 1, False),
        (11, LIM - 2, True),
        (12, 2, True),
        (13, 2, False),
        (14, LIM + 16, True),
        (15, 3, False),            # LIM + 16 - 3 > WINDOW: too old
        (16, LIM + 16, False),
        (17, LIM * 4, True),
        (18, LIM * 4 - (LIM - 1), True),   # exactly WINDOW below the highest
        (19, 10, False),
        (20, LIM * 4 - LIM, False),        # WINDOW + 1 below
        (21, LIM * 4 - (LIM + 1), False),
        (22, LIM * 4 - (LIM - 2), True),
        (23, LIM * 4 + 1 - LIM, False),    # accepted at 18 already
        (24, 0, False),
        (25, REJECT, False),
        (26, REJECT - 1, True),
        (27, REJECT, False),
        (28, REJECT - 1, False),
        (29, REJECT - 2, True),
        (30, REJECT + 1, False),
        (31, REJECT + 2, False),
        (32, REJECT - 2, False),
        (33, REJECT - 3, True),
        (34, 0, False),
    ]


@pytest.mark.parametrize("bits", SIZES)
def test_kernel_selftest_sequence(bits):
    r, _buf = new_window(bits)
    failed = [(num, counter, want) for num, counter, want in kernel_sequence(bits)
              if bool(lib.dp_replay_check(r, counter)) != want]
    assert failed == [], f"window {bits}: cases (number, counter, expected) that failed: {failed}"


@pytest.mark.parametrize("bits", SIZES)
def test_kernel_sequence_agrees_with_the_slow_reference(bits):
    ref = SlowReplay(window_of(bits))
    seq = kernel_sequence(bits)
    assert [ref.check(c) for _, c, _ in seq] == [w for _, _, w in seq]


# The kernel self-test's loops: each a fresh window fed counters in order;
# every one is accepted unless listed in the tail with False.
def kernel_loops(bits):
    WINDOW = window_of(bits)
    return {
        "up from 1, then 0 just inside": (
            list(range(1, WINDOW + 1)), [(0, True), (0, False)]),
        "up from 2, then 1 inside and 0 just outside": (
            list(range(2, WINDOW + 2)), [(1, True), (0, False)]),
        "down from WINDOW to 0": (
            list(range(WINDOW, -1, -1)), []),
        "down from WINDOW + 1 to 1, then 0 too old": (
            list(range(WINDOW + 1, 0, -1)), [(0, False)]),
        "down from WINDOW to 1, then a new highest pushes 0 out": (
            list(range(WINDOW, 0, -1)), [(WINDOW + 1, True), (0, False)]),
        "down from WINDOW to 0, then a new highest": (
            list(range(WINDOW, 0, -1)), [(0, True), (WINDOW + 1, True)]),
    }


@pytest.mark.parametrize("bits", SIZES)
@pytest.mark.parametrize("name", kernel_loops(8192))
def test_kernel_selftest_loops(bits, name):
    accepted_in_order, tail = kernel_loops(bits)[name]
    r, _buf = new_window(bits)
    rejected = [c for c in accepted_in_order if not lib.dp_replay_check(r, c)]
    assert rejected == []
    assert [(c, bool(lib.dp_replay_check(r, c))) for c, _ in tail] == tail


@pytest.mark.parametrize("bits", SIZES)
def test_init_and_reset_forget_everything(bits):
    r, buf = new_window(bits)
    assert r.words == bits // 64
    for c in (0, 5, 100_000, REJECT - 1):
        assert lib.dp_replay_check(r, c)
    lib.dp_replay_reset(r)
    assert r.counter == 0 and r.words == bits // 64
    assert all(w == 0 for w in r.bitmap[0:bits // 64])
    assert lib.dp_replay_check(r, 0) and lib.dp_replay_check(r, 5)
    for c in (0, 5, 100_000):
        lib.dp_replay_check(r, c)
    assert lib.dp_replay_init(r, bits) == 0 and r.counter == 0
    assert lib.dp_replay_check(r, 100_000)


def test_the_ring_stays_inside_its_allocation():
    """A small window writes only its own words: a canary just past the
    bitmap survives counters that sweep the whole ring many times."""
    bits = 1024
    size = lib.dp_replay_size(bits)
    buf = ffi.new("uint64_t[]", size // 8 + 4)
    for i in range(size // 8, size // 8 + 4):
        buf[i] = 0xA5A5A5A5A5A5A5A5
    r = ffi.cast("struct dp_replay *", buf)
    lib.dp_replay_init(r, bits)
    for c in list(range(0, 5000, 3)) + [10**6, 10**6 + 100_000, REJECT - 1]:
        lib.dp_replay_check(r, c)
    assert [buf[i] for i in range(size // 8, size // 8 + 4)] == [0xA5A5A5A5A5A5A5A5] * 4


def test_null_window_accepts_nothing():
    assert lib.dp_replay_check(ffi.NULL, 0) == 0
    assert lib.dp_replay_init(ffi.NULL, 8192) == -lib.DP_TABLES_EINVAL
    lib.dp_replay_reset(ffi.NULL)  # no crash


@pytest.mark.parametrize("bits", SIZES)
def test_every_word_of_the_ring_after_jumps_of_every_size(bits):
    """Jumps of 1..2 ring lengths: each clears exactly the skipped words,
    so old counters inside the window stay remembered and the rest are
    forgotten."""
    WINDOW = window_of(bits)
    for jump in list(range(1, 200)) + [WINDOW - 1, WINDOW, WINDOW + 1, bits - 1, bits, bits + 1,
                                       2 * bits, 2 * bits + 63]:
        r, _buf = new_window(bits)
        ref = SlowReplay(WINDOW)
        base = 100_000
        seq = [base - 3, base, base - 64, base + jump, base + jump - 1, base - 3, base - 64,
               base + jump - WINDOW, base + jump - WINDOW - 1, base, base + jump]
        got = [bool(lib.dp_replay_check(r, c)) for c in seq]
        assert got == [ref.check(c) for c in seq], f"window {bits}, jump {jump}"


# ---- random sequences against the slow reference ----

# A step is how to pick the next counter from the highest accepted so far;
# distances scale with the window.
def steps(bits):
    WINDOW = window_of(bits)
    return st.one_of(
        st.tuples(st.just("near"), st.integers(-300, 300)),
        st.tuples(st.just("edge"), st.integers(-WINDOW - 70, -WINDOW + 70)),
        st.tuples(st.just("window"), st.integers(-WINDOW - 200, WINDOW + 200)),
        st.tuples(st.just("words"), st.integers(-(bits // 32 + 4), bits // 32 + 4)
                  .map(lambda w: w * 64)),
        st.tuples(st.just("ring"), st.sampled_from([WINDOW - 1, WINDOW, WINDOW + 1, bits - 1,
                                                    bits, bits + 1, bits + 64, 2 * bits,
                                                    2**20])),
        st.tuples(st.just("absolute"), st.integers(0, U64_MAX)),
        st.tuples(st.just("reject"), st.integers(-10_000, 3).map(lambda d: REJECT + d)),
        st.tuples(st.just("again"), st.integers(0, 10**9)),
    )


@settings(max_examples=150, deadline=None)
@given(st.data())
@pytest.mark.parametrize("bits", SIZES)
def test_random_sequences_match_the_slow_reference(bits, data):
    plan = data.draw(st.lists(steps(bits), min_size=1, max_size=300))
    r, _buf = new_window(bits)
    ref = SlowReplay(window_of(bits))
    history = []
    for kind, value in plan:
        top = ref.highest or 0
        if kind in ("absolute", "reject"):
            counter = value
        elif kind == "again":
            counter = history[value % len(history)] if history else 0
        else:
            counter = top + value
        counter = min(max(counter, 0), U64_MAX)
        history.append(counter)
        want = ref.check(counter)
        assert bool(lib.dp_replay_check(r, counter)) == want, (
            f"window {bits}: counter {counter} (step {kind} {value}) after highest {top}")
    if ref.highest is not None:
        assert r.counter == ref.highest + 1


@pytest.mark.parametrize("bits", SIZES)
@pytest.mark.parametrize("seed", range(8))
def test_long_reordered_stream(bits, seed):
    """A realistic stream: counters in order, shuffled in bursts of 64,
    some dropped, some duplicated later."""
    rnd = random.Random(seed)
    start = rnd.choice([0, rnd.randrange(2**40), REJECT - 6000])
    r, _buf = new_window(bits)
    ref = SlowReplay(window_of(bits))
    counters = list(range(start, start + 5000))
    for i in range(0, len(counters), 64):
        chunk = counters[i:i + 64]
        rnd.shuffle(chunk)
        counters[i:i + 64] = chunk
    stream = [c for c in counters if rnd.random() > 0.05]
    for c in rnd.sample(stream, 300):
        stream.insert(rnd.randrange(len(stream)), c)
    for c in stream:
        assert bool(lib.dp_replay_check(r, c)) == ref.check(c), f"window {bits}: counter {c}"
