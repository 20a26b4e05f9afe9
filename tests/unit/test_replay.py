"""The anti-replay window (native/tables/replay.c): the numbered cases of
the Linux WireGuard counter self-test, re-tabled here, and random
sequences checked against a deliberately slow reference (a set of every
counter seen)."""
import random

import pytest
from hypothesis import given, settings, strategies as st

from dataplane._native import ffi, lib

WINDOW = lib.DP_REPLAY_WINDOW
REJECT = lib.DP_REPLAY_REJECT_AFTER_MESSAGES
# One past the window: the first distance from the highest counter that is
# too old.
LIM = WINDOW + 1
U64_MAX = 2**64 - 1


def new_window():
    r = ffi.new("struct dp_replay *")
    lib.dp_replay_init(r)
    return r


class SlowReplay:
    """Every accepted counter in a set; accept a counter below the reject
    limit that is new and no more than WINDOW below the highest."""

    def __init__(self):
        self.seen = set()
        self.highest = None

    def check(self, counter):
        if counter >= REJECT or counter in self.seen:
            return False
        if self.highest is not None and self.highest - counter > WINDOW:
            return False
        self.seen.add(counter)
        self.highest = counter if self.highest is None else max(self.highest, counter)
        return True


def test_parameters_are_wireguards():
    assert lib.DP_REPLAY_BITMAP_BITS == 8192
    assert lib.DP_REPLAY_WORD_BITS == 64
    assert lib.DP_REPLAY_BITMAP_WORDS * 64 == 8192
    assert WINDOW == 8192 - 64 == 8128
    assert REJECT == 2**64 - 2**13 - 1
    assert ffi.sizeof("struct dp_replay") == 8 + 8192 // 8


# The kernel's counter self-test (drivers/net/wireguard/selftest/counter.c),
# one fresh window, in order: (case number, counter, accepted).
KERNEL_SEQUENCE = [
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


def test_kernel_selftest_sequence():
    r = new_window()
    failed = [(num, counter, want) for num, counter, want in KERNEL_SEQUENCE
              if bool(lib.dp_replay_check(r, counter)) != want]
    assert failed == [], f"cases (number, counter, expected) that failed: {failed}"


def test_kernel_sequence_agrees_with_the_slow_reference():
    ref = SlowReplay()
    assert [ref.check(c) for _, c, _ in KERNEL_SEQUENCE] == [w for _, _, w in KERNEL_SEQUENCE]


# The kernel self-test's loops: each a fresh window fed counters in order;
# every one is accepted unless listed in the tail with False.
KERNEL_LOOPS = {
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


@pytest.mark.parametrize("name", KERNEL_LOOPS)
def test_kernel_selftest_loops(name):
    accepted_in_order, tail = KERNEL_LOOPS[name]
    r = new_window()
    rejected = [c for c in accepted_in_order if not lib.dp_replay_check(r, c)]
    assert rejected == []
    assert [(c, bool(lib.dp_replay_check(r, c))) for c, _ in tail] == tail


def test_init_forgets_everything():
    r = new_window()
    for c in (0, 5, 100_000, REJECT - 1):
        assert lib.dp_replay_check(r, c)
    lib.dp_replay_init(r)
    assert r.counter == 0
    assert all(w == 0 for w in r.bitmap)
    assert lib.dp_replay_check(r, 0) and lib.dp_replay_check(r, 5)


def test_null_window_accepts_nothing():
    assert lib.dp_replay_check(ffi.NULL, 0) == 0
    lib.dp_replay_init(ffi.NULL)  # no crash


def test_every_word_of_the_ring_after_jumps_of_every_size():
    """Jumps of 1..2 ring lengths: each clears exactly the skipped words,
    so old counters inside the window stay remembered and the rest are
    forgotten."""
    for jump in list(range(1, 200)) + [8127, 8128, 8129, 8191, 8192, 8193, 16384, 16447]:
        r = new_window()
        ref = SlowReplay()
        base = 100_000
        seq = [base - 3, base, base - 64, base + jump, base + jump - 1, base - 3, base - 64,
               base + jump - WINDOW, base + jump - WINDOW - 1, base, base + jump]
        got = [bool(lib.dp_replay_check(r, c)) for c in seq]
        assert got == [ref.check(c) for c in seq], f"jump {jump}"


# ---- random sequences against the slow reference ----

# A step is how to pick the next counter from the highest accepted so far.
steps = st.one_of(
    st.tuples(st.just("near"), st.integers(-300, 300)),
    st.tuples(st.just("edge"), st.integers(-WINDOW - 70, -WINDOW + 70)),
    st.tuples(st.just("window"), st.integers(-WINDOW - 200, WINDOW + 200)),
    st.tuples(st.just("words"), st.integers(-260, 260).map(lambda w: w * 64)),
    st.tuples(st.just("ring"), st.sampled_from([8127, 8128, 8129, 8191, 8192, 8193, 8256,
                                                16384, 2**20])),
    st.tuples(st.just("absolute"), st.integers(0, U64_MAX)),
    st.tuples(st.just("reject"), st.integers(-10_000, 3).map(lambda d: REJECT + d)),
    st.tuples(st.just("again"), st.integers(0, 10**9)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(steps, min_size=1, max_size=300))
def test_random_sequences_match_the_slow_reference(plan):
    r = new_window()
    ref = SlowReplay()
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
            f"counter {counter} (step {kind} {value}) after highest {top}")
    if ref.highest is not None:
        assert r.counter == ref.highest + 1


@pytest.mark.parametrize("seed", range(20))
def test_long_reordered_stream(seed):
    """A realistic stream: counters in order, shuffled in bursts of 64,
    some dropped, some duplicated later."""
    rnd = random.Random(seed)
    start = rnd.choice([0, rnd.randrange(2**40), REJECT - 6000])
    r = new_window()
    ref = SlowReplay()
    counters = list(range(start, start + 5000))
    for i in range(0, len(counters), 64):
        chunk = counters[i:i + 64]
        rnd.shuffle(chunk)
        counters[i:i + 64] = chunk
    stream = [c for c in counters if rnd.random() > 0.05]
    for c in rnd.sample(stream, 300):
        stream.insert(rnd.randrange(len(stream)), c)
    for c in stream:
        assert bool(lib.dp_replay_check(r, c)) == ref.check(c), f"counter {c}"
