"""`dataplane bench tunnel` produces well-formed rows (no speed asserted)."""
import json
import subprocess
import sys
from pathlib import Path

DATAPLANE = str(Path(sys.executable).parent / "dataplane")


def test_bench_tunnel_rows_are_well_formed(topo, tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([DATAPLANE, "bench", "tunnel", "--dut", "dataplane-socket", "--dut",
                        "wireguard-go", "--test", "tcp", "--test", "udp-64", "--seconds", "1",
                        "--repeat", "1", "--json", str(out)], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(out.read_text())
    assert {(row["dut"], row["test"]) for row in rows} == {
        (d, t) for d in ("dataplane-socket", "wireguard-go") for t in ("tcp", "udp-64")}
    for row in rows:
        assert row["gbps"] > 0 and row["runs"] == 1
        assert row["min_gbps"] <= row["gbps"] <= row["max_gbps"]
        assert row["cpu_s"] > 0, "the DUT's CPU time was not measured"
        if row["test"] == "udp-64":
            assert row["pps"] > 0 and 0 <= row["loss"] <= 1 and row["cpu_ns_per_pkt"] > 0
        else:
            assert row["cpu_ns_per_byte"] > 0
    assert "DUT cpu ns/B" in r.stdout
