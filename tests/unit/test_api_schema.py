"""schemathesis against the API's own OpenAPI document: requests generated
from the schema (and beyond it: wrong types, missing and unknown fields)
must never get a 5xx, and what the API answers must match the document.
The API is served in-process over a real device (see api_world); for the
test it also listens on loopback TCP without TLS, which a configuration
cannot ask for."""
import json

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                 response_schema_conformance, status_code_conformance)

from dataplane.api.openapi import openapi_document
from dataplane.obfuscation import KEYS, Obfuscation

from .api_world import ApiWorld

@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    """A bulk body: one JSON value a line (anything that is not a list is
    sent as one line)."""
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode()


schema = schemathesis.openapi.from_dict(openapi_document())
# The event stream does not end: it is tested in test_api.
schema = schema.exclude(path="/v1/events")


@pytest.fixture(scope="module")
def api_url():
    world = ApiWorld()

    async def listen():
        site = web.TCPSite(world.server.runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]
    port = world.call_async(listen)
    yield f"http://127.0.0.1:{port}"
    world.close()


@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_the_api_never_answers_5xx_and_keeps_to_its_document(case, api_url):
    case.call_and_validate(base_url=api_url, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance,
        response_schema_conformance])


# PATCH /v1/interface carries the AmneziaWG settings, whose rules between
# keys (disjoint header ranges, Jmin <= Jmax) schemas cannot state: more
# examples for it alone.
@schema.include(operation_id="patchInterface").parametrize()
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_interface_patches_never_answer_5xx(case, api_url):
    case.call_and_validate(base_url=api_url, checks=[
        not_a_server_error, status_code_conformance, response_schema_conformance])


def test_the_document_lists_every_amneziawg_key():
    schemas = openapi_document()["components"]["schemas"]
    keys = [k.lower() for k in KEYS]
    assert list(schemas["Obfuscation"]["properties"]) == keys
    assert schemas["Obfuscation"]["required"] == keys
    assert list(schemas["ObfuscationPatch"]["properties"]) == keys
    assert set(Obfuscation().as_json()) == set(keys)
    interface = schemas["Interface"]["properties"]
    assert interface["obfuscation"] == {"$ref": "#/components/schemas/Obfuscation"}
    assert interface["accept_plain_wireguard"]["type"] == "boolean"
    patch = schemas["InterfacePatch"]["properties"]
    assert set(patch) == {"private_key", "listen_port", "fwmark", "obfuscation",
                          "accept_plain_wireguard", "generation"}
