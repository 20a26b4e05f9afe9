"""The README's main command, end to end."""
import subprocess
import sys
from pathlib import Path

DATAPLANE = str(Path(sys.executable).parent / "dataplane")


def test_demo_runs_a_real_tunnel_and_cleans_up(topo):
    proc = subprocess.Popen([DATAPLANE, "demo", "--seconds", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "5/5 replies" in out
    assert "1 completed with wireguard-go" in out
    assert "latest handshake" in out  # stock `wg show` read our interface
    assert "Mbits/sec through the tunnel and NAT" in out
    # its namespaces (named after its pid) are gone
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    prefix = f"demo{proc.pid % 100000}-"
    assert not [line for line in left.splitlines() if line.startswith(prefix)], left
