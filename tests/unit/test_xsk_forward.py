"""The raw AF_XDP forwarder of the bench's xsk-forward DUT
(native/xsk/dp_xsk_forward.h) refuses bad arguments without crashing; its
forwarding is tested end to end in tests/integration/test_bench_packets.py."""
import argparse
import errno

import pytest

from dataplane._native import ffi, lib
from dataplane.bench.xsk_forward import _macs


def test_native_forwarder_refuses_null_and_bad_ports():
    out = ffi.new("struct dp_xsk_fwd **")
    macs = bytes(12)
    assert lib.dp_xsk_fwd_open(ffi.NULL, b"b", 0, macs, macs, out) == -errno.EINVAL
    assert lib.dp_xsk_fwd_open(b"a", ffi.NULL, 0, macs, macs, out) == -errno.EINVAL
    assert lib.dp_xsk_fwd_open(b"a", b"b", 0, ffi.NULL, macs, out) == -errno.EINVAL
    assert lib.dp_xsk_fwd_open(b"a", b"b", 0, macs, macs, ffi.NULL) == -errno.EINVAL
    assert lib.dp_xsk_fwd_fd(ffi.NULL, lib.DP_XSK_FWD_A) == -1
    stats = ffi.new("struct dp_xsk_fwd_stats *")
    assert lib.dp_xsk_fwd_run(ffi.NULL, -1, stats) == -errno.EINVAL
    lib.dp_xsk_fwd_stop(ffi.NULL)
    lib.dp_xsk_fwd_close(ffi.NULL)


def test_native_forwarder_fails_cleanly_on_a_missing_interface():
    out = ffi.new("struct dp_xsk_fwd **")
    rc = lib.dp_xsk_fwd_open(b"nosuch-if0", b"nosuch-if1", 0, bytes(12), bytes(12), out)
    assert rc < 0 and out[0] == ffi.NULL


@pytest.mark.parametrize("text", ["", "02:00:00:00:00:01", "zz,02:00:00:00:00:01",
                                  "02:00:00:00:00,02:00:00:00:00:01", "a,b,c"])
def test_mac_pairs_are_checked(text):
    with pytest.raises(argparse.ArgumentTypeError):
        _macs(text)


def test_mac_pair_is_destination_then_source():
    assert _macs("02:00:00:00:00:01,02:00:00:00:00:02") == bytes.fromhex(
        "020000000001" "020000000002")
