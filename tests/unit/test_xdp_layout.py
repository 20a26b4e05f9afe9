"""The XDP backend's plans that need no kernel: which (WAN interface,
receive queue) each worker serves, and when the WAN programs' handshake
rate limit is on."""
import pytest

from dataplane.xdp_backend import XdpPlumbing, XdpUnavailable, worker_layout

# (interfaces with their receive queues, workers wanted, limit,
#  expected layout, expected queues left to the kernel)
LAYOUTS = [
    ({"eth0": 1}, 1, 16, [("eth0", 0)], []),
    ({"eth0": 1}, 3, 16, [("eth0", 0)], []),                      # one per queue at most
    ({"eth0": 4}, 1, 16, [("eth0", 0)], [("eth0", 1), ("eth0", 2), ("eth0", 3)]),
    ({"eth0": 4}, 2, 16, [("eth0", 0), ("eth0", 1)], [("eth0", 2), ("eth0", 3)]),
    ({"eth0": 1, "eth1": 1}, 1, 16, [("eth0", 0), ("eth1", 0)], []),  # one per interface
    ({"eth0": 2, "eth1": 1}, 3, 16, [("eth0", 0), ("eth1", 0), ("eth0", 1)], []),
    ({"eth0": 2, "eth1": 2}, 3, 16, [("eth0", 0), ("eth1", 0), ("eth0", 1)], [("eth1", 1)]),
    ({"eth0": 8}, 16, 4, [("eth0", q) for q in range(4)], [("eth0", q) for q in range(4, 8)]),
]


@pytest.mark.parametrize("queues, wanted, limit, layout, unserved", LAYOUTS)
def test_worker_layout(queues, wanted, limit, layout, unserved):
    got_layout, got_unserved = worker_layout(list(queues), queues, wanted, limit)
    assert got_layout == layout
    assert got_unserved == unserved
    # every queue is served by exactly one worker or left to the kernel
    assert sorted(got_layout + got_unserved) == sorted(
        (i, q) for i, n in queues.items() for q in range(n))


def test_more_interfaces_than_workers_can_serve_is_refused_with_what_to_do():
    with pytest.raises(XdpUnavailable, match=r"3 WAN interfaces, but at most 2 workers: name at "
                                             r"most 2 in \[DataPlane\] Interfaces"):
        worker_layout(["a", "b", "c"], {"a": 1, "b": 1, "c": 1}, 1, 2)


class FakeWanProgram:
    def __init__(self):
        self.rest = []

    def set_ratelimit_rest(self, rest: bool) -> None:
        self.rest.append(rest)


def test_rate_limit_is_on_under_load_and_for_the_hold_after():
    xdp = XdpPlumbing("dp0", 1420, 51820, [("eth0", 0), ("eth1", 0)])
    progs = {"eth0": FakeWanProgram(), "eth1": FakeWanProgram()}
    xdp.wan_progs, xdp._resting = progs, True
    hold = XdpPlumbing.RATELIMIT_HOLD_SECONDS
    steps = [  # (time, under load, resting after)
        (0.0, False, True),
        (1.0, True, False),
        (2.0, False, False),             # the control plane's load has passed
        (1.0 + hold - 0.1, False, False),
        (1.0 + hold + 0.1, False, True),
        (20.0, True, False),
        (20.0 + hold, False, True),
    ]
    for i, (now, load, resting) in enumerate(steps):
        xdp.follow_load(load, now=now)
        assert xdp._resting is resting, f"step {i}: t={now} under_load={load}"
    # every WAN program follows, and is written only when the state changes
    for prog in progs.values():
        assert prog.rest == [False, True, False, True]
