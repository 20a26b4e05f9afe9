"""`dataplane bench --obfuscation`: the generator speaks an AmneziaWG
profile to our DUTs and to amneziawg-go; packets arrive with the profile,
and transport messages of another profile are dropped by the DUT (counted)
and not taken by the generator; a junk flood is dropped before the
workers on the XDP backend. No speed is asserted."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane import amneziawg_go
from dataplane.bench.awg_profile import DEFAULT_PROFILE, read_profile, variants
from dataplane.bench.packets import World, xdp_available
from dataplane.obfuscation import HeaderRange, Obfuscation

DATAPLANE = str(Path(sys.executable).parent / "dataplane")


def _needs(dut: str) -> None:
    if dut == "dataplane-xdp" and not xdp_available():
        pytest.skip("the XDP programs are not built (python ebpf/build.py)")
    if dut == "amneziawg-go":
        try:
            amneziawg_go.binary()
        except amneziawg_go.AmneziaWGUnavailable as e:
            pytest.skip(f"amneziawg-go: {e}")


def test_profile_files_and_variants(tmp_path):
    conf = tmp_path / "client.conf"
    conf.write_text("[Interface]\nPrivateKey = whatever\nJc = 3\nJmin = 10\nJmax = 50\n"
                    "S1 = 7\nS4 = 4  # comment\nH4 = 5000-5999\n\n[Peer]\nEndpoint = x:1\n")
    p = read_profile(conf)
    assert (p.jc, p.s1, p.s4, p.h4) == (3, 7, 4, HeaderRange(5000, 5999))
    conf.write_text("[Interface]\nS4 = 4\nH3 = 10-20\nH4 = 15-30\n")
    with pytest.raises(ValueError, match=re.escape(f"{conf}:4: H4: 15-30 overlaps H3")):
        read_profile(conf)
    conf.write_text("[Interface]\nJc = 2\nJmin = 1\nJmax = 9\n")
    with pytest.raises(ValueError, match="nothing to measure"):
        read_profile(conf)
    assert variants(["dataplane-xdp", "wireguard-go", "amneziawg-go"], "both") == [
        ("dataplane-xdp", False), ("dataplane-xdp", True), ("wireguard-go", False),
        ("amneziawg-go", True)]
    assert variants(["dataplane-xdp", "xsk-forward"], "on") == [
        ("dataplane-xdp", True), ("xsk-forward", False)]
    assert variants(["dataplane-xdp", "amneziawg-go"], "off") == [
        ("dataplane-xdp", False), ("amneziawg-go", False)]


def test_bench_refuses_a_bad_profile(tmp_path):
    r = subprocess.run([DATAPLANE, "bench", "--obfuscation-profile", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "No such file or directory" in r.stderr, r.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text("[Interface]\nS4 = 70000\n")
    r = subprocess.run([DATAPLANE, "bench", "--obfuscation-profile", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and f"{bad}:2: S4:" in r.stderr, r.stderr


def test_obfuscated_bench_rows_with_and_without_the_profile(topo, tmp_path):
    """--obfuscation both: each dataplane DUT without and with the profile,
    amneziawg-go with it; every row's packets arrive, the obfuscated rows
    carry the profile and their cost against the same DUT without it."""
    duts = [d for d in ("dataplane-socket", "dataplane-xdp", "amneziawg-go")
            if d != "dataplane-xdp" or xdp_available()]
    _needs("amneziawg-go")
    out = tmp_path / "rows.json"
    argv = [DATAPLANE, "bench", *(a for d in duts for a in ("--dut", d)),
            "--obfuscation", "both", "--size", "512", "--peers", "3", "--direction", "both",
            "--duration", "0.5", "--repeat", "1", "--warmup", "0.2", "--latency-seconds", "0",
            "--json", str(out)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    rows = {row["label"]: row for row in json.loads(out.read_text())}
    expected = {"amneziawg-go"} | {f"{d}{s}" for d in duts if d != "amneziawg-go"
                                   for s in ("", "+awg")}
    assert set(rows) == expected
    for name, row in rows.items():
        obfuscated = name.endswith("+awg") or name == "amneziawg-go"
        assert row["obfuscation"] is obfuscated, name
        assert row["obfuscation_profile"] == (DEFAULT_PROFILE.settings() if obfuscated
                                              else None), name
        assert row["pps"] > 0 and row["rejected"] == 0 and row["duplicates"] == 0, name
        # the DUT's transport messages fit the generator's profile (a
        # keepalive at most would not)
        assert row["foreign"] <= 10, (name, row["foreign"])
        assert row["vs_amneziawg_go"] > 0 and row["cpu_vs_amneziawg_go"] > 0, name
        if name.endswith("+awg"):
            assert row["cpu_vs_unobfuscated"] > 0 and row["vs_unobfuscated"] > 0, name
            assert row["cpu_vs_unobfuscated_paired"] == pytest.approx(
                row["cpu_vs_unobfuscated"]), name  # one run each
        else:
            assert row["vs_unobfuscated"] is None, name
        if row["dut"].startswith("dataplane-"):
            # nothing of it was dropped as junk or failed to open
            assert row["dut_worker_drops"] == 0, (name, row["dut_counter_deltas"])
        if row["dut"] == "dataplane-xdp":
            moved = row["dut_counter_deltas"]["xdp"]
            assert moved.get("wan_steer_data", 0) > 0, (name, moved)
            assert row["dut_xdp_drops"] == 0, (name, moved)
    assert "pkt/CPU-s vs awg-go" in r.stdout and "dataplane-socket+awg" in r.stdout
    assert "AmneziaWG profile" in r.stdout


@pytest.mark.parametrize("dut", ["dataplane-socket", "dataplane-xdp", "amneziawg-go"])
def test_transport_of_another_profile_does_not_arrive(topo, tmp_path, dut):
    """Sessions made with the DUT's profile, then transport messages with
    another S4 or H4: the DUT takes none of them (our DUTs count each as
    junk), and the generator takes none of the DUT's. Then a junk flood
    beside the right profile: on the XDP backend the WAN program drops it
    all, and the workers see none of it."""
    _needs(dut)
    w = World(topo, dut, 2, tmp_path, pin=True, say=lambda s: None,
              obfuscation=DEFAULT_PROFILE)
    try:
        r = w.run("512", "both", 0.4, 5000)
        assert r["pps"] > 0.9 * 2 * 5000 and r["foreign"] == 0, r
        others = [Obfuscation(s4=DEFAULT_PROFILE.s4 + 1, h4=DEFAULT_PROFILE.h4),
                  Obfuscation(s4=DEFAULT_PROFILE.s4, h4=HeaderRange(7_000_000, 7_000_999))]
        for other in others:
            w.wire = other
            r = w.run("512", "decap", 0.3, 5000)
            sent = round(r["sent_pps"] * 0.3)
            assert r["pps"] == 0, (other, r["pps"])
            if dut.startswith("dataplane-"):
                moved = r["dut_counter_deltas"]
                junk = moved["drops"].get("junk", 0) + moved["xdp"].get("wan_drop_junk", 0)
                assert junk >= 0.9 * sent, (other, sent, moved)
            r = w.run("512", "encap", 0.3, 5000)
            assert r["pps"] == 0 and r["foreign"] >= 0.9 * r["sent_pps"] * 0.3, (other, r)
        w.wire = DEFAULT_PROFILE
        r = w.run("512", "decap", 0.4, 5000, junk_rate=20000)
        assert r["pps"] > 0.9 * 5000, r
        assert r["junk_sent"] >= 0.9 * 20000 * 0.4, r
        if dut == "dataplane-xdp":
            assert r["dut_xdp_drops"] >= 0.99 * r["junk_sent"], r
            assert r["dut_worker_drops"] == 0, r["dut_counter_deltas"]
        elif dut == "dataplane-socket":
            assert r["dut_counter_deltas"]["drops"].get("junk", 0) >= 0.99 * r["junk_sent"], r
    finally:
        w.close()
