"""`dataplane bench` (the packet benchmark over the native load generator)
produces well-formed rows for every DUT, both directions, several peers;
no speed is asserted."""
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

DATAPLANE = str(Path(sys.executable).parent / "dataplane")
DUTS = ("dataplane-socket", "wireguard-go", "no-tunnel")


def test_bench_rows_are_well_formed_for_every_dut(topo, tmp_path):
    out, png = tmp_path / "rows.json", tmp_path / "bench.png"
    argv = [DATAPLANE, "bench", *(a for d in DUTS for a in ("--dut", d)),
            "--size", "64", "--size", "imix", "--peers", "3", "--direction", "both",
            "--duration", "0.5", "--repeat", "2", "--warmup", "0.2",
            "--latency-seconds", "0.3", "--latency-rate", "2000",
            "--json", str(out), "--plot", str(png)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {(row["dut"], row["size"]) for row in rows} == {
        (d, s) for d in DUTS for s in (64, "imix")}
    for row in rows:
        where = f"{row['dut']} {row['size']}"
        assert row["peers"] == 3 and row["direction"] == "both" and row["runs"] == 2, where
        # the defaults: receive in NAPI threads, receivers that never sleep on sockets
        assert row["napi_threads"] is True and row["receiver_poll_us"] == 100, where
        assert row["pps"] > 0 and row["gbps"] > 0, where
        assert row["pps_min"] <= row["pps"] <= row["pps_max"], where
        # every run is kept, in order, and the row's figure is their median
        assert len(row["pps_runs"]) == len(row["cpu_ns_per_pkt_runs"]) == 2, where
        assert row["pps"] == pytest.approx(statistics.median(row["pps_runs"])), where
        assert 0 <= row["loss"] <= 1, where
        # every packet that arrived opened and was ours: none forged, none twice
        assert row["rejected"] == 0 and row["duplicates"] == 0, where
        # the XDP DUTs' kernel drops at their AF_XDP rings, read around each
        # run (status socket, the forwarder's report): part of what was lost
        if row["dut"] in ("dataplane-xdp", "xsk-forward"):
            sent = row["sent_pps"] * row["duration_s"] * row["runs"]
            assert isinstance(row["dut_ring_drops"], int), where
            assert 0 <= row["dut_ring_drops"] <= sent * 1.2, (where, row["dut_ring_drops"], sent)
        else:
            assert row["dut_ring_drops"] is None, where
        assert 0 < row["lat_p50_us"] <= row["lat_p99_us"] <= row["lat_p999_us"], where
        assert row["vs_no_tunnel"] > 0, where
        assert row["machine"]["cores"] >= 1 and row["machine"]["kernel"], where
        if row["dut"] != "no-tunnel":
            assert row["dut_proc_cpu_ns_per_pkt"] > 0, f"{where}: DUT CPU not measured"
            assert row["vs_wireguard_go"] > 0, where
        if row["machine"]["cores"] >= 2:
            assert row["cpu_ns_per_pkt"] > 0 and 0 < row["dut_core_busy"] <= 1.05, where
            wg = next(w for w in rows if w["dut"] == "wireguard-go" and
                      w["size"] == row["size"])
            if row["dut"] != "no-tunnel":  # packets per DUT CPU-second against wireguard-go's
                assert row["cpu_vs_wireguard_go"] == \
                    pytest.approx(wg["cpu_ns_per_pkt"] / row["cpu_ns_per_pkt"]), where
                # and run by run (run i of each DUT measured in turn)
                assert row["cpu_vs_wireguard_go_paired"] == pytest.approx(statistics.median(
                    w / c for w, c in zip(wg["cpu_ns_per_pkt_runs"],
                                          row["cpu_ns_per_pkt_runs"]))), where
            assert row["vs_wireguard_go_paired"] == pytest.approx(statistics.median(
                p / w for p, w in zip(row["pps_runs"], wg["pps_runs"]))), where
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "vs wg-go" in r.stdout and "dataplane-socket" in r.stdout
    # the DUTs' runs take turns: run 1 of each, then run 2 of each
    runs = re.findall(r"\] (\S+) (\S+ B), 3 peer\(s\), both: run (\d)/2", r.stderr)
    for size in ("64 B", "imix B"):
        order = [(dut, int(i)) for dut, sz, i in runs if sz == size]
        assert order == [(d, 1) for d in DUTS] + [(d, 2) for d in DUTS], order


def test_bench_with_sessions_pushed_through_the_api(topo, tmp_path):
    """--sessions api: the generator's sessions come from the control-plane
    API (no handshakes); traffic flows both ways through them."""
    out = tmp_path / "rows.json"
    argv = [DATAPLANE, "bench", "--dut", "dataplane-socket", "--dut", "dataplane-xdp",
            "--size", "512", "--peers", "20", "--direction", "both", "--duration", "0.5",
            "--repeat", "1", "--warmup", "0.2", "--latency-seconds", "0", "--sessions", "api",
            "--json", str(out)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    progress = r.stdout + r.stderr
    assert "20 session(s) pushed through the API" in progress
    assert "handshake(s) in" not in progress
    rows = json.loads(out.read_text())
    assert {row["dut"] for row in rows} == {"dataplane-socket", "dataplane-xdp"}
    for row in rows:
        assert row["pps"] > 0 and row["rejected"] == 0 and row["duplicates"] == 0, row["dut"]


def test_bench_refuses_bad_arguments():
    r = subprocess.run([DATAPLANE, "bench", "--size", "20"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "size must be 64..1420" in r.stderr
    r = subprocess.run([DATAPLANE, "bench", "--peers", "0"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "peers must be 1..60000" in r.stderr
    r = subprocess.run([DATAPLANE, "bench", "--receiver-poll-us", "-5"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "receiver poll must be 0..10000 us" in r.stderr
    r = subprocess.run([DATAPLANE, "bench", "--busy-poll", "100001"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "busy polling must be 0..100000 us" in r.stderr
    r = subprocess.run([DATAPLANE, "bench", "--realtime", "100"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "a SCHED_FIFO priority is 1..99 (0: off), not 100" in r.stderr
    if os.geteuid() == 0:  # checked after the root check
        r = subprocess.run([DATAPLANE, "bench", "--realtime", "1", "--busy-poll", "50"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "--realtime and --busy-poll do not go together" in r.stderr


@pytest.mark.parametrize("busy_poll", [0, 50])
def test_bench_xsk_forward_ceiling_row(topo, tmp_path, busy_poll):
    """The raw AF_XDP forwarding row: packets reach the sink (both ways)
    through the forwarder's AF_XDP sockets, and the XDP backend's row says
    how it compares; with --busy-poll, both XDP DUTs busy-poll."""
    from dataplane.bench.packets import default_duts, xdp_available

    if not xdp_available():
        pytest.skip("the XDP programs are not built (python ebpf/build.py)")
    assert "xsk-forward" in default_duts()
    out = tmp_path / "rows.json"
    argv = [DATAPLANE, "bench", "--dut", "dataplane-xdp", "--dut", "xsk-forward",
            "--size", "64", "--peers", "1", "--direction", "both", "--duration", "0.5",
            "--repeat", "1", "--warmup", "0.2", "--latency-seconds", "0.3",
            "--latency-rate", "2000", "--json", str(out), "--busy-poll", str(busy_poll)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    rows = {row["dut"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"dataplane-xdp", "xsk-forward"}
    assert all(row["busy_poll_us"] == busy_poll for row in rows.values()), rows
    fwd = rows["xsk-forward"]
    assert fwd["pps"] > 0 and 0 <= fwd["loss"] < 1, fwd
    assert fwd["rejected"] == 0 and fwd["duplicates"] == 0, fwd
    assert fwd["dut_proc_cpu_ns_per_pkt"] > 0 and fwd["vs_xsk_forward"] == 1.0, fwd
    c = fwd["dut_counters"]
    # the kernel's counters of its AF_XDP sockets, in its final counters too
    assert c["xsk_wan_rx_invalid_descs"] == c["xsk_inner_tx_invalid_descs"] == 0, c
    assert fwd["dut_ring_drops"] >= 0, fwd
    # frames went through the forwarder's sockets, not the kernel's forwarding:
    # client -> WAN socket -> inner pair, and the reverse
    assert c["wan_steer"] > 0 and c["wan_steer_no_socket"] == 0, c
    assert c["wan_rx"] >= c["inner_tx"] > 0 and c["inner_rx"] >= c["wan_tx"] > 0, c
    assert c["inner_steer_no_socket"] == 0, c
    assert rows["dataplane-xdp"]["vs_xsk_forward"] > 0, rows["dataplane-xdp"]
    assert "vs xsk" in r.stdout and "xsk-forward" in r.stdout


def test_xsk_forwarder_refuses_bad_arguments(topo):
    ns = topo.namespace("xf")
    r = topo.run(ns, [sys.executable, "-c",
                      "from dataplane.bench.xsk_forward import XskForwarder\n"
                      "try:\n XskForwarder('nosuch0', bytes(12), 'nosuch1', bytes(12))\n"
                      "except OSError as e: print('refused', e.errno)"], check=False)
    assert r.returncode == 0 and r.stdout.startswith("refused"), r.stdout + r.stderr
    r = topo.run(ns, [sys.executable, "-m", "dataplane.bench.xsk_forward", "--wan", "lo",
                      "--wan-macs", "bad", "--inner", "lo", "--inner-macs", "bad"], check=False)
    assert r.returncode == 2 and "two MAC addresses" in r.stderr


@pytest.mark.parametrize("napi_threads", [True, False])
def test_every_napi_thread_of_an_xdp_dut_is_on_its_cpu(topo, tmp_path, napi_threads):
    """Receiving in NAPI threads (the default), the DUT's interfaces have
    one each, and the XDP backend steers what they route into the tunnel
    in those threads: its end of the inner pair has none of its own. In
    softirq (--softirq) it has one, since softirq work would starve its
    workers. Either way every NAPI thread of the DUT is on the DUT's CPU,
    where its work is counted as the DUT's."""
    import os

    from dataplane.bench.packets import World, xdp_available

    if not xdp_available():
        pytest.skip("the XDP programs are not built (python ebpf/build.py)")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the DUT is pinned only with two CPUs or more")
    w = World(topo, "dataplane-xdp", 1, tmp_path, pin=True, say=lambda s: None,
              napi_threads=napi_threads)
    try:
        links = w._links(w.server)
        own = [name for name in links if name.endswith("-x")]
        assert len(own) == 1, links
        # /sys as the DUT's namespace sees it
        threaded = {name: topo.run(w.server, ["cat", f"/sys/class/net/{name}/threaded"],
                                   check=False).stdout.strip() in ("1", "enabled")
                    for name in links if name != "lo"}
        assert threaded[own[0]] is not napi_threads, threaded
        assert sum(threaded.values()) == (2 if napi_threads else 1), threaded
        threads = w._napi_threads(links)
        assert threads, links
        for tid in threads:
            assert os.sched_getaffinity(tid) == {w.dut_cpu}, tid
    finally:
        w.close()


def test_wireguard_go_is_sized_to_the_dut_cpu_from_its_start(topo, tmp_path):
    """Go sizes its scheduler to the CPUs it may use when it starts: the
    DUT's wireguard-go starts on the DUT's CPU with GOMAXPROCS 1, as it
    would run deployed on one CPU, not with a scheduler for every CPU of
    the machine squeezed onto one afterwards (which costs it CPU time)."""
    import os

    from dataplane.bench.packets import World

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the DUT is pinned only with two CPUs or more")
    w = World(topo, "wireguard-go", 1, tmp_path, pin=True, say=lambda s: None)
    try:
        pid = w.dut_pid
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go"
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"GOMAXPROCS=1" in environ
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        assert tids and all(os.sched_getaffinity(t) == {w.dut_cpu} for t in tids)
        # and it works: the emulated peer's handshake went through
        ifname = f"bpw{os.getpid() % 10000}"  # as World names it
        out = topo.run(w.server, ["wg", "show", ifname, "latest-handshakes"]).stdout.split()
        assert len(out) == 2 and int(out[1]) > 0, out
    finally:
        w.close()


@pytest.mark.parametrize("dut,threads", [("dataplane-xdp", "dp-worker-"),
                                         ("dataplane-socket", "dp-worker-"),
                                         ("xsk-forward", "xsk-forward"),
                                         ("wireguard-go", "")])
def test_realtime_runs_the_duts_own_threads_sched_fifo(topo, tmp_path, dut, threads):
    """--realtime: the threads that do a DUT's packet work run SCHED_FIFO
    at that priority (dataplane's workers through RealtimePriority, the
    forwarder's thread, every wireguard-go thread), and traffic goes
    through them."""
    from dataplane.bench.packets import World

    w = World(topo, dut, 1, tmp_path, pin=True, say=lambda s: None, realtime=2)
    try:
        tasks = [t for t in Path(f"/proc/{w.dut_pid}/task").iterdir()
                 if (t / "comm").read_text().startswith(threads)]
        assert tasks
        for t in tasks:
            assert os.sched_getscheduler(int(t.name)) == os.SCHED_FIFO, t
            assert os.sched_getparam(int(t.name)).sched_priority == 2, t
        r = w.run("1420", "decap", 0.5, 20000)
        assert r["pps"] > 5000, r
    finally:
        w.close()


def test_wait_idle_tells_a_busy_cpu_from_a_quiet_one():
    """Before each run the bench waits for the DUT's CPU to go quiet (with
    every DUT's world up, one may still be working): a CPU a spinning
    process holds is reported busy once the wait runs out, and once it
    stops the CPU counts as quiet."""
    from dataplane.bench.packets import wait_idle

    cpu = sorted(os.sched_getaffinity(0))[-1]
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spin.pid, {cpu})
        busy = wait_idle(cpu, timeout=0.5)
        assert busy is not None and busy > 0.5, busy
    finally:
        spin.kill()
        spin.wait()
    assert wait_idle(cpu, timeout=5.0) is None
