"""The HTTP/JSON API of a running interface (aiohttp): a unix socket for
local control planes, and optionally TCP with mutual TLS.

Handlers run on the daemon's event loop and call the Controller, which
does the work; this module turns HTTP into calls and errors into JSON.
Request logs carry the method, the route's template (never a key from
the path), the status and the time taken; never bodies or addresses."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import ssl
import stat
import urllib.parse
from pathlib import Path
from typing import Optional

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from dataplane.api import bulk as bulk_native
from dataplane.api import model
from dataplane.api.controller import Controller
from dataplane.api.metrics import Metrics
from dataplane.api.model import ApiError
from dataplane.api.openapi import openapi_document

try:  # several times faster than json on the bulk path
    from orjson import dumps as _dumps
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _loads = json.loads

    def _dumps(data) -> bytes:
        return json.dumps(data, separators=(",", ":")).encode()

log = logging.getLogger("dataplane.api")

BODY_MAX = 64 * 1024            # one resource
BULK_BODY_MAX = 256 * 1024 * 1024
BULK_LINES_MAX = 1_000_000
PAGE_MAX = 10_000  # peers in one page of GET /v1/peers
EVENT_QUEUE = 10_000
SSE_PING_SECONDS = 15
CONTROLLER = web.AppKey("controller", Controller)
METRICS = web.AppKey("metrics", Metrics)


def _json(data, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(data), status=status, content_type="application/json")


def _error(err: ApiError) -> web.Response:
    return _json(err.body(), err.status)


def _route(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "(no route)"


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _json({"error": e.reason}, e.status)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - logged (without the body), answered 500
        log.exception("API: %s %s failed", request.method, _route(request))
        return _json({"error": "internal error; see the daemon's log"}, 500)


@web.middleware
async def _count(request: web.Request, handler):
    resp = await handler(request)
    request.app[METRICS].request(request.method, _route(request), resp.status)
    return resp


class _AccessLog(AbstractAccessLogger):
    def log(self, request, response, time):  # noqa: A002 - aiohttp's signature
        level = logging.DEBUG if request.method in ("GET", "HEAD") else logging.INFO
        self.logger.log(level, "API %s %s %d %.1f ms", request.method, _route(request),
                        response.status, time * 1000)


# ---------------------------------------------------------------- helpers

def _path_key(request: web.Request) -> model.PublicKey:
    return model.public_key(urllib.parse.unquote(request.match_info["public_key"]),
                            "public_key")


def _query_generation(request: web.Request) -> Optional[int]:
    for name in request.query:
        if name != "generation":
            raise ApiError(400, f"{name}: unknown query parameter (known: generation)", name)
    text = request.query.get("generation")
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise model.bad("generation", "must be a non-negative integer")
    return model.generation(int(text))


async def _body(request: web.Request):
    if request.content_length is not None and request.content_length > BODY_MAX:
        raise ApiError(413, f"the body is larger than {BODY_MAX} bytes")
    raw = await _read_all(request, BODY_MAX)
    try:
        return _loads(raw)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the body is not JSON ({e.__class__.__name__})") from None


async def _read_all(request: web.Request, limit: int) -> bytes:
    """The whole body (read() returns what has arrived so far), or 413."""
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)


def _no_query(request: web.Request) -> None:
    for name in request.query:
        raise ApiError(400, f"{name}: unknown query parameter", name)


# ---------------------------------------------------------------- handlers

async def get_openapi(request: web.Request) -> web.Response:
    return _json(openapi_document())


async def get_interface(request: web.Request) -> web.Response:
    _no_query(request)
    return _json(request.app[CONTROLLER].interface())


async def patch_interface(request: web.Request) -> web.Response:
    _no_query(request)
    patch = model.interface_patch(await _body(request))
    # the interface keeps the key object (and wipes it when it goes)
    return _json(request.app[CONTROLLER].patch_interface(patch))


async def list_peers(request: web.Request) -> web.Response:
    """Every peer, or a page of them (?limit=N&after=KEY, in the order of
    the keys' bytes; "next" is the `after` of the following page)."""
    limit = after = None
    for name, value in request.query.items():
        if name == "limit":
            if not (value.isascii() and value.isdigit() and len(value) <= 5) or \
                    not 1 <= int(value) <= PAGE_MAX:
                raise model.bad("limit", f"must be an integer in 1..{PAGE_MAX}")
            limit = int(value)
        elif name == "after":
            after = model.key_bytes(value, "after")
        else:
            raise ApiError(400, f"{name}: unknown query parameter (known: limit, after)", name)
    peers, following = request.app[CONTROLLER].peers(limit, after)
    return _json({"peers": peers, "next": following})


async def get_peer(request: web.Request) -> web.Response:
    _no_query(request)
    return _json(request.app[CONTROLLER].peer(_path_key(request)))


async def put_peer(request: web.Request) -> web.Response:
    _no_query(request)
    key = _path_key(request)
    spec = model.peer(await _body(request), key)
    status, view = request.app[CONTROLLER].put_peer(spec)
    return _json(view, status)


async def delete_peer(request: web.Request) -> web.Response:
    key = _path_key(request)
    gen = _query_generation(request)
    status = request.app[CONTROLLER].delete_peer(key, gen)
    if status == 404:
        raise ApiError(404, "no such peer", "public_key")
    return web.Response(status=204)


async def put_session(request: web.Request) -> web.Response:
    _no_query(request)
    key = _path_key(request)
    spec = model.session(await _body(request))
    status, view = request.app[CONTROLLER].put_session(key, spec)
    return _json(view, status)


async def delete_session(request: web.Request) -> web.Response:
    key = _path_key(request)
    gen = _query_generation(request)
    request.app[CONTROLLER].delete_session(key, gen)
    return web.Response(status=204)


async def bulk(request: web.Request) -> web.Response:
    """NDJSON in, one batch: all of it is applied, or none of it."""
    _no_query(request)
    if request.content_length is not None and request.content_length > BULK_BODY_MAX:
        raise ApiError(413, f"the batch is larger than {BULK_BODY_MAX} bytes")
    body = await _read_all(request, BULK_BODY_MAX)
    large = body.count(b"\n") >= FREEZE_AFTER_LINES
    if large:
        gc.collect()  # what is garbage now must not be frozen below
    with _no_gc() as batch:
        response = _bulk(request.app[CONTROLLER], body)
        batch.keep = large and response.status == 200
        return response


# A batch this large leaves its objects out of later cyclic collections.
FREEZE_AFTER_LINES = 10_000


class _Batch:
    keep = False


@contextlib.contextmanager
def _no_gc():
    """A batch makes and keeps many small objects: cyclic collection
    passes over them all, again and again, while nothing cyclic is made.
    With `keep` set (a large batch that was applied), what the batch made
    (peers, records: they live until deleted, and reference counting frees
    them then) moves to the permanent generation, so that no collection
    after it walks them all again (at 10^5 peers one stalls the event loop
    for a tenth of a second). The caller collects garbage before a large
    batch, and only an applied one (no exception, no traceback cycle) is
    kept."""
    was = gc.isenabled()
    gc.disable()
    batch = _Batch()
    try:
        yield batch
    finally:
        if batch.keep:
            gc.freeze()
        if was:
            gc.enable()


def _bulk(ctrl: Controller, body: bytes) -> web.Response:
    if body.count(b"\n") > BULK_LINES_MAX:
        raise ApiError(413, f"more than {BULK_LINES_MAX} operations in one batch")
    if ctrl.native_bulk:
        parsed, _, why = bulk_native.parse(body, ctrl.digest_key)
        if why == bulk_native.DECLINED_MEMORY:
            log.warning("API bulk: no locked memory for the batch's keys "
                        "(RLIMIT_MEMLOCK?); checking it line by line")
        if parsed is not None:
            with parsed:
                done = ctrl.apply_parsed(parsed)
            if done is not None:
                return _bulk_response(*done)
    ops, error = [], None
    lines = body.split(b"\n")
    for line, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            ops.append(model.bulk_line(_loads(raw), line))
        except ApiError as e:
            error = (line, e)
            break
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            error = (line, ApiError(400, f"line {line} is not JSON ({type(e).__name__})"))
            break
    if error is not None:
        for op in ops:
            s = op.spec.session if op.op == "put_peer" else \
                (op.spec if op.op == "put_session" else None)
            if s is not None:
                s.wipe()
        bad_line, e = error
        return _json({"applied": False, "line": bad_line, **e.body()}, e.status)
    if not ops:
        raise ApiError(400, "the batch is empty (one JSON operation a line)")
    return _bulk_response(*ctrl.apply(ops))


def _bulk_response(results: list[dict], status: int) -> web.Response:
    failed = None
    for r in results:
        err = r.pop("error_obj", None)
        if err is not None:
            failed = r
    body = {"applied": status < 400, "results": results}
    if failed is not None:
        body.update({"line": failed["line"], "error": failed["error"]})
        if "field" in failed:
            body["field"] = failed["field"]
    return _json(body, status)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: rekey_needed and expired, per peer. Resumes
    after Last-Event-ID (or ?since=) from the recent history."""
    ctrl = request.app[CONTROLLER]
    since = request.headers.get("Last-Event-ID", request.query.get("since", "0"))
    for name in request.query:
        if name not in ("since", "public_key"):
            raise ApiError(400, f"{name}: unknown query parameter (known: since, public_key)",
                           name)
    if not (since.isascii() and since.isdigit()) or len(since) > 19:
        raise model.bad("since", "must be an event id (a non-negative integer)")
    only = None
    if "public_key" in request.query:
        only = model.public_key(request.query["public_key"]).base64()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    queue: asyncio.Queue = asyncio.Queue(EVENT_QUEUE)
    queue.lagged = False
    ctrl.subscribers.add(queue)
    try:
        for ev in ctrl.events_since(int(since)):
            if only is None or ev.data.get("public_key") == only:
                await resp.write(_sse(ev))
        while True:
            try:
                ev = await asyncio.wait_for(queue.get(), SSE_PING_SECONDS)
            except asyncio.TimeoutError:
                if queue.lagged:
                    break
                await resp.write(b": ping\n\n")
                continue
            if only is None or ev.data.get("public_key") == only:
                await resp.write(_sse(ev))
            if queue.lagged and queue.empty():
                await resp.write(b"event: lagged\ndata: {}\n\n")
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        ctrl.subscribers.discard(queue)
    return resp


def _sse(ev) -> bytes:
    return f"id: {ev.id}\nevent: {ev.type}\ndata: {json.dumps(ev.data)}\n\n".encode()


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


def make_app(ctrl: Controller, metrics_: Metrics) -> web.Application:
    app = web.Application(middlewares=[_count, _errors], client_max_size=BODY_MAX)
    app[CONTROLLER] = ctrl
    app[METRICS] = metrics_
    r = app.router
    r.add_get("/openapi.json", get_openapi)
    r.add_get("/metrics", metrics)
    r.add_get("/v1/interface", get_interface)
    r.add_patch("/v1/interface", patch_interface)
    r.add_get("/v1/peers", list_peers)
    r.add_get("/v1/peers/{public_key}", get_peer)
    r.add_put("/v1/peers/{public_key}", put_peer)
    r.add_delete("/v1/peers/{public_key}", delete_peer)
    r.add_put("/v1/peers/{public_key}/session", put_session)
    r.add_delete("/v1/peers/{public_key}/session", delete_session)
    r.add_post("/v1/bulk", bulk)
    r.add_get("/v1/events", events)
    return app


def tls_context(certificate: str, key: str, client_ca: str) -> ssl.SSLContext:
    """Server side of mutual TLS: clients must present a certificate the CA
    signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certificate, key)
    ctx.load_verify_locations(client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class ApiServer:
    """The listeners of one interface's API."""

    def __init__(self, ctrl: Controller, metrics_: Metrics, unix_path: Path,
                 tcp: Optional[tuple[str, int]] = None,
                 tls: Optional[ssl.SSLContext] = None):
        if tcp is not None and tls is None:
            raise ValueError("a TCP listener needs mutual TLS (a server certificate and a CA "
                             "for client certificates)")
        self.app = make_app(ctrl, metrics_)
        self.unix_path, self.tcp, self.tls = unix_path, tcp, tls
        self.runner: Optional[web.AppRunner] = None

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log_class=_AccessLog,
                                    access_log=log, handle_signals=False,
                                    shutdown_timeout=1.0)
        await self.runner.setup()
        self.unix_path.parent.mkdir(parents=True, exist_ok=True)
        if self.unix_path.exists():
            self.unix_path.unlink()  # stale: the daemon checked nobody serves it
        old = os.umask(0o077)
        try:
            await web.UnixSite(self.runner, str(self.unix_path)).start()
        finally:
            os.umask(old)
        os.chmod(self.unix_path, stat.S_IRUSR | stat.S_IWUSR)
        if self.tcp is not None:
            await web.TCPSite(self.runner, self.tcp[0], self.tcp[1],
                              ssl_context=self.tls).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        try:
            self.unix_path.unlink()
        except FileNotFoundError:
            pass
