"""Faults under a running exit node: links removed or renamed from under
it, too little locked memory, the TUN's queue full. Each gives one clear log line and either
carries on or goes down cleanly (exit status 1, the WAN left forwarding
normally), never a crash, a traceback or a wedged daemon."""
import json
import os
import signal
import subprocess
import time

import pytest

from dataplane.daemon import RUN_DIR
from dataplane.xdp_backend import inner_peer_name
from tests.integration.tunnel import DATAPLANE, UAPI_DIR, TunnelWorld


def wait_exit(w, timeout: float = 5.0) -> int:
    try:
        return w.daemon.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the daemon is still up:\n{w.log_path.read_text()[-2000:]}") \
            from None


def assert_gone_cleanly(w, wan_ifname=None) -> None:
    log = w.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert f"{w.name} is down" in log, log[-2000:]
    assert not (UAPI_DIR / f"{w.name}.sock").exists()
    assert not (RUN_DIR / f"{w.name}.pid").exists()
    if wan_ifname:
        out = w.topo.run(w.exit_ns, ["ip", "-d", "link", "show", "dev", wan_ifname]).stdout
        assert "prog/xdp" not in out, out


@pytest.mark.parametrize("backend", ["socket", "xdp"])
def test_the_interface_deleted_takes_the_daemon_down(topo, tmp_path, backend):
    w = TunnelWorld(topo, tmp_path, backend=backend)
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    topo.run(w.exit_ns, ["ip", "link", "del", w.name])
    assert wait_exit(w) == 1
    assert f"{w.name}: the interface was removed from under the daemon" in w.log_path.read_text()
    assert_gone_cleanly(w, w.exit_veth if backend == "xdp" else None)
    # the exit node's own address still answers
    assert w.ping(w.client_ns, "10.201.0.2", count=1).returncode == 0


def test_the_inner_veth_deleted_takes_the_daemon_down(topo, tmp_path):
    w = TunnelWorld(topo, tmp_path, backend="xdp")
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    topo.run(w.exit_ns, ["ip", "link", "del", inner_peer_name(w.name)])  # the pair goes
    assert wait_exit(w) == 1
    assert "was removed from under the daemon" in w.log_path.read_text()
    assert_gone_cleanly(w, w.exit_veth)
    assert w.ping(w.client_ns, "10.201.0.2", count=1).returncode == 0


def test_the_wan_interface_removed_takes_the_daemon_down(topo, tmp_path):
    w = TunnelWorld(topo, tmp_path, backend="xdp")
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    topo.run(w.exit_ns, ["ip", "link", "del", w.exit_veth])
    assert wait_exit(w) == 1
    assert f"WAN interface {w.exit_veth} was removed" in w.log_path.read_text()
    assert_gone_cleanly(w)
    r = topo.run(w.exit_ns, ["ip", "link", "show", inner_peer_name(w.name)], check=False)
    assert r.returncode != 0, "the inner veth pair outlived the daemon"


def test_a_renamed_wan_interface_keeps_serving(topo, tmp_path):
    w = TunnelWorld(topo, tmp_path, backend="xdp")
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    new = w.exit_veth + "r"
    for args in (["set", "dev", w.exit_veth, "down"], ["set", "dev", w.exit_veth, "name", new],
                 ["set", "dev", new, "up"]):
        topo.run(w.exit_ns, ["ip", "link", *args])
    deadline = time.monotonic() + 5
    while f"is now called {new}" not in w.log_path.read_text():
        assert time.monotonic() < deadline, w.log_path.read_text()[-2000:]
        time.sleep(0.1)
    before = w.status()["xdp"]["wan_steer_data"]
    r = w.ping(w.client_ns, "10.202.0.1", count=3, timeout=5)
    assert r.returncode == 0, r.stdout
    st = w.status()
    assert st["xdp"]["wan_steer_data"] >= before + 3  # still through XDP
    assert new in st.get("wan", {}), st.get("wan")
    assert w.daemon.poll() is None
    assert w.down() == 0


@pytest.mark.parametrize("backend", ["socket", "xdp"])
def test_too_little_locked_memory_is_refused_at_up(topo, tmp_path, backend):
    """Without CAP_IPC_LOCK and with a small RLIMIT_MEMLOCK no key could be
    kept: `up` says so and what to change, instead of coming up and failing
    every handshake."""
    w = TunnelWorld(topo, tmp_path, backend=backend)
    assert w.down() == 0
    r = topo.run(w.exit_ns, ["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock",
                             "prlimit", "--memlock=65536", DATAPLANE, "up", str(w.conf_path)],
                 check=False, timeout=30)
    assert r.returncode == 1
    assert "keys are kept in locked memory" in r.stderr and "LimitMEMLOCK" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (UAPI_DIR / f"{w.name}.sock").exists()


def test_the_wan_program_detached_by_another_process_is_attached_again(topo, tmp_path):
    """bpftool link detach takes our WAN program off the interface (the
    link stays ours, empty): the daemon notices within a tick, says so and
    attaches it again; the tunnel goes on through XDP."""
    w = TunnelWorld(topo, tmp_path, backend="xdp")
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    out = topo.run(w.exit_ns, ["ip", "-d", "-j", "link", "show", "dev", w.exit_veth]).stdout
    prog_id = json.loads(out)[0]["xdp"]["prog"]["id"]
    links = json.loads(topo.run(w.exit_ns, ["bpftool", "-j", "link", "show"]).stdout)
    link_id = next(link["id"] for link in links if link.get("prog_id") == prog_id)
    topo.run(w.exit_ns, ["bpftool", "link", "detach", "id", str(link_id)])
    deadline = time.monotonic() + 5
    while "attached again" not in w.log_path.read_text():
        assert time.monotonic() < deadline, w.log_path.read_text()[-2000:]
        time.sleep(0.1)
    assert f"the XDP program on {w.exit_veth} was detached by another process" in \
        w.log_path.read_text()
    out = topo.run(w.exit_ns, ["ip", "-d", "link", "show", "dev", w.exit_veth]).stdout
    assert "prog/xdp" in out, out
    before = w.status()["xdp"]["wan_steer_data"]
    assert w.ping(w.client_ns, "10.202.0.1", count=2).returncode == 0
    assert w.status()["xdp"]["wan_steer_data"] >= before + 2
    assert w.daemon.poll() is None
    assert w.down() == 0


def test_a_full_tun_queue_is_said_and_the_tunnel_recovers(topo, tmp_path):
    """The workers stalled (SIGSTOP) while traffic for the tunnel arrives:
    the kernel queues txqueuelen packets on the TUN and drops the rest.
    The daemon says how many were dropped and why, shows the figure in its
    status, and serves on as soon as it runs again."""
    w = TunnelWorld(topo, tmp_path, backend="socket")
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    topo.run(w.exit_ns, ["ip", "link", "set", "dev", w.name, "txqueuelen", "8"])
    deadline = time.monotonic() + 10
    while (w.status().get("tun_queue") or {}).get("txqueuelen") != 8:
        assert time.monotonic() < deadline, w.status().get("tun_queue")
        time.sleep(0.2)
    before = w.status()["tun_queue"]["dropped"]
    sent = 300
    os.kill(w.daemon.pid, signal.SIGSTOP)
    try:
        # datagrams from the exit node to the client's inner address: routed
        # into the TUN, for the stopped workers to read
        topo.run(w.exit_ns, ["python3", "-c",
                             "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                             f"for i in range({sent}): s.sendto(b'x' * 64, ('10.202.0.2', 9))"])
        time.sleep(0.3)
    finally:
        os.kill(w.daemon.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while "TUN's queue" not in w.log_path.read_text():
        assert time.monotonic() < deadline, w.log_path.read_text()[-2000:]
        time.sleep(0.2)
    dropped = w.status()["tun_queue"]["dropped"] - before
    # all but what the queue held (and a packet or two the workers took
    # before they stopped) were dropped by the kernel
    assert sent - 8 - 4 <= dropped <= sent, dropped
    log = w.log_path.read_text()
    assert f"the kernel dropped {dropped} packets bound for the tunnel" in log, log[-2000:]
    assert "txqueuelen 8" in log and "Traceback" not in log
    assert w.daemon.poll() is None
    shown = topo.run(w.exit_ns, [DATAPLANE, "show", w.name]).stdout
    assert f"tun_queue_full {before + dropped}" in shown, shown
    assert w.ping(w.client_ns, "10.202.0.1", count=3).returncode == 0
