"""The API's OpenAPI 3.0 document (served at GET /openapi.json)."""
from __future__ import annotations

import copy

from dataplane import __version__
from dataplane.api import model
from dataplane import obfuscation as obf

_KEY = {"type": "string", "pattern": r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$",
        "description": "A 32-byte key in standard base64, as `wg` prints it",
        "example": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}
_GEN = {"type": "integer", "minimum": 0, "maximum": model.GENERATION_MAX,
        "description": "Pushes older than the generation the node holds are refused (409)"}
_ERROR = {"$ref": "#/components/schemas/Error"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _resp(description: str, schema: dict | None = None) -> dict:
    out = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


_ERRORS = {"400": _resp("Invalid request: the error names the field", _ERROR),
           "404": _resp("No such peer", _ERROR),
           "409": _resp("Stale generation, or a conflict with what the node holds", _ERROR),
           "413": _resp("Body too large", _ERROR)}

_SESSION_PROPS = {
    "receiver_index": {"type": "integer", "minimum": 1, "maximum": model.INDEX_MAX,
                       "description": "Ours: data messages to this node carry it"},
    "sender_index": {"type": "integer", "minimum": 0, "maximum": model.INDEX_MAX,
                     "description": "The peer's: messages this node sends carry it"},
    "send_key": {**_KEY, "description": "Transport key for what this node sends (write-only)"},
    "receive_key": {**_KEY, "description": "Transport key for what it receives (write-only)"},
    "lifetime": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                 "maximum": model.SESSION_LIFETIME_MAX,
                 "description": "Seconds until the keys expire (at most REJECT_AFTER_TIME)"},
    "activate": {"type": "string", "enum": list(model.ACTIVATE),
                 "description": "on_receive: the keys become current when the peer first "
                                "uses them (the keys they replace keep working meanwhile); "
                                "now: current at once"},
    "generation": _GEN,
}

_PEER_PUT_PROPS = {
    "public_key": _KEY,
    "preshared_key": {**_KEY, "nullable": True, "description": "Write-only"},
    "allowed_ips": {"type": "array", "maxItems": model.ALLOWED_IPS_MAX,
                    "items": {"type": "string", "example": "10.8.0.2/32"}},
    "endpoint": {"type": "string", "nullable": True, "example": "192.0.2.7:51820"},
    "persistent_keepalive": {"type": "integer", "minimum": 0, "maximum": model.KEEPALIVE_MAX},
    "generation": _GEN,
    "replace": {"type": "boolean",
                "description": "Take allowed IPs another peer holds (else 409)"},
    "session": _ref("SessionPut"),
}

_HEADER_TEXT = {"type": "string", "pattern": r"^[0-9]+(-[0-9]+)?$",
                "example": "1000000-1000999"}
_HEADER_INT = {"type": "integer", "minimum": 0, "maximum": obf.HEADER_MAX}
_CHAIN = {"type": "string", "maxLength": obf.SIGNATURE_SPEC_MAX,
          "example": "<b 0xc0ffee><r 16><t>"}
_OBFUSCATION_DOC = {
    "jc": "Junk datagrams sent before each handshake initiation this node sends (0: none)",
    "jmin": "Least size of a junk datagram, bytes", "jmax": "Largest size, bytes",
    "s1": "Random bytes before each initiation", "s2": "... each response",
    "s3": "... each cookie reply", "s4": "... each transport message",
    "h1": "Type field of initiations: N or A-B (a fresh value each message)",
    "h2": "... of responses", "h3": "... of cookie replies", "h4": "... of transport messages",
    "i1": "Signature datagram sent before the junk: tags <b 0xHEX> <r N> <rc N> <rd N> <t>",
    "i2": "", "i3": "", "i4": "", "i5": ""}


def _obfuscation_props(patch: bool) -> dict:
    out = {}
    for key, doc in _OBFUSCATION_DOC.items():
        if key == "jc":
            schema = {"type": "integer", "minimum": 0, "maximum": obf.JUNK_COUNT_MAX}
        elif key[0] in "js":
            schema = {"type": "integer", "minimum": 0, "maximum": obf.MAX_DATAGRAM}
        elif key[0] == "h":
            schema = {"anyOf": [_HEADER_INT, _HEADER_TEXT]} if patch else dict(_HEADER_TEXT)
        else:
            schema = {**_CHAIN, "nullable": True}
        if patch:
            schema["nullable"] = True
        if doc:
            schema["description"] = doc
        out[key] = schema
    return out


_SCHEMAS = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}, "field": {"type": "string"},
                             "held": {"type": "integer"}, "held_by": _KEY}},
    "SessionPut": {"type": "object", "additionalProperties": False,
                   "required": ["receiver_index", "sender_index", "send_key", "receive_key"],
                   "properties": _SESSION_PROPS},
    "PeerPut": {"type": "object", "additionalProperties": False, "properties": _PEER_PUT_PROPS},
    "SessionState": {"type": "object", "nullable": True, "properties": {
        "generation": {"type": "integer"}, "receiver_index": {"type": "integer"},
        "sender_index": {"type": "integer"}, "activate": {"type": "string"},
        "installed_at": {"type": "number"}, "expires_at": {"type": "number"},
        "expired": {"type": "boolean"}}},
    "Peer": {"type": "object", "properties": {
        "public_key": _KEY, "has_preshared_key": {"type": "boolean"},
        "allowed_ips": {"type": "array", "items": {"type": "string"}},
        "endpoint": {"type": "string", "nullable": True},
        "persistent_keepalive": {"type": "integer"}, "generation": {"type": "integer"},
        "managed": {"type": "boolean"}, "session": _ref("SessionState"),
        "latest_handshake": {"type": "number", "nullable": True},
        "rx_bytes": {"type": "integer"}, "tx_bytes": {"type": "integer"},
        "rx_packets": {"type": "integer"}, "tx_packets": {"type": "integer"},
        "keypairs": {"type": "integer"}}},
    "Interface": {"type": "object", "properties": {
        "name": {"type": "string"}, "public_key": {**_KEY, "nullable": True},
        "listen_port": {"type": "integer"}, "fwmark": {"type": "integer"},
        "backend": {"type": "string", "enum": ["socket", "xdp"]},
        "workers": {"type": "integer"}, "peers": {"type": "integer"},
        "max_peers": {"type": "integer"}, "generation": {"type": "integer"},
        "obfuscation": _ref("Obfuscation"),
        "accept_plain_wireguard": {
            "type": "boolean",
            "description": "Plain WireGuard clients are served on the port too"},
        "status": {"type": "object"}}},
    "Obfuscation": {
        "type": "object", "required": list(_OBFUSCATION_DOC),
        "description": "AmneziaWG 2.0 settings (all at their defaults: plain WireGuard)",
        "properties": _obfuscation_props(patch=False)},
    "ObfuscationPatch": {
        "type": "object", "additionalProperties": False,
        "description": "Only the keys given change; null or \"\" sets a key back to plain "
                       "WireGuard's value. S and H must be the clients' own.",
        "properties": _obfuscation_props(patch=True)},
    "InterfacePatch": {"type": "object", "additionalProperties": False, "properties": {
        "private_key": {**_KEY, "nullable": True, "description": "Write-only"},
        "listen_port": {"type": "integer", "minimum": 0, "maximum": model.PORT_MAX},
        "fwmark": {"type": "integer", "minimum": 0, "maximum": model.FWMARK_MAX},
        "obfuscation": _ref("ObfuscationPatch"),
        "accept_plain_wireguard": {
            "type": "boolean", "nullable": True,
            "description": "Serve plain WireGuard beside the obfuscated profile (H1..H4 must "
                           "then exclude 1..4; needs S or H set)"},
        "generation": _GEN}},
    "BulkOperation": {"type": "object", "required": ["op", "public_key"],
                      "properties": {"op": {"type": "string", "enum": list(model.BULK_OPS)},
                                     **_PEER_PUT_PROPS, **_SESSION_PROPS}},
    "BulkResult": {"type": "object", "properties": {
        "applied": {"type": "boolean"},
        "results": {"type": "array", "items": {"type": "object", "properties": {
            "line": {"type": "integer"}, "op": {"type": "string"},
            "status": {"type": "integer"}, "generation": {"type": "integer"},
            "session_generation": {"type": "integer"}, "error": {"type": "string"},
            "result": {"type": "string"}}}},
        "line": {"type": "integer"}, "error": {"type": "string"},
        "field": {"type": "string"}}},
}

_KEY_PARAM = {"name": "public_key", "in": "path", "required": True, "schema": _KEY,
              "description": "The peer's public key, URL-encoded (/ as %2F, + as %2B, = as %3D)"}
_GEN_PARAM = {"name": "generation", "in": "query", "required": False, "schema": _GEN}

_PATHS = {
    "/openapi.json": {"get": {"summary": "This document", "operationId": "getOpenApi",
                              "responses": {"200": _resp("The OpenAPI document",
                                                         {"type": "object"})}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "getMetrics",
                         "responses": {"200": {"description": "Prometheus text format",
                                               "content": {"text/plain": {
                                                   "schema": {"type": "string"}}}}}}},
    "/v1/interface": {
        "get": {"summary": "The interface", "operationId": "getInterface",
                "responses": {"200": _resp("The interface", _ref("Interface"))}},
        "patch": {"summary": "Change the private key, listen port, fwmark or AmneziaWG "
                             "obfuscation",
                  "operationId": "patchInterface",
                  "requestBody": _json_body(_ref("InterfacePatch")),
                  "responses": {"200": _resp("The interface", _ref("Interface")),
                                **{k: v for k, v in _ERRORS.items() if k != "404"}}}},
    "/v1/peers": {"get": {
        "summary": "Every peer, or a page of them in the order of their keys' bytes",
        "operationId": "listPeers",
        "parameters": [
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
             "description": "At most this many peers"},
            {"name": "after", "in": "query", "required": False, "schema": _KEY,
             "description": "Start after this key (the previous page's next)"}],
        "responses": {"200": _resp("The peers", {
            "type": "object", "required": ["peers", "next"], "properties": {
                "peers": {"type": "array", "items": _ref("Peer")},
                "next": {"type": "string", "nullable": True,
                         "description": "The key to ask for the next page after; "
                                        "null on the last page"}}}),
            "400": _resp("Bad query", _ERROR)}}},
    "/v1/peers/{public_key}": {
        "parameters": [_KEY_PARAM],
        "get": {"summary": "One peer", "operationId": "getPeer",
                "responses": {"200": _resp("The peer", _ref("Peer")), **_ERRORS}},
        "put": {"summary": "Create or replace a peer (idempotent)", "operationId": "putPeer",
                "requestBody": _json_body(_ref("PeerPut")),
                "responses": {"200": _resp("Replaced", _ref("Peer")),
                              "201": _resp("Created", _ref("Peer")), **_ERRORS,
                              "507": _resp("No room for another peer", _ERROR)}},
        "delete": {"summary": "Remove a peer, its routes and keys (wiped at once)",
                   "operationId": "deletePeer", "parameters": [_GEN_PARAM],
                   "responses": {"204": {"description": "Removed"}, **_ERRORS}}},
    "/v1/peers/{public_key}/session": {
        "parameters": [_KEY_PARAM],
        "put": {"summary": "Install a session (already-derived transport keys)",
                "operationId": "putSession", "requestBody": _json_body(_ref("SessionPut")),
                "responses": {"200": _resp("Already installed", _ref("Peer")),
                              "201": _resp("Installed", _ref("Peer")), **_ERRORS}},
        "delete": {"summary": "Drop the peer's sessions (keys wiped at once)",
                   "operationId": "deleteSession", "parameters": [_GEN_PARAM],
                   "responses": {"204": {"description": "Dropped"}, **_ERRORS}}},
    "/v1/bulk": {"post": {
        "summary": "Apply a batch of operations, all or nothing",
        "description": "One JSON object a line: {\"op\": \"put_peer\" | \"delete_peer\" | "
                       "\"put_session\" | \"delete_session\", \"public_key\": ..., and the "
                       "fields of PeerPut or SessionPut (or generation for the deletes)}",
        "operationId": "bulk",
        "requestBody": {"required": True, "content": {"application/x-ndjson": {
            "schema": {"type": "array", "description": "The lines of the body, in order",
                       "items": _ref("BulkOperation")}}}},
        "responses": {"200": _resp("Applied", _ref("BulkResult")),
                      **{k: _resp(v["description"], _ref("BulkResult"))
                         for k, v in _ERRORS.items()}}}},
    "/v1/events": {"get": {
        "summary": "Server-sent events: rekey_needed and expired, per peer",
        "operationId": "events",
        "parameters": [{"name": "since", "in": "query", "schema": {"type": "integer",
                                                                     "minimum": 0}},
                       {"name": "public_key", "in": "query", "schema": _KEY}],
        "responses": {"200": {"description": "An event stream",
                              "content": {"text/event-stream": {
                                  "schema": {"type": "string"}}}},
                      "400": _resp("Bad parameter", _ERROR)}}},
}


def openapi_document() -> dict:
    return copy.deepcopy({
        "openapi": "3.0.3",
        "info": {"title": "dataplane control-plane API", "version": __version__,
                 "description": "Peers and pushed sessions of one interface. Keys are "
                              "write-only: no response carries a private, preshared or "
                              "session key."},
        "paths": _PATHS,
        "components": {"schemas": _SCHEMAS},
    })
