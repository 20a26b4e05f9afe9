"""The control-plane API of a running `dataplane up`: a peer pushed through
it connects from wireguard-go; sessions pushed through it carry the load
generator's traffic; a session replaced under traffic loses nothing; the
socket is root's alone; TCP serves only clients with a certificate."""
import datetime
import ipaddress
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dataplane import crypto
from dataplane.bench.api import EXIT_GEN_SIDE, LISTEN_PORT, PushWorld
from dataplane.keys import PrivateKey
from dataplane.launch import dataplane_exe
from dataplane.wireguard_go import WireGuardGo


@pytest.fixture
def world(topo, tmp_path):
    w = PushWorld(topo, tmp_path)
    yield w
    w.close()


def test_the_api_socket_is_roots_alone_and_serves_its_document(world):
    st = world.api_path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    doc = world.client.openapi()
    assert "/v1/peers/{public_key}/session" in doc["paths"]
    info = world.client.interface()
    assert info["backend"] == "socket" and info["peers"] == 0
    assert world.key.reveal_base64() not in str(info)


def test_a_peer_pushed_through_the_api_connects_from_wireguard_go(world, topo):
    client_key = PrivateKey.generate()
    world.client.put_peer(client_key.public_key().base64(), allowed_ips=["10.224.5.5/32"],
                          generation=1)
    wg = WireGuardGo(topo, world.gen_ns, f"wga{os.getpid() % 10000}")
    wg.start()
    wg.configure(client_key.reveal(), listen_port=51999)
    wg.set_peer(world.key.public_key(), allowed_ips=["10.224.0.0/12"],
                endpoint=f"{EXIT_GEN_SIDE}:{LISTEN_PORT}")
    wg.up(["10.224.5.5/12"])
    ping = topo.run(world.gen_ns, ["ping", "-c", "3", "-i", "0.2", "-W", "5", "10.224.0.1"],
                    check=False, timeout=30)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    peer = world.client.peer(client_key.public_key().base64())
    assert peer["latest_handshake"] and peer["rx_packets"] >= 3 and peer["endpoint"]
    # removing it through the API ends the tunnel at once
    world.client.delete_peer(client_key.public_key().base64(), generation=2)
    ping = topo.run(world.gen_ns, ["ping", "-c", "2", "-W", "1", "10.224.0.1"], check=False,
                    timeout=30)
    assert ping.returncode != 0
    log = world.log.read_text()
    assert f"{EXIT_GEN_SIDE}" not in log and client_key.public_key().base64() not in log


@pytest.mark.parametrize("backend", ["socket", "xdp"])
def test_pushed_sessions_carry_the_generators_traffic(topo, tmp_path, backend):
    world = PushWorld(topo, tmp_path, backend=backend)
    try:
        _pushed_sessions_carry_traffic(world, backend)
        assert world.client.interface()["backend"] == backend
    finally:
        world.close()


def _pushed_sessions_carry_traffic(world, backend):
    with world.peers(50) as peers:
        answer = world.client.bulk(peers.session_ops(activate="now", generation=1))
        assert answer["applied"] and {r["status"] for r in answer["results"]} == {201}
        sent, got, bad = world.send(peers, 2000, rate=10000)
    assert sent >= 1900 and got == sent and bad == 0
    counts = [p["rx_packets"] for p in world.client.peers()]
    # round-robin over the peers: each carried its share
    assert len(counts) == 50 and sum(counts) == sent
    assert max(counts) - min(counts) <= 1
    metrics = world.client.metrics()
    assert metrics.count("wireguard_received_bytes_total{") == 50
    assert 'dataplane_native_memory_bytes{interface="' in metrics
    # the daemon says which crypto it chose: the fastest this CPU runs
    info = next(l for l in metrics.splitlines() if l.startswith("dataplane_info{"))
    assert f'backend="{backend}"' in info and \
        f'crypto="{crypto.implementations()[-1]}"' in info and info.endswith(" 1.0"), info


def test_a_session_replaced_under_traffic_loses_nothing(world):
    """New sessions are pushed while the peers send with their old keys
    (on_receive: the old keys stay valid); the peers then switch. Every
    packet of the three runs arrives, and nothing is dropped."""
    with world.peers(4) as peers:
        ops = peers.session_ops(activate="now", generation=1)
        world.client.bulk(ops)
        taken = {op["session"]["receiver_index"] for op in ops}
        before = world.send(peers, 3000, rate=10000, flow=0)
        during = {}
        sender = threading.Thread(target=lambda: during.update(
            run=world.send(peers, 6000, rate=10000, flow=1)))
        sender.start()
        time.sleep(0.2)
        answer = world.client.bulk(peers.session_ops(activate="on_receive", generation=2,
                                                     taken=taken, put_peer=False, stage=True))
        assert answer["applied"]
        sender.join(60)
        peers.use_staged()
        after = world.send(peers, 3000, rate=10000, flow=2)
    # nothing refused on the way in (no_route counts what the kernel itself
    # sends into the tunnel, such as IPv6 router solicitations)
    drops = world.client.interface()["status"]["drops"]
    for sent, got, bad in (before, during["run"], after):
        assert sent > 0 and got == sent and bad == 0, (before, during, after, drops)
    for p in world.client.peers():
        assert p["session"]["generation"] == 2 and p["keypairs"] == 2
    assert not {k: v for k, v in drops.items() if v and k != "no_route"}, drops


# ---------------------------------------------------------------- mutual TLS

def _cert(name: str, issuer_key, issuer_name, key, ca: bool, san_ip: str = None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=1))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san_ip:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(san_ip))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, obj) -> str:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(obj.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(path)


def test_tcp_serves_clients_with_a_certificate_only(topo, tmp_path):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = _cert("test CA", ca_key, ca_name, ca_key, True)
    srv_key, cli_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    srv = _cert("node", ca_key, ca_name, srv_key, False, san_ip=EXIT_GEN_SIDE)
    cli = _cert("control plane", ca_key, ca_name, cli_key, False)
    files = {n: _write(tmp_path / n, o) for n, o in (("ca.pem", ca), ("srv.pem", srv),
                                                      ("srv.key", srv_key), ("cli.pem", cli),
                                                      ("cli.key", cli_key))}
    extra = (f"ApiListen = {EXIT_GEN_SIDE}:8443\nApiCertificate = {files['srv.pem']}\n"
             f"ApiCertificateKey = {files['srv.key']}\nApiClientCA = {files['ca.pem']}\n")
    w = PushWorld(topo, tmp_path, extra_dataplane=extra)
    try:
        script = (
            "import sys, json\n"
            "from dataplane.client import Client\n"
            f"ctx = Client.tls_context({files['cli.pem']!r}, {files['cli.key']!r}, "
            f"{files['ca.pem']!r})\n"
            f"c = Client(host={EXIT_GEN_SIDE!r}, port=8443, tls=ctx)\n"
            "print(json.dumps(c.interface()['peers']))\n")
        ok = topo.run(w.gen_ns, [_python(), "-c", script], check=False, timeout=30)
        assert ok.returncode == 0 and ok.stdout.strip() == "0", ok.stderr
        # no client certificate: the TLS handshake is refused
        script_nocert = (
            "import ssl, socket\n"
            f"ctx = ssl.create_default_context(cafile={files['ca.pem']!r})\n"
            f"s = socket.create_connection(({EXIT_GEN_SIDE!r}, 8443), timeout=10)\n"
            f"t = ctx.wrap_socket(s, server_hostname={EXIT_GEN_SIDE!r})\n"
            "try:\n"
            "    t.sendall(b'GET /v1/interface HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
            "    print('answer', t.recv(100))\n"
            "except (ssl.SSLError, OSError) as e:\n"
            "    print('refused', e)\n")
        bad = topo.run(w.gen_ns, [_python(), "-c", script_nocert], check=False, timeout=30)
        # TLS 1.3: the server checks the client's certificate after the
        # client's side of the handshake is done; it then alerts and closes
        assert bad.returncode == 0, bad.stderr
        assert "HTTP/1.1" not in bad.stdout, bad.stdout
        assert bad.stdout.startswith(("refused", "answer b''")), bad.stdout
    finally:
        w.close()


def _python() -> str:
    return sys.executable


def test_a_plain_tcp_listener_is_refused(topo, tmp_path):
    conf = tmp_path / "dpn0.conf"
    conf.write_text(f"[Interface]\nPrivateKey = {PrivateKey.generate().reveal_base64()}\n"
                    f"[DataPlane]\nApiListen = 127.0.0.1:8443\n")
    ns = topo.namespace("n")
    out = topo.run(ns, [dataplane_exe(), "up", str(conf)], check=False, timeout=30)
    assert out.returncode != 0
    assert "mutual TLS" in out.stderr + out.stdout



def test_bench_api_reports_its_figures(tmp_path):
    out = tmp_path / "api.json"
    run = subprocess.run([dataplane_exe(), "bench", "api", "--peers", "300", "--puts", "30",
                          "--background", "1", "--replay-window", "2048", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(out.read_text())
    assert figures["peers"] == 300 and figures["replay_window"] == 2048
    assert figures["bulk_seconds"] > 0
    # the same batch again, and a new session for every peer (each line's
    # status checked by the bench itself)
    assert figures["resync_seconds"] > 0 and figures["rotation_seconds"] > 0
    assert figures["traffic"]["received"] == figures["traffic"]["sent"] > 250
    assert figures["native_memory"]["keypairs_live"] >= 300
    assert 0 < figures["put_latency_ms"]["p50"] <= figures["put_latency_ms"]["p99"]
    assert "bulk push of 300 peers" in run.stdout
