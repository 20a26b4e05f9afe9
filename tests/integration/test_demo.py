"""The README's main command, end to end."""
import subprocess
import sys
from pathlib import Path

from dataplane.topology import Topology  # noqa: F401 - the topo fixture checks the tools

DATAPLANE = str(Path(sys.executable).parent / "dataplane")


def test_demo_runs_a_real_tunnel_and_cleans_up(topo):
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    r = subprocess.run([DATAPLANE, "demo", "--seconds", "1"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5/5 replies" in r.stdout
    assert "1 completed with wireguard-go" in r.stdout
    assert "latest handshake" in r.stdout  # stock `wg show` read our interface
    assert "Mbits/sec through the tunnel and NAT" in r.stdout
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert sorted(after.split()) == sorted(before.split()), "the demo left namespaces behind"
