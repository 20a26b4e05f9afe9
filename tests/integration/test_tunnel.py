"""`dataplane up` as an exit node with Debian's wireguard-go as the client,
in network namespaces: handshakes both ways, IPv4 and IPv6 inside and
outside, iperf3, `wg`, roaming, bad keys, clean shutdown."""
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration import tunnel
from tests.integration.tunnel import OUTER, TunnelWorld, UAPI_DIR


@pytest.fixture(autouse=True, params=["socket", "xdp"])
def backend(request):
    """Every test here runs on both backends: the socket one (UDP + TUN)
    and the XDP one (AF_XDP on the WAN veth and on the inner veth pair)."""
    tunnel.BACKEND = request.param
    yield request.param
    tunnel.BACKEND = None


def iperf3(world, args, seconds=2):
    server = world.topo.popen(world.exit_ns, ["iperf3", "-s", "-1", "-B", "10.202.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        out = world.topo.run(world.client_ns, ["iperf3", "-c", "10.202.0.1", "-t", str(seconds),
                                               "-J", *args], timeout=seconds + 30).stdout
    finally:
        server.wait(timeout=10)
    import json
    return json.loads(out)


@pytest.mark.parametrize("outer", [4, 6])
def test_client_initiates_ping_v4_and_v6_inside(topo, tmp_path, outer):
    w = TunnelWorld(topo, tmp_path, outer=outer)
    for dst in ("10.202.0.1", "fd00:202::1"):
        r = w.ping(w.client_ns, dst)
        assert r.returncode == 0, r.stdout + r.stderr
        assert " 0% packet loss" in r.stdout
    peer = w.exit_peer_dump()
    # public key, psk, endpoint, allowed ips, latest handshake, rx, tx, keepalive
    assert peer[0] == str(w.client_key.public_key())
    assert peer[1] == w.psk.reveal_base64()
    client_outer = OUTER["client"][0 if outer == 4 else 1].split("/")[0]
    assert client_outer in peer[2]
    assert set(peer[3].split(",")) == {"10.202.0.2/32", "fd00:202::2/128"}
    assert time.time() - int(peer[4]) < 30
    assert int(peer[5]) > 0 and int(peer[6]) > 0
    assert w.down() == 0
    assert not (UAPI_DIR / f"{w.name}.sock").exists()
    r = w.topo.run(w.exit_ns, ["ip", "link", "show", w.name], check=False)
    assert r.returncode != 0, "the interface outlived the daemon"


@pytest.mark.parametrize("workers", [1, 3])
def test_exit_node_initiates_when_it_has_traffic(topo, tmp_path, workers, backend):
    w = TunnelWorld(topo, tmp_path, exit_knows_client_endpoint=True,
                    extra_exit_conf=f"\n[DataPlane]\nWorkers = {workers}\n")
    # XDP: one worker per receive queue of the WAN interface (a veth has one)
    want = workers if backend == "socket" else 1
    assert w.status()["workers"] == want
    assert w.status()["backend"] == backend
    # the interface's IPv6 address is usable at once (never tentative)
    addrs = w.topo.run(w.exit_ns, ["ip", "-6", "-o", "addr", "show", "dev", w.name]).stdout
    line = next(l for l in addrs.splitlines() if "fd00:202::1/" in l)
    assert "nodad" in line and "tentative" not in line, line
    s = w.topo.socket(w.exit_ns, socket.AF_INET6)
    s.bind(("fd00:202::1", 0))
    s.close()
    # the workers are named, for top -H, ps -L and perf
    names = [(t / "comm").read_text().strip()
             for t in Path(f"/proc/{w.daemon.pid}/task").iterdir()]
    assert sorted(n for n in names if n.startswith("dp-worker")) == \
        [f"dp-worker-{i}" for i in range(want)], names
    r = w.ping(w.exit_ns, "10.202.0.2")
    assert r.returncode == 0, r.stdout + r.stderr
    r = w.ping(w.exit_ns, "fd00:202::2")
    assert r.returncode == 0, r.stdout + r.stderr


def test_iperf3_tcp_both_directions_and_udp(topo, tmp_path):
    w = TunnelWorld(topo, tmp_path)
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    up = iperf3(w, [])
    assert up["end"]["sum_received"]["bytes"] > 1_000_000
    down = iperf3(w, ["-R"])
    assert down["end"]["sum_received"]["bytes"] > 1_000_000
    udp = iperf3(w, ["-u", "-b", "20M", "-l", "1200"])
    s = udp["end"]["sum"]
    assert s["packets"] > 1000
    assert s["lost_percent"] < 5, s


def test_wg_set_and_showconf_on_our_interface(topo, tmp_path):
    w = TunnelWorld(topo, tmp_path)
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    conf = w.exit_wg("showconf", w.name)
    assert f"PublicKey = {w.client_key.public_key()}" in conf
    assert "ListenPort = 51820" in conf
    # allowed IPs moved away: traffic from the client is no longer accepted
    w.exit_wg("set", w.name, "peer", str(w.client_key.public_key()), "allowed-ips", "10.99.0.0/24")
    assert w.ping(w.client_ns, "10.202.0.1", count=2, timeout=1).returncode != 0
    assert w.status()["drops"]["not_allowed"] > 0
    # and back
    w.exit_wg("set", w.name, "peer", str(w.client_key.public_key()), "allowed-ips",
              "10.202.0.2/32,fd00:202::2/128")
    assert w.ping(w.client_ns, "10.202.0.1", count=2).returncode == 0
    # syncconf with the original file (minus our own settings) keeps it working
    stripped = tmp_path / "strip.conf"
    wg_part = w.conf_path.read_text().split("[DataPlane]")[0]
    stripped.write_text("\n".join(l for l in wg_part.splitlines()
                                  if not l.startswith("Address")) + "\n")
    w.exit_wg("syncconf", w.name, str(stripped))
    assert w.ping(w.client_ns, "10.202.0.1", count=2).returncode == 0


def test_roaming_client_changes_address(topo, tmp_path):
    w = TunnelWorld(topo, tmp_path)
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    assert "10.201.0.1:" in w.exit_peer_dump()[2]
    # the client moves to a new outer address
    link = topo.run(w.client_ns, ["ip", "-o", "link", "show", "type", "veth"]).stdout
    ifname = re.search(r"\d+: (v\d+a)", link).group(1)
    topo.run(w.client_ns, ["ip", "addr", "del", "10.201.0.1/24", "dev", ifname])
    topo.run(w.client_ns, ["ip", "addr", "add", "10.201.0.77/24", "dev", ifname])
    # wireguard-go keeps sending from the address it last used until it
    # rebinds; a new listen port makes it rebind (new address and port)
    w.wg.wg("set", w.wg.ifname, "listen-port", "51977")
    r = w.ping(w.client_ns, "10.202.0.1", count=5)
    assert r.returncode == 0, r.stdout + r.stderr
    assert w.exit_peer_dump()[2] == "10.201.0.77:51977", "the endpoint did not follow the client"
    # and traffic from the exit node reaches it at the new address
    assert w.ping(w.exit_ns, "10.202.0.2", count=2).returncode == 0


def test_wrong_preshared_key_gives_no_traffic(topo, tmp_path):
    w = TunnelWorld(topo, tmp_path, client_psk=os.urandom(32))
    r = w.ping(w.client_ns, "10.202.0.1", count=2, timeout=2)
    assert r.returncode != 0
    # we answered the initiation, but the client could not use the response
    peer = w.exit_peer_dump()
    assert int(peer[4]) == 0, "a handshake completed with the wrong PSK"
    assert int(peer[5]) == 0


def test_unknown_client_key_is_refused_and_counted(topo, tmp_path):
    w = TunnelWorld(topo, tmp_path)
    w.wg.configure(os.urandom(32))  # the client now has a key the exit node does not know
    r = w.ping(w.client_ns, "10.202.0.1", count=2, timeout=2)
    assert r.returncode != 0
    assert w.status()["handshake"]["handshake_invalid"] > 0


TRANSFER_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); print('ready', flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

TRANSFER_CLIENT = r"""
import hashlib, os, random, socket, sys
random.seed(int(sys.argv[2])); data = random.randbytes(int(sys.argv[3]))
s = socket.create_connection((sys.argv[1], 5201)); s.sendall(data); s.close()
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


@pytest.mark.parametrize("direction,dst", [("upload", "10.202.0.1"), ("download", "10.202.0.2"),
                                           ("upload", "fd00:202::1")])
def test_bulk_tcp_transfer_arrives_intact(topo, tmp_path, direction, dst):
    """Segmentation (TSO, UDP GSO) and coalescing (GRO) rewrite headers and
    checksums, and the kernel trusts the checksums of what we coalesce: a
    bulk transfer's bytes must arrive exactly."""
    import sys as _sys
    w = TunnelWorld(topo, tmp_path)
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    server_ns, client_ns = ((w.exit_ns, w.client_ns) if direction == "upload"
                            else (w.client_ns, w.exit_ns))
    server = topo.popen(server_ns, [_sys.executable, "-c", TRANSFER_SERVER, dst],
                        stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    sent = topo.run(client_ns, [_sys.executable, "-c", TRANSFER_CLIENT, dst, "7", str(24 << 20)],
                    timeout=120).stdout.split()
    received = server.stdout.readline().split()
    server.wait(timeout=30)
    assert received == sent, f"sent {sent}, received {received}"
    assert w.status()["drops"]["send_failed"] == 0


@pytest.mark.parametrize("outer", [4, 6])
def test_fragmented_datagrams_from_a_small_mtu_link_arrive(topo, tmp_path, outer, backend):
    """A client behind a link with a smaller MTU than its tunnel needs
    sends datagrams that its kernel fragments. The exit node's kernel
    reassembles them and the data path decrypts them, on the XDP backend
    too: its WAN program passes every fragment to the kernel, whose UDP
    socket the workers read."""
    from dataplane.topology import socket_in
    w = TunnelWorld(topo, tmp_path, outer=outer)
    assert w.ping(w.client_ns, "10.202.0.1").returncode == 0  # the handshake, unfragmented
    sink = socket_in(w.exit_ns)
    sink.bind(("10.202.0.1", 9999))
    sink.settimeout(3)
    src = socket_in(w.client_ns)
    try:
        topo.set_up(w.client_ns, w.client_veth, mtu=1280)
        sent = [os.urandom(1300) for _ in range(5)]
        for payload in sent:  # 1328 inner bytes: 1360 + 32 + IP/UDP, more than 1280
            src.sendto(payload, ("10.202.0.1", 9999))
            assert sink.recv(2000) == payload
    finally:
        src.close()
        sink.close()
    st = w.status()
    assert st["drops"].get("malformed", 0) == 0, st["drops"]
    if backend == "xdp":
        assert st["xdp"]["wan_pass_first_fragment"] >= len(sent), st["xdp"]
    assert w.down() == 0
