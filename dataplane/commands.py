"""`dataplane up`, `down` and `show`: the operator's commands."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from dataplane import uapi
from dataplane.daemon import RUN_DIR, UAPI_DIR, run_up


def add_parsers(commands) -> None:
    up = commands.add_parser("up", help="bring an interface up from a wg-quick style file and "
                                        "serve it in the foreground",
                             description="Bring an interface up from CONFIG (wg-quick format "
                                         "plus [DataPlane]) and serve it until SIGTERM/SIGINT. "
                                         "The interface is named after the file.")
    up.add_argument("config", help="path to NAME.conf")
    up.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    up.set_defaults(run=_up)

    down = commands.add_parser("down", help="stop the daemon serving NAME",
                               description="Stop the daemon serving NAME; it removes the "
                                           "interface and its routes and wipes its keys.")
    down.add_argument("name")
    down.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    down.set_defaults(run=_down)

    show = commands.add_parser("show", help="show interfaces, peers and drop counters",
                               description="Show what `wg show` shows, plus the backend, the "
                                           "crypto implementation, the AmneziaWG obfuscation "
                                           "and the drop counters of "
                                           "our interfaces.")
    show.add_argument("name", nargs="?", help="one interface (default: all of ours)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(run=_show)


def _up(args) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="dataplane: %(message)s", stream=sys.stderr)
    if os.geteuid() != 0:
        print("dataplane up: needs root (CAP_NET_ADMIN) to create the interface",
              file=sys.stderr)
        return 1
    return run_up(args.config)


def _pid_of(name: str) -> int:
    try:
        return int((RUN_DIR / f"{name}.pid").read_text())
    except (OSError, ValueError):
        raise SystemExit(f"dataplane: {name} is not up (no {RUN_DIR}/{name}.pid)") from None


def _gone(name: str) -> bool:
    """NAME's daemon has gone down or was killed since we listed it."""
    try:
        return not _running(int((RUN_DIR / f"{name}.pid").read_text()))
    except (OSError, ValueError):
        return True


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _down(args) -> int:
    pid = _pid_of(args.name)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"dataplane down: {args.name}: its daemon (pid {pid}) is gone", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _running(pid):
            print(f"{args.name} is down")
            return 0
        time.sleep(0.05)
    print(f"dataplane down: {args.name}: pid {pid} still running after {args.timeout}s",
          file=sys.stderr)
    return 1


def _request(path: Path, text: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        if text:
            s.sendall(text.encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            if text and b"".join(chunks).endswith(b"\n\n"):
                break
    return b"".join(chunks).decode()


def interface_status(name: str) -> dict:
    """`wg`'s view (UAPI get) and ours (the status socket) of one interface."""
    state = uapi.parse_get(_request(UAPI_DIR / f"{name}.sock", "get=1\n\n"))
    ours = json.loads(_request(RUN_DIR / f"{name}.status.sock", "") or "{}")
    return {"state": state, "status": ours}


def _ago(ns: int) -> str:
    if not ns:
        return "never"
    s = int(time.time() - ns / 1e9)
    return f"{s} second{'s' if s != 1 else ''} ago"


def backend_summary(status: dict) -> str:
    """"xdp on eth0 (queue 0), eth1 (queues 0, 1), 3 worker(s)" or
    "socket, 1 worker(s)", from the status socket's figures; with busy
    polling, ", busy polling 50 us (kernel receive in the workers: 2 of 4
    sockets)"; with real-time workers, ", real-time workers (SCHED_FIFO 1)",
    as the kernel holds them (", 2 of 3 real-time workers (SCHED_FIFO 1)" if
    not all are)."""
    text = status.get("backend", "?")
    wan = status.get("wan") or {}
    if wan:
        text += " on " + ", ".join(
            f"{ifname} (queue{'s' if len(w['queues']) != 1 else ''} "
            f"{', '.join(map(str, w['queues']))})" for ifname, w in wan.items())
    text += f", {status.get('workers', '?')} worker(s)"
    busy = status.get("busy_poll") or {}
    if busy.get("us"):
        socks = [s for w in busy.get("sockets", ()) for s in w.values()]
        napi = sum(1 for s in socks if s.get("napi_id"))
        text += (f", busy polling {busy['us']} us (kernel receive in the workers: "
                 f"{napi} of {len(socks)} sockets)")
    sched = status.get("scheduling") or []
    rt = [w for w in sched if w.get("policy") in ("fifo", "rr")]
    if rt:
        prios = sorted({f"SCHED_{w['policy'].upper()} {w['priority']}" for w in rt})
        share = "" if len(rt) == len(sched) else f"{len(rt)} of {len(sched)} "
        text += f", {share}real-time workers ({', '.join(prios)})"
    return text


_PLAIN_HEADERS = {"h1": "1", "h2": "2", "h3": "3", "h4": "4"}


def obfuscation_summary(status: dict) -> str:
    """"amneziawg (S1 15, ..., H1 1000000-1000999, ..., Jc 4 of 40-70 B,
    I1 set)", with ", plain WireGuard accepted too" when it is; "off (plain
    WireGuard)" when nothing is set. From the status socket's figures (the
    `obfuscation` of Obfuscation.as_json)."""
    obf = status.get("obfuscation") or {}
    paddings = [f"{k.upper()} {obf[k]}" for k in ("s1", "s2", "s3", "s4") if obf.get(k)]
    headers = [f"{k.upper()} {obf[k]}" for k, plain in _PLAIN_HEADERS.items()
               if obf.get(k, plain) != plain]
    extras = []
    if obf.get("jc"):
        extras.append(f"Jc {obf['jc']} of {obf.get('jmin')}-{obf.get('jmax')} B")
    extras += [f"I{n} set" for n in range(1, 6) if obf.get(f"i{n}")]
    if not paddings and not headers:
        if not extras:
            return "off (plain WireGuard)"
        # J and I go before this side's own initiations; the wire is plain
        return f"off (plain WireGuard; before our initiations: {', '.join(extras)})"
    text = f"amneziawg ({', '.join(paddings + headers + extras)})"
    if status.get("accept_plain_wireguard"):
        text += ", plain WireGuard accepted too"
    return text


# The kernel's AF_XDP socket counters that count lost packets (the others
# count how often a ring was found empty).
XSK_DROPS = ("rx_ring_full", "rx_dropped", "rx_invalid_descs", "tx_invalid_descs")


def xsk_drops(counters: dict) -> dict[str, int]:
    """The AF_XDP sockets' drop counters (xsk_SIDE_NAME, NAME in XSK_DROPS)
    among a status's XDP counters or the bench forwarder's."""
    return {k: n for k, n in counters.items()
            if k.startswith("xsk_") and k.split("_", 2)[2] in XSK_DROPS}


def all_drops(status: dict) -> dict[str, int]:
    """Every non-zero drop count of the status socket's figures: the data
    path's, on the XDP backend also the WAN program's (wan_drop_*) and the
    kernel's at our AF_XDP sockets (xsk_wan_rx_ring_full: the workers fell
    behind); on the socket backend the kernel's at the TUN (tun_queue_full:
    the workers had not read its queue in time)."""
    xdp = status.get("xdp") or {}
    out = dict(status.get("drops") or {})
    out.update({k: n for k, n in xdp.items() if k.startswith("wan_drop_")})
    out.update(xsk_drops(xdp))
    out["tun_queue_full"] = (status.get("tun_queue") or {}).get("dropped", 0)
    return {k: n for k, n in out.items() if n}


def _show(args) -> int:
    names = [args.name] if args.name else sorted(
        p.name[:-len(".pid")] for p in RUN_DIR.glob("*.pid")) if RUN_DIR.exists() else []
    if not names:
        print("no dataplane interfaces are up")
        return 0
    out = {}
    for name in names:
        try:
            out[name] = interface_status(name)
        except (OSError, uapi.UapiError, ValueError) as e:
            if not args.name and _gone(name):
                # a daemon killed with -9 leaves its pid file: not an error
                # for the others' figures
                print(f"dataplane show: {name}: its daemon is gone (skipped)",
                      file=sys.stderr)
                continue
            print(f"dataplane show: {name}: {e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({n: {"listen_port": v["state"].listen_port,
                              "peers": [{"public_key": str(p.public_key),
                                         "endpoint": str(p.endpoint) if p.endpoint else None,
                                         "allowed_ips": [str(a) for a in p.allowed_ips],
                                         "latest_handshake_ns": p.last_handshake_ns,
                                         "rx_bytes": p.rx_bytes, "tx_bytes": p.tx_bytes}
                                        for p in v["state"].peers],
                              **v["status"]} for n, v in out.items()}, indent=2))
        return 0
    for name, v in out.items():
        st, ours = v["state"], v["status"]
        print(f"interface: {name}")
        if st.private_key is not None:
            print(f"  public key: {st.private_key.public_key()}")
        print(f"  listening port: {st.listen_port}")
        print(f"  backend: {backend_summary(ours)}")
        print(f"  crypto: {ours.get('crypto', '?')}")
        print(f"  obfuscation: {obfuscation_summary(ours)}")
        print(f"  drops: {', '.join(f'{k} {n}' for k, n in all_drops(ours).items()) or 'none'}")
        for p in st.peers:
            print(f"\npeer: {p.public_key}")
            if p.endpoint:
                print(f"  endpoint: {p.endpoint}")
            print(f"  allowed ips: {', '.join(map(str, p.allowed_ips)) or '(none)'}")
            print(f"  latest handshake: {_ago(p.last_handshake_ns)}")
            print(f"  transfer: {p.rx_bytes} B received, {p.tx_bytes} B sent")
            if p.persistent_keepalive_interval:
                print(f"  persistent keepalive: every {p.persistent_keepalive_interval} seconds")
        print()
    return 0
