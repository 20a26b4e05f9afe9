"""A process that owns XDP attachments for tests/unit/test_xdp_programs.py,
run inside a network namespace (`ip netns exec NS python attach_helper.py`).

Reads one JSON command per line on stdin and answers one JSON line on
stdout: {"ok": true, ...} or {"ok": false, "error": class name, "errno": n,
"message": text}. Commands:
    {"op": "load", "path": "...", "listen_port": 51820 or null}
    {"op": "attach", "dev": "veth0", "allow_generic": false}
    {"op": "detach"}
    {"op": "remove_stale", "dev": "veth0"}
    {"op": "exit"}
The test kills it with SIGKILL to check that the kernel detaches a link
whose owner died.
"""
import json
import sys

from dataplane import xdp


def main() -> None:
    program = None
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "load":
                program = xdp.XdpProgram.load(cmd["path"], listen_port=cmd.get("listen_port"))
                reply = {"ok": True, "name": program.name, "prog_id": program.prog_id}
            elif op == "attach":
                program.attach(cmd["dev"], allow_generic=cmd.get("allow_generic", False))
                reply = {"ok": True, "mode": program.mode.name.lower(),
                         "prog_id": program.prog_id, "ifindex": program.ifindex}
            elif op == "detach":
                program.detach()
                reply = {"ok": True}
            elif op == "remove_stale":
                reply = {"ok": True, "removed": xdp.remove_stale(cmd["dev"])}
            elif op == "exit":
                print(json.dumps({"ok": True}), flush=True)
                return
            else:
                reply = {"ok": False, "error": "ValueError", "errno": 0,
                         "message": f"unknown op {op!r}"}
        except OSError as e:
            reply = {"ok": False, "error": type(e).__name__, "errno": e.errno,
                     "message": str(e)}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
