"""The XDP backend (Backend = xdp): our XDP program on the exit node's WAN
veth steers WireGuard into AF_XDP, the inner side is a veth pair served by
AF_XDP; wireguard-go is the client. The interop of the socket backend's
tests, the exit-node scenario with NAT, what kill -9 leaves behind, how
Backend = auto chooses, and several WAN interfaces."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from dataplane import crypto
from dataplane.xdp_backend import inner_peer_name
from dataplane.daemon import RUN_DIR
from tests.integration.scenarios import HUB_INNER, Hub, hub_outer
from tests.integration.tunnel import DATAPLANE, OUTER, UAPI_DIR, TunnelWorld

EVERY_INTERFACE = "every interface with a global address; [DataPlane] Interfaces chooses"

def xdp_world(topo, tmp_path, **kw):
    return TunnelWorld(topo, tmp_path, backend="xdp", **kw)


def wan_ifname(w) -> str:
    out = w.topo.run(w.exit_ns, ["ip", "-o", "-4", "addr", "show"]).stdout
    return next(line.split()[1] for line in out.splitlines() if "10.201.0.2" in line)


def wait_all_threads_stopped(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP returns before every thread has stopped: a worker busy in a
    batch stops only when it next enters the kernel, and may first take one
    more batch off its rings. Wait until every thread's state is T."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                continue
        if states and all(s in "Tt" for s in states):
            return
        assert time.monotonic() < deadline, f"threads of {pid} not all stopped: {states}"
        time.sleep(0.01)


def xdp_attached(w, ifname: str) -> bool:
    out = w.topo.run(w.exit_ns, ["ip", "-d", "link", "show", "dev", ifname], check=False).stdout
    return "prog/xdp" in out or " xdp" in out.split("\n")[0]


@pytest.mark.parametrize("outer", [4, 6])
def test_ping_both_ways_inner_v4_and_v6(topo, tmp_path, outer):
    w = xdp_world(topo, tmp_path, outer=outer, exit_knows_client_endpoint=True)
    status = w.status()
    assert status["backend"] == "xdp"
    for dst in ("10.202.0.1", "fd00:202::1"):
        r = w.ping(w.client_ns, dst)
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
    for dst in ("10.202.0.2", "fd00:202::2"):
        r = w.ping(w.exit_ns, dst)
        assert r.returncode == 0, r.stdout + r.stderr
    # our end of the inner pair receives in a NAPI thread, not in softirq
    # (the receive livelock under overload)
    threaded = w.topo.run(w.exit_ns, ["cat", f"/sys/class/net/{inner_peer_name(w.name)}/threaded"]).stdout
    assert threaded.strip() in ("1", "enabled"), threaded
    peer = w.exit_peer_dump()
    assert int(peer[5]) > 0 and int(peer[6]) > 0
    counters = w.status()["xdp"]
    assert counters["wan_steer_initiation"] >= 1 and counters["wan_steer_data"] >= 8, counters
    assert counters["inner_steer"] >= 4, counters
    assert counters["wan_steer_no_socket"] == counters["inner_steer_no_socket"] == 0, counters
    # no busy polling unless the file asks for it: the kernel holds none
    busy = status["busy_poll"]
    assert busy["us"] == 0 and busy["sockets"], busy
    assert all(s["busy_poll_us"] == s["prefer_busy_poll"] == 0
               for worker in busy["sockets"] for s in worker.values()), busy
    # nor real-time workers
    assert [w["policy"] for w in status["scheduling"]] == ["other"] * status["workers"], status


def test_busy_poll_is_set_on_every_af_xdp_socket_and_carries_traffic(topo, tmp_path):
    """[DataPlane] BusyPoll: what the kernel holds on each worker's AF_XDP
    sockets (read back with getsockopt) is what the file asked for, the
    tunnel carries pings both ways while the workers poll instead of
    sleeping, `dataplane show` says so, and down stops polling workers."""
    w = xdp_world(topo, tmp_path, exit_knows_client_endpoint=True,
                  extra_exit_conf="[DataPlane]\nBusyPoll = 200\n")
    for ns, dst in ((w.client_ns, "10.202.0.1"), (w.exit_ns, "10.202.0.2"),
                    (w.client_ns, "fd00:202::1")):
        r = w.ping(ns, dst, count=5)
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
    status = w.status()
    busy = status["busy_poll"]
    assert busy["us"] == 200 and len(busy["sockets"]) == status["workers"], busy
    for worker in busy["sockets"]:
        assert set(worker) == {"wan", "inner"}, worker
        for s in worker.values():
            assert (s["busy_poll_us"], s["prefer_busy_poll"]) == (200, 1), busy
    shown = w.topo.run(w.exit_ns, [DATAPLANE, "show", w.name]).stdout
    assert "busy polling 200 us (kernel receive in the workers: " in shown, shown
    assert "busy polling: workers poll their AF_XDP sockets for 200 us" in \
        w.log_path.read_text()
    assert w.down() == 0


@pytest.mark.parametrize("backend", ["xdp", "socket"])
def test_realtime_workers_run_sched_fifo_and_carry_traffic(topo, tmp_path, backend):
    """[DataPlane] RealtimePriority: every worker runs SCHED_FIFO at that
    priority from its start (what the kernel holds, read back by the
    daemon), pings and a peer change go through while the workers are
    real-time (the peer lock is shared with the control plane), `dataplane
    show` says so, and down stops them."""
    w = TunnelWorld(topo, tmp_path, backend=backend, exit_knows_client_endpoint=True,
                    extra_exit_conf="[DataPlane]\nWorkers = 2\nRealtimePriority = 3\n")
    status = w.status()
    assert status["backend"] == backend
    n = status["workers"]  # xdp: one a WAN queue (a veth has one), whatever Workers says
    assert n == (1 if backend == "xdp" else 2), status
    assert status["scheduling"] == [{"worker": i, "policy": "fifo", "priority": 3}
                                    for i in range(n)], status
    for ns, dst in ((w.client_ns, "10.202.0.1"), (w.exit_ns, "10.202.0.2"),
                    (w.client_ns, "fd00:202::1")):
        r = w.ping(ns, dst, count=5)
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
    # the control plane takes the peer's lock while the workers use it
    w.exit_wg("set", w.name, "peer", str(w.client_key.public_key()), "persistent-keepalive", "5")
    r = w.ping(w.client_ns, "10.202.0.1", count=3)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
    shown = w.topo.run(w.exit_ns, [DATAPLANE, "show", w.name]).stdout
    assert f"{n} worker(s), real-time workers (SCHED_FIFO 3)" in shown, shown
    assert w.down() == 0


def test_realtime_without_cap_sys_nice_fails_up_with_the_reason(topo, tmp_path):
    """Without CAP_SYS_NICE the kernel refuses SCHED_FIFO: `up` fails
    saying so, and leaves no interface and no UAPI socket behind."""
    from dataplane.keys import PrivateKey

    ns = topo.namespace("rt")
    name = f"rtx{os.getpid() % 10000}"
    conf = tmp_path / f"{name}.conf"
    key = PrivateKey.generate()
    conf.write_text(f"[Interface]\nPrivateKey = {key.reveal_base64()}\nListenPort = 51999\n"
                    f"Address = 10.99.0.1/24\n\n[DataPlane]\nBackend = socket\n"
                    f"RealtimePriority = 1\n")
    conf.chmod(0o600)
    r = topo.run(ns, ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice",
                      DATAPLANE, "up", str(conf)], check=False)
    assert r.returncode != 0
    assert ("RealtimePriority = 1: the kernel refused SCHED_FIFO for the workers (EPERM): "
            "that needs CAP_SYS_NICE") in r.stderr, r.stderr
    links = topo.run(ns, ["ip", "-o", "link"]).stdout
    assert name not in links, links
    assert not (UAPI_DIR / f"{name}.sock").exists()


def test_exit_node_with_nat_to_an_internet_namespace(topo, tmp_path):
    """wireguard-go client -> our exit node (xdp) with nftables masquerade
    -> an "internet" namespace running iperf3."""
    w = xdp_world(topo, tmp_path)
    net_ns = topo.namespace("net")
    topo.link(w.exit_ns, net_ns, ["10.203.0.1/24"], ["10.203.0.2/24"])
    topo.run(w.exit_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    topo.run(w.exit_ns, ["nft", "-f", "-"], input=(
        "table ip dpnat {\n chain post {\n  type nat hook postrouting priority 100;\n"
        f"  ip saddr 10.202.0.0/24 oifname != \"{w.name}\" masquerade\n }}\n}}\n"))
    # the client routes the internet through the tunnel
    w.wg.set_peer(w.exit_key.public_key(), allowed_ips=["10.202.0.0/24", "10.203.0.0/24"])
    topo.add_route(w.client_ns, "10.203.0.0/24", ifname=w.wg.ifname)
    # and the exit node lets that traffic in from the client
    w.exit_wg("set", w.name, "peer", str(w.client_key.public_key()),
              "allowed-ips", "10.202.0.2/32,fd00:202::2/128")
    r = w.ping(w.client_ns, "10.203.0.2")
    assert r.returncode == 0, r.stdout + r.stderr
    server = topo.popen(net_ns, ["iperf3", "-s", "-1", "-J"], stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.3)
    out = topo.run(w.client_ns, ["iperf3", "-c", "10.203.0.2", "-t", "2", "-J"], timeout=40).stdout
    assert json.loads(out)["end"]["sum_received"]["bytes"] > 1_000_000
    seen_by_server = json.loads(server.communicate(timeout=10)[0])
    # the internet saw the exit node's address, not the client's
    assert seen_by_server["start"]["connected"][0]["remote_host"] == "10.203.0.1"


def test_down_removes_programs_and_links(topo, tmp_path):
    w = xdp_world(topo, tmp_path)
    wan = wan_ifname(w)
    assert xdp_attached(w, wan)
    assert w.down() == 0
    assert not xdp_attached(w, wan)
    for name in (w.name, f"{w.name[:12]}-x"):
        assert topo.run(w.exit_ns, ["ip", "link", "show", name], check=False).returncode != 0
    assert not (UAPI_DIR / f"{w.name}.sock").exists()


def test_kill_9_leaves_the_wan_interface_forwarding(topo, tmp_path):
    w = xdp_world(topo, tmp_path)
    wan = wan_ifname(w)
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    # a TCP service on the exit node's outer address, like SSH
    listener = topo.socket(w.exit_ns, socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("10.201.0.2", 2222))
    listener.listen(4)
    os.kill(w.daemon.pid, signal.SIGKILL)
    w.daemon.wait(timeout=10)
    deadline = time.monotonic() + 1.0
    while xdp_attached(w, wan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not xdp_attached(w, wan), "an XDP program outlived its daemon"
    r = topo.run(w.client_ns, ["ping", "-c", "1", "-W", "1", "10.201.0.2"], check=False)
    assert r.returncode == 0, r.stdout
    client = topo.socket(w.client_ns, socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(1)
    client.connect(("10.201.0.2", 2222))
    client.close()
    listener.close()
    # what a killed daemon leaves: its socket and pid files and the inner
    # veth pair (the next daemon of the name replaces them all, see below)
    for path in (UAPI_DIR / f"{w.name}.sock", RUN_DIR / f"{w.name}.pid",
                 RUN_DIR / f"{w.name}.status.sock"):
        path.unlink(missing_ok=True)


def test_malformed_packets_to_the_port_are_dropped_in_xdp(topo, tmp_path):
    w = xdp_world(topo, tmp_path)
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    before = w.status()["xdp"]
    s = topo.socket(w.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
    for payload in (b"\x01\x00\x00\x00" + bytes(10), b"\x07\x00\x00\x00" + bytes(40),
                    b"\x04\x00\x00\x00" + bytes(4)):
        for _ in range(5):
            s.sendto(payload, (OUTER["exit"][0].split("/")[0], 51820))
    s.close()
    time.sleep(0.3)
    after = w.status()["xdp"]
    delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert delta.get("wan_drop_wg_bad_size", 0) == 10, delta  # short initiation and data
    assert delta.get("wan_drop_wg_bad_type", 0) == 5, delta   # type 7
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0


def test_a_failed_attach_leaves_nothing_behind(topo, tmp_path):
    """Native XDP cannot attach to loopback: with Interfaces = a veth, lo
    the veth's program is attached before lo fails; `up` fails, says what
    failed, and leaves no program on the veth, no interface, no veth pair."""
    ns, other = topo.namespace("h"), topo.namespace("o")
    wan, _ = topo.link(ns, other, ["10.205.0.1/24"], ["10.205.0.2/24"])
    from dataplane.keys import PrivateKey
    name = f"dph{os.getpid() % 10000}"
    conf = tmp_path / f"{name}.conf"
    conf.write_text(f"[Interface]\nPrivateKey = {PrivateKey.generate().reveal_base64()}\n"
                    "Address = 10.204.0.1/24\n\n[DataPlane]\nBackend = xdp\n"
                    f"Interfaces = {wan}, lo\n")
    conf.chmod(0o600)
    r = topo.run(ns, [DATAPLANE, "up", str(conf)], check=False, timeout=30)
    assert r.returncode != 0
    assert "Backend = xdp: attaching the WAN program to lo" in r.stderr, r.stderr
    links = topo.run(ns, ["ip", "-d", "link", "show"]).stdout
    assert name not in links and "prog/xdp" not in links, links
    assert not (UAPI_DIR / f"{name}.sock").exists()


def test_an_interface_that_is_not_there_is_named(topo, tmp_path):
    ns = topo.namespace("h")
    from dataplane.keys import PrivateKey
    name = f"dph{os.getpid() % 10000}"
    conf = tmp_path / f"{name}.conf"
    conf.write_text(f"[Interface]\nPrivateKey = {PrivateKey.generate().reveal_base64()}\n"
                    "[DataPlane]\nBackend = xdp\nInterfaces = nosuch0\n")
    conf.chmod(0o600)
    r = topo.run(ns, [DATAPLANE, "up", str(conf)], check=False, timeout=30)
    assert r.returncode != 0
    assert "Interfaces: no interface named nosuch0" in r.stderr, r.stderr
    assert topo.run(ns, ["ip", "link", "show", name], check=False).returncode != 0


# ---------------------------------------------------------------- Backend = auto

def test_the_default_is_xdp_here_and_says_where(topo, tmp_path):
    """No Backend line: auto, and this kernel and veth allow XDP. One log
    line says which backend and why; `dataplane show` says it too."""
    w = TunnelWorld(topo, tmp_path, backend=None)
    assert "Backend" not in w.conf_path.read_text()
    wan = wan_ifname(w)
    log = w.log_path.read_text()
    assert [line for line in log.splitlines() if "backend:" in line] == \
        [f"dataplane: backend: xdp on {wan} ({EVERY_INTERFACE})"], log
    assert w.status()["backend"] == "xdp" and list(w.status()["wan"]) == [wan]
    assert xdp_attached(w, wan)
    shown = topo.run(w.exit_ns, [DATAPLANE, "show", w.name]).stdout
    assert f"backend: xdp on {wan} (queue 0), 1 worker(s)" in shown, shown
    # the daemon's own choice, the fastest implementation this CPU runs
    best = crypto.implementations()[-1]
    assert w.status()["crypto"] == best and f"crypto: {best}\n" in shown, shown
    assert f"1 worker(s), crypto {best}" in log, log
    r = w.ping(w.client_ns, "10.202.0.1")
    assert r.returncode == 0, r.stdout + r.stderr


def test_auto_falls_back_to_socket_and_says_why(topo, tmp_path):
    """Interfaces = lo: native XDP cannot attach there, so auto runs the
    socket backend, says why in one line, and leaves nothing of the XDP
    attempt behind (no program, no inner veth pair)."""
    w = TunnelWorld(topo, tmp_path, backend="auto", extra_exit_conf="\n[DataPlane]\n"
                                                                   "Interfaces = lo\n")
    log = w.log_path.read_text()
    lines = [line for line in log.splitlines() if "backend:" in line]
    assert len(lines) == 1 and lines[0].startswith(
        "dataplane: backend: socket (xdp unavailable: attaching the WAN program to lo: "), log
    assert w.status()["backend"] == "socket" and w.status()["xdp"] is None
    links = topo.run(w.exit_ns, ["ip", "-d", "link", "show"]).stdout
    assert "prog/xdp" not in links and f"{w.name[:12]}-x" not in links, links
    assert "backend: socket, 1 worker(s)" in topo.run(w.exit_ns, [DATAPLANE, "show",
                                                                w.name]).stdout
    r = w.ping(w.client_ns, "10.202.0.1")
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- several WAN interfaces

def spoke_pings(hub: Hub) -> None:
    for s in hub.spokes:
        r = s.iface.ping(HUB_INNER[0], count=3)
        assert r.returncode == 0, f"spoke {s.index} -> hub: {r.stdout}{r.stderr}"
        r = hub.iface.ping(s.inner[0], count=3)
        assert r.returncode == 0, f"hub -> spoke {s.index}: {r.stdout}{r.stderr}"


def hub_xdp_on(hub: Hub, ifname: str) -> bool:
    out = hub.topo.run(hub.ns, ["ip", "-d", "link", "show", "dev", ifname]).stdout
    return "prog/xdp" in out


def test_auto_attaches_to_every_wan_interface_and_serves_peers_over_each(topo, tmp_path):
    """Two WAN veths, a wireguard-go peer behind each, no Interfaces line:
    a program on both, a worker on each, and each peer reached over its
    own link both ways (the hub's replies leave by the interface its outer
    route names)."""
    hub = Hub(topo, tmp_path, kinds=("go", "go"))
    wan = sorted(s.veth[1] for s in hub.spokes)
    log = hub.iface.log_path.read_text()
    assert f"backend: xdp on {', '.join(wan)} ({EVERY_INTERFACE})" in log, log
    st = hub.iface.status()
    assert st["backend"] == "xdp" and st["workers"] == 2, st
    assert {i: w["queues"] for i, w in st["wan"].items()} == {wan[0]: [0], wan[1]: [0]}, st
    assert all(hub_xdp_on(hub, i) for i in wan)
    spoke_pings(hub)
    st = hub.iface.status()
    for s in hub.spokes:
        counters = st["wan"][s.veth[1]]["xdp"]
        # its handshake and its data came in over its own link, through XDP
        assert counters["steer_data"] >= 6 and counters["steer_no_socket"] == 0, (s.index, st)
        assert counters["steer_initiation"] + counters["steer_response"] >= 1, (s.index, st)
    xdp = st["xdp"]
    assert xdp["wan_steer_data"] == sum(w["xdp"]["steer_data"] for w in st["wan"].values())
    assert xdp["wan_xsk_tx"] + xdp["wan_kernel_tx"] >= 12, xdp
    shown = topo.run(hub.ns, [DATAPLANE, "show", hub.name]).stdout
    assert f"backend: xdp on {wan[0]} (queue 0), {wan[1]} (queue 0), 2 worker(s)" in shown


def test_interfaces_names_the_wan_interfaces(topo, tmp_path):
    """Interfaces = the first spoke's link: XDP only there; the second
    spoke's traffic takes the kernel's UDP path and still works."""
    hub = Hub(topo, tmp_path, kinds=("go", "go"), backend="xdp", wan_spokes=[1])
    first, second = (s.veth[1] for s in hub.spokes)
    log = hub.iface.log_path.read_text()
    assert f"backend: xdp on {first} (Interfaces)" in log, log
    assert hub_xdp_on(hub, first) and not hub_xdp_on(hub, second)
    spoke_pings(hub)
    st = hub.iface.status()
    assert list(st["wan"]) == [first] and st["workers"] == 1, st
    assert st["wan"][first]["xdp"]["steer_data"] >= 6, st
    # the second spoke's data did not pass through XDP: the UDP socket got it
    assert st["xdp"]["wan_steer_data"] == st["wan"][first]["xdp"]["steer_data"]
    assert all(int(p[5]) > 0 and int(p[6]) > 0 for p in hub.iface.dump()[1:])


@pytest.mark.parametrize("outer", [4, 6])
def test_data_leaves_through_af_xdp_with_correct_outer_headers(topo, tmp_path, outer):
    """Once the kernel knows the client's neighbour entry, the workers build
    the outer Ethernet/IP/UDP headers themselves and send through the WAN
    AF_XDP socket; tcpdump on the client side checks the checksums."""
    w = xdp_world(topo, tmp_path, outer=outer)
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    veth = next(l.split(":")[1].strip().split("@")[0] for l in topo.run(
        w.client_ns, ["ip", "-o", "link", "show", "type", "veth"]).stdout.splitlines())
    dump = topo.popen(w.client_ns, ["tcpdump", "-n", "-vv", "-l", "-i", veth, "-c", "20",
                                    "udp", "and", "src", "port", "51820"],
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(1.0)  # the route was asked for by the first reply; it is resolved by now
    r = w.ping(w.client_ns, "10.202.0.1", count=25, timeout=2)
    assert r.returncode == 0, r.stdout
    out = dump.communicate(timeout=20)[0]
    assert out.count("51820 >") >= 20 or out.count(".51820 >") >= 20, out[-2000:]
    assert "bad" not in out.lower(), out[-2000:]
    if outer == 6:
        assert "udp sum ok" in out, out[-2000:]
    stats = w.status()["xdp"]
    assert stats["wan_xsk_tx"] >= 20 and stats["outer_routes"] == 1, stats


def test_kill_9_and_down_release_every_wan_interface(topo, tmp_path):
    """Two WAN interfaces: kill -9 leaves neither with a program, and both
    answer ping at once; a new daemon on the same file attaches to both
    again, and `down` detaches from both."""
    from dataplane.launch import start_daemon
    hub = Hub(topo, tmp_path, kinds=("go", "go"), backend="xdp")
    wan = [s.veth[1] for s in hub.spokes]
    assert all(hub_xdp_on(hub, i) for i in wan)
    os.kill(hub.iface.proc.pid, signal.SIGKILL)
    hub.iface.proc.wait(timeout=10)
    deadline = time.monotonic() + 1.0
    while any(hub_xdp_on(hub, i) for i in wan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(hub_xdp_on(hub, i) for i in wan), "an XDP program outlived its daemon"
    for s in hub.spokes:
        r = topo.run(s.ns, ["ping", "-c", "1", "-W", "1", hub_outer(s.index)[0]], check=False)
        assert r.returncode == 0, r.stdout
    # the killed daemon's inner veth pair is still there: the next one
    # replaces it
    hub.iface.proc = start_daemon(topo, hub.ns, hub.iface.conf_path, log=hub.iface.log_path)
    assert all(hub_xdp_on(hub, i) for i in wan)
    spoke_pings(hub)
    topo.run(hub.ns, [DATAPLANE, "down", hub.name])
    assert hub.iface.proc.wait(timeout=15) == 0
    assert not any(hub_xdp_on(hub, i) for i in wan)
    assert topo.run(hub.ns, ["ip", "link", "show", hub.name], check=False).returncode != 0


def test_data_dropped_after_decryption_hands_back_its_frame(topo, tmp_path):
    """Decap through AF_XDP decrypts into a transmit frame of the inner
    port; a message dropped after that (here: replayed) must hand its frame
    back. Far more replays than the port has frames: every one is counted
    as a replay, none fails for want of a frame, and the tunnel still
    carries pings."""
    from tests.integration.hostile_peer import MSG_DATA, Attacker, Sniffer, counters, settle
    from tests.integration.tunnel import CLIENT_PORT, EXIT_PORT

    w = xdp_world(topo, tmp_path)
    with Sniffer(w.client_ns, CLIENT_PORT, both_directions=True) as sniffed:
        r = w.ping(w.client_ns, "10.202.0.1", count=5)
    assert r.returncode == 0, r.stdout + r.stderr
    captured = [m for m in sniffed.sent(MSG_DATA) if len(m) > 32]  # not keepalives
    assert captured, "no data message of the client was captured"
    attacker = Attacker(topo, w.client_ns, "10.201.0.66/24",
                        (OUTER["exit"][0].split("/")[0], EXIT_PORT))
    before = counters(w.name)
    replays = [captured[i % len(captured)] for i in range(5000)]  # the port has 2048 frames
    sent = attacker.send(replays)
    attacker.close()
    d = settle(w.name, before, lambda d: d.get("replay", 0) >= sent, timeout=30)
    assert d.get("replay", 0) == sent and not d.get("send_failed"), d
    r = w.ping(w.client_ns, "10.202.0.1", count=3)
    assert r.returncode == 0, r.stdout + r.stderr
    assert w.status()["xdp"]["wan_steer_data"] >= sent


def test_packets_lost_at_a_full_af_xdp_ring_are_counted_and_shown(topo, tmp_path):
    """With the daemon stopped (SIGSTOP, every thread in state T before the
    first message goes out) its workers empty no ring: the WAN
    program still steers WireGuard into the AF_XDP socket, whose receive
    ring holds 2048 frames, and the kernel drops the rest. Resumed, the
    workers take what the ring held (replays, counted as such); the
    kernel's drops are in the status (xsk_wan_rx_ring_full or, with no
    free frame, xsk_wan_rx_dropped; the metrics carry the status's XDP
    counters) and in `dataplane show`'s drops, and with the replays they
    make up every message sent."""
    from tests.integration.hostile_peer import MSG_DATA, Attacker, Sniffer, counters, settle
    from tests.integration.tunnel import CLIENT_PORT, EXIT_PORT

    w = xdp_world(topo, tmp_path)
    with Sniffer(w.client_ns, CLIENT_PORT, both_directions=True) as sniffed:
        r = w.ping(w.client_ns, "10.202.0.1", count=3)
    assert r.returncode == 0, r.stdout + r.stderr
    captured = [m for m in sniffed.sent(MSG_DATA) if len(m) > 32]
    assert captured, "no data message of the client was captured"
    xdp0, before = w.status()["xdp"], counters(w.name)
    assert xdp0["xsk_wan_rx_ring_full"] + xdp0["xsk_wan_rx_dropped"] == 0, xdp0
    attacker = Attacker(topo, w.client_ns, "10.201.0.66/24",
                        (OUTER["exit"][0].split("/")[0], EXIT_PORT))
    os.kill(w.daemon.pid, signal.SIGSTOP)
    try:
        wait_all_threads_stopped(w.daemon.pid)
        sent = attacker.send([captured[i % len(captured)] for i in range(5000)])
    finally:
        os.kill(w.daemon.pid, signal.SIGCONT)
        attacker.close()

    def kernel_drops() -> int:
        xdp = w.status()["xdp"]
        return (xdp["xsk_wan_rx_ring_full"] - xdp0["xsk_wan_rx_ring_full"] +
                xdp["xsk_wan_rx_dropped"] - xdp0["xsk_wan_rx_dropped"])

    d = settle(w.name, before, lambda d: d.get("replay", 0) + kernel_drops() >= sent,
               timeout=30)
    lost, xdp = kernel_drops(), w.status()["xdp"]
    assert xdp["wan_steer_data"] - xdp0["wan_steer_data"] == sent, xdp
    assert 0 < d.get("replay", 0) <= 2048 and d.get("replay", 0) + lost == sent, (d, lost)
    assert xdp["xsk_wan_rx_invalid_descs"] == xdp["xsk_inner_tx_invalid_descs"] == 0, xdp
    shown = w.topo.run(w.exit_ns, [DATAPLANE, "show", w.name]).stdout
    drops_line = next(line for line in shown.splitlines() if line.strip().startswith("drops:"))
    assert "xsk_wan_rx_ring_full" in drops_line or "xsk_wan_rx_dropped" in drops_line, shown
    r = w.ping(w.client_ns, "10.202.0.1", count=3)
    assert r.returncode == 0, r.stdout + r.stderr


def test_datagrams_to_the_port_for_a_routed_address_are_forwarded(topo, tmp_path):
    """An exit node that also routes: UDP to our listen port but for an
    address behind us (IPv6 routed to clients, a NAT'd flow whose source
    port equals our port, nested WireGuard) is the kernel's to forward,
    not the workers' to drop as an unknown index."""
    w = xdp_world(topo, tmp_path)
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    far_ns = topo.namespace("far")
    topo.link(w.exit_ns, far_ns, ["10.204.0.1/24", "fd00:204::1/64"],
              ["10.204.0.2/24", "fd00:204::2/64"])
    topo.run(w.exit_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1",
                         "net.ipv6.conf.all.forwarding=1"])
    topo.add_route(w.client_ns, "10.204.0.0/24", gateway="10.201.0.2")
    topo.add_route(w.client_ns, "fd00:204::/64", gateway="fd00:201::2")
    topo.add_route(far_ns, "10.201.0.0/24", gateway="10.204.0.1")
    topo.add_route(far_ns, "fd00:201::/64", gateway="fd00:204::1")
    before = w.status()
    # data messages, handshakes and garbage alike: all of it is someone else's
    payloads = [b"\x04\x00\x00\x00" + os.urandom(60), b"\x01\x00\x00\x00" + os.urandom(144),
                os.urandom(3)]
    for family, dst in ((socket.AF_INET, "10.204.0.2"), (socket.AF_INET6, "fd00:204::2")):
        sink = topo.socket(far_ns, family, socket.SOCK_DGRAM)
        sink.bind((dst, 51820))
        sink.settimeout(3)
        src = topo.socket(w.client_ns, family, socket.SOCK_DGRAM)
        try:
            for p in payloads:
                src.sendto(p, (dst, 51820))
                assert sink.recv(2000) == p, (dst, p[:4])
        finally:
            src.close()
            sink.close()
    after = w.status()
    moved = {k: after["xdp"][k] - before["xdp"][k] for k in after["xdp"]
             if isinstance(after["xdp"][k], int) and after["xdp"][k] != before["xdp"][k]}
    assert moved.get("wan_pass_not_local", 0) == 2 * len(payloads), moved
    assert after["drops"].get("unknown_index", 0) == before["drops"].get("unknown_index", 0)
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0


def test_the_wan_program_follows_the_hosts_addresses(topo, tmp_path):
    """An address added under a running daemon is steered for within
    seconds; one removed is forgotten."""
    w = xdp_world(topo, tmp_path)
    start = w.status()["xdp"]["local_addresses"]
    assert start >= 2  # at least the WAN's 10.201.0.2 and fd00:201::2
    ifname = wan_ifname(w)
    topo.add_address(w.exit_ns, ifname, "10.201.0.77/24")

    def local_addresses_become(n: int) -> None:
        deadline = time.monotonic() + 5
        while w.status()["xdp"]["local_addresses"] != n:
            assert time.monotonic() < deadline, w.status()["xdp"]
            time.sleep(0.1)

    local_addresses_become(start + 1)
    before = w.status()["xdp"]
    s = topo.socket(w.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(3):
            s.sendto(b"\x07\x00\x00\x00" + bytes(40), ("10.201.0.77", 51820))
    finally:
        s.close()
    time.sleep(0.3)
    after = w.status()["xdp"]
    assert after["wan_drop_wg_bad_type"] - before["wan_drop_wg_bad_type"] == 3, after
    assert after["wan_pass_not_local"] == before["wan_pass_not_local"]
    topo.run(w.exit_ns, ["ip", "addr", "del", "10.201.0.77/24", "dev", ifname])
    local_addresses_become(start)
    assert w.down() == 0


def test_a_corrupted_source_does_not_move_the_peer(topo, tmp_path):
    """The client's datagrams leave with their source address rewritten
    (a tc program) and the UDP checksum left as it was, as a bit flip in
    flight would leave them: authenticated, decrypted and delivered, but
    the peer's endpoint stays where it was (the kernel, which checks UDP
    checksums on the socket backend, is bypassed here). With the checksum
    updated as well the same rewrite moves it: that is roaming."""
    from tests.unit.test_xdp_programs import FIXTURES, ebpf_build
    obj = ebpf_build.compile_one(FIXTURES / "rewrite_source.bpf.c", tmp_path / "rewrite.bpf.o")
    w = xdp_world(topo, tmp_path)
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    assert w.exit_peer_dump()[2] == "10.201.0.1:51900"
    dev = w.client_veth
    topo.run(w.client_ns, ["tc", "qdisc", "add", "dev", dev, "clsact"])

    def rewrite(section: str) -> None:
        topo.run(w.client_ns, ["tc", "filter", "replace", "dev", dev, "egress", "pref", "1",
                               "handle", "1", "bpf", "direct-action", "obj", str(obj),
                               "sec", section])

    rewrite("tc/corrupt")
    before = w.status()["xdp"]
    # the exit node answers at the client's real address, so pings work
    r = w.ping(w.client_ns, "10.202.0.1", count=3)
    assert r.returncode == 0, r.stdout
    assert w.exit_peer_dump()[2] == "10.201.0.1:51900"
    after = w.status()["xdp"]
    assert after["roams_refused"] - before["roams_refused"] >= 3, after
    rewrite("tc/roam")
    w.ping(w.client_ns, "10.202.0.1", count=1, timeout=1)  # the answer goes to .99 now
    assert w.exit_peer_dump()[2] == "10.201.0.99:51900"
    assert w.status()["xdp"]["roams_refused"] == after["roams_refused"]
