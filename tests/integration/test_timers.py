"""The timers of whitepaper section 6 on a running exit node, with its
clock moved forward (DATAPLANE_TEST_CLOCK) so minutes pass in seconds."""
import subprocess
import time

from tests.integration.tunnel import TunnelWorld


def _peer(status, world):
    return status["peer_state"][str(world.client_key.public_key())]


def test_initiator_rekeys_after_rekey_after_time_without_losing_the_flow(topo, tmp_path):
    w = TunnelWorld(topo, tmp_path, exit_knows_client_endpoint=True, test_clock=True)
    # the exit node initiates, so it owns the rekey of this session
    assert w.ping(w.exit_ns, "10.202.0.2", count=1).returncode == 0
    first = w.status()
    assert first["handshake"]["handshakes_completed"] == 1
    index = _peer(first, w)["current_index"]
    ping = topo.popen(w.exit_ns, ["ping", "-c", "25", "-i", "0.2", "10.202.0.2"],
                      stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    w.advance_clock(121)  # past REKEY_AFTER_TIME: the next packet sent asks for a handshake
    out, _ = ping.communicate(timeout=30)
    assert ping.returncode == 0 and " 0% packet loss" in out, out
    after = w.status()
    assert after["handshake"]["handshakes_completed"] == 2
    assert _peer(after, w)["current_index"] != index
    assert after["drops"]["expired_key"] == 0 and after["drops"]["unknown_index"] == 0


def test_expired_keypair_is_not_used_and_traffic_restarts_the_handshake(topo, tmp_path):
    w = TunnelWorld(topo, tmp_path, exit_knows_client_endpoint=True, test_clock=True)
    assert w.ping(w.exit_ns, "10.202.0.2", count=1).returncode == 0
    w.advance_clock(181)  # past REJECT_AFTER_TIME: the keypair must not send any more
    r = w.ping(w.exit_ns, "10.202.0.2", count=3)
    assert r.returncode == 0, r.stdout
    assert w.status()["handshake"]["handshakes_completed"] == 2


def test_keys_are_wiped_after_three_reject_after_times(topo, tmp_path):
    w = TunnelWorld(topo, tmp_path, test_clock=True)
    assert w.ping(w.client_ns, "10.202.0.1", count=1).returncode == 0
    assert _peer(w.status(), w)["keypairs"] >= 1
    status = w.advance_clock(541)
    assert _peer(status, w)["keypairs"] == 0, "keys outlived 3 x REJECT_AFTER_TIME"
