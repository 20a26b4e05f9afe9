"""A small client of the control-plane API (standard library only; orjson,
when installed, decodes large answers such as a bulk push's several times
faster).

    from dataplane.client import Client
    with Client.for_interface("dp0") as api:
        api.put_peer(public_key, allowed_ips=["10.8.0.2/32"], generation=7)
        api.put_session(public_key, receiver_index=..., sender_index=...,
                        send_key=..., receive_key=..., generation=1)
        for event in api.events():          # rekey_needed / expired
            ...

Keys are given and returned as `wg` prints them (base64 strings); bytes
are accepted too. Errors raise ApiRequestError with the status and the
server's JSON error (which names the field at fault)."""
from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import urllib.parse
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - optional
    _loads = json.loads

RUN_DIR = Path("/run/dataplane")
Key = Union[str, bytes]


class ApiRequestError(Exception):
    def __init__(self, status: int, body: dict):
        self.status, self.body = status, body
        self.field = body.get("field") if isinstance(body, dict) else None
        message = body.get("error") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {message}")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        self.sock = s


def _key(k: Key) -> str:
    if isinstance(k, (bytes, bytearray)):
        if len(k) != 32:
            raise ValueError(f"a key is 32 bytes, got {len(k)}")
        return base64.b64encode(bytes(k)).decode()
    return k


def _quote(k: Key) -> str:
    return urllib.parse.quote(_key(k), safe="")


class Client:
    def __init__(self, unix_path: Optional[Union[str, Path]] = None,
                 host: Optional[str] = None, port: Optional[int] = None,
                 tls: Optional[ssl.SSLContext] = None, timeout: float = 30.0):
        """A unix socket (unix_path), or TCP with mutual TLS (host, port and
        a client context holding the client certificate)."""
        if (unix_path is None) == (host is None):
            raise ValueError("give either unix_path, or host and port")
        self.unix_path = str(unix_path) if unix_path is not None else None
        self.host, self.port, self.tls, self.timeout = host, port, tls, timeout
        self._conn: Optional[http.client.HTTPConnection] = None

    @classmethod
    def for_interface(cls, name: str, timeout: float = 30.0) -> "Client":
        return cls(RUN_DIR / f"{name}.api.sock", timeout=timeout)

    @staticmethod
    def tls_context(certificate: str, key: str, server_ca: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=server_ca)
        ctx.load_cert_chain(certificate, key)
        return ctx

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.unix_path is not None:
                self._conn = _UnixConnection(self.unix_path, self.timeout)
            elif self.tls is not None:
                self._conn = http.client.HTTPSConnection(self.host, self.port,
                                                         context=self.tls, timeout=self.timeout)
            else:
                raise ValueError("the API serves TCP with mutual TLS only: give tls=")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- raw

    def request(self, method: str, path: str, body=None, content_type: str = "application/json",
                ok: Iterable[int] = (200, 201, 204)):
        """(status, decoded JSON or text or None). Raises ApiRequestError
        unless the status is in `ok`."""
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a kept-alive connection the server closed: once more
                if attempt:
                    raise
        ctype = resp.getheader("Content-Type", "")
        if ctype.startswith("application/json"):
            decoded = _loads(data) if data else None
        else:
            decoded = data.decode() if data else None
        if resp.status not in ok:
            raise ApiRequestError(resp.status, decoded if isinstance(decoded, dict)
                                  else {"error": str(decoded)})
        return resp.status, decoded

    # ---------------------------------------------------------------- resources

    def interface(self) -> dict:
        return self.request("GET", "/v1/interface")[1]

    def patch_interface(self, **fields) -> dict:
        if isinstance(fields.get("private_key"), (bytes, bytearray)):
            fields["private_key"] = _key(fields["private_key"])
        return self.request("PATCH", "/v1/interface", fields)[1]

    def peers(self, page: Optional[int] = None) -> list[dict]:
        """Every peer; with `page`, fetched that many at a time."""
        if page is None:
            return self.request("GET", "/v1/peers")[1]["peers"]
        out, after = [], None
        while True:
            query = f"?limit={page}" + (f"&after={_quote(after)}" if after else "")
            answer = self.request("GET", "/v1/peers" + query)[1]
            out.extend(answer["peers"])
            after = answer["next"]
            if after is None:
                return out

    def peer(self, public_key: Key) -> dict:
        return self.request("GET", f"/v1/peers/{_quote(public_key)}")[1]

    @staticmethod
    def peer_body(allowed_ips: Iterable[str] = (), endpoint: Optional[str] = None,
                  preshared_key: Optional[Key] = None, persistent_keepalive: int = 0,
                  generation: Optional[int] = None, replace: bool = False,
                  session: Optional[dict] = None) -> dict:
        body = {"allowed_ips": [str(n) for n in allowed_ips],
                "persistent_keepalive": persistent_keepalive}
        if endpoint is not None:
            body["endpoint"] = endpoint
        if preshared_key is not None:
            body["preshared_key"] = _key(preshared_key)
        if generation is not None:
            body["generation"] = generation
        if replace:
            body["replace"] = True
        if session is not None:
            body["session"] = session
        return body

    def put_peer(self, public_key: Key, **fields) -> dict:
        return self.request("PUT", f"/v1/peers/{_quote(public_key)}",
                            self.peer_body(**fields))[1]

    def delete_peer(self, public_key: Key, generation: Optional[int] = None) -> None:
        q = f"?generation={generation}" if generation is not None else ""
        self.request("DELETE", f"/v1/peers/{_quote(public_key)}{q}")

    @staticmethod
    def session_body(receiver_index: int, sender_index: int, send_key: Key, receive_key: Key,
                     lifetime: Optional[float] = None, activate: Optional[str] = None,
                     generation: Optional[int] = None) -> dict:
        body = {"receiver_index": receiver_index, "sender_index": sender_index,
                "send_key": _key(send_key), "receive_key": _key(receive_key)}
        if lifetime is not None:
            body["lifetime"] = lifetime
        if activate is not None:
            body["activate"] = activate
        if generation is not None:
            body["generation"] = generation
        return body

    def put_session(self, public_key: Key, **fields) -> dict:
        return self.request("PUT", f"/v1/peers/{_quote(public_key)}/session",
                            self.session_body(**fields))[1]

    def delete_session(self, public_key: Key, generation: Optional[int] = None) -> None:
        q = f"?generation={generation}" if generation is not None else ""
        self.request("DELETE", f"/v1/peers/{_quote(public_key)}/session{q}")

    def bulk(self, operations: Iterable[dict]) -> dict:
        """Apply a batch, all or nothing. Returns the server's answer
        (applied, per-line results); raises ApiRequestError when refused."""
        lines = "".join(json.dumps(op, separators=(",", ":")) + "\n" for op in operations)
        return self.request("POST", "/v1/bulk", lines.encode(),
                            content_type="application/x-ndjson")[1]

    def metrics(self) -> str:
        return self.request("GET", "/metrics")[1]

    def openapi(self) -> dict:
        return self.request("GET", "/openapi.json")[1]

    def events(self, since: int = 0, public_key: Optional[Key] = None,
               timeout: Optional[float] = None) -> Iterator[dict]:
        """Server-sent events as {"id", "event", "data"}, until the stream
        ends or `timeout` passes without one (socket.timeout)."""
        q = {"since": str(since)}
        if public_key is not None:
            q["public_key"] = _key(public_key)
        path = "/v1/events?" + urllib.parse.urlencode(q)
        if self.unix_path is not None:
            conn = _UnixConnection(self.unix_path, timeout or self.timeout)
        else:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.tls,
                                               timeout=timeout or self.timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            if resp.status != 200:
                raise ApiRequestError(resp.status, json.loads(resp.read() or b"{}"))
            event: dict = {}
            while True:
                raw = resp.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\n")
                if not line:
                    if "event" in event:
                        yield event
                    event = {}
                elif line.startswith(":"):
                    continue
                else:
                    name, _, value = line.partition(": ")
                    if name == "data":
                        event["data"] = json.loads(value)
                    elif name == "id":
                        event["id"] = int(value)
                    elif name == "event":
                        event["event"] = value
        finally:
            conn.close()
