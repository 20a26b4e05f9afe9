"""Real-time workers (RealtimePriority): the device starts its workers
under SCHED_FIFO, and the peer lock, which the control plane shares with
them, lets a holder of the default policy finish while real-time waiters
want its CPU (a spin lock there waits for the kernel's RT throttling)."""
import errno
import os
import subprocess
import sys
import time

import pytest

from dataplane._native import lib
from dataplane.device import Device, DeviceError
from tests.unit.test_keypairs import make_device

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="SCHED_FIFO needs root (CAP_SYS_NICE)")


def test_the_peer_lock_excludes_under_contention():
    assert lib.dp_device_test_lock(8, 20000, 0, -1) == 8 * 20000


@needs_root
@pytest.mark.parametrize("threads", [2, 6])
def test_a_holder_finishes_while_real_time_waiters_share_its_cpu(threads):
    """Every other thread real-time, all on one CPU, holders yielding
    inside the lock. In a child process with a deadline: a waiter that
    spins instead of sleeping keeps the holder off the CPU (with the old
    spin lock, 4 such threads had not finished after 30 s)."""
    rounds = 20000
    code = (f"from dataplane._native import lib; "
            f"print(lib.dp_device_test_lock({threads}, {rounds}, 5, 0))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                                 os.path.abspath(__file__)))))
    except subprocess.TimeoutExpired:
        pytest.fail("the lock test did not finish in 60 s: a real-time waiter starved the holder")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == threads * rounds


def test_the_priority_is_checked_and_set_before_start_only():
    d = make_device()
    try:
        with pytest.raises(ValueError, match="1..99"):
            d.set_realtime(100)
        assert lib.dp_device_set_realtime(d._dev, 100) == -errno.EINVAL  # the native check
        d.set_realtime(0)
        d.start()
        with pytest.raises(DeviceError) as e:
            d.set_realtime(1)
        assert e.value.errno == errno.EBUSY  # the workers have their policy already
    finally:
        d.close()


def started_workers(n: int = 1) -> list:
    """worker_scheduling() once n workers have named themselves (each does
    first thing in its thread)."""
    deadline = time.monotonic() + 5
    while len(sched := Device.worker_scheduling()) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return sched


@needs_root
def test_workers_start_real_time_and_the_kernel_says_so():
    d = make_device()
    try:
        assert Device.worker_scheduling() == []  # no workers before start
        d.set_realtime(7)
        d.start()
        sched = started_workers()
        assert sched == [{"worker": 0, "policy": "fifo", "priority": 7}], sched
    finally:
        d.close()
    assert Device.worker_scheduling() == []
    d = make_device()
    try:
        d.start()  # the default: the caller's policy
        assert started_workers() == [{"worker": 0, "policy": "other", "priority": 0}]
    finally:
        d.close()
