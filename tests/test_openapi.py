"""GET /openapi.json against a real gateway over the real model: the document is valid OpenAPI 3.1,
and schemathesis, generating requests for every operation from it (valid and invalid ones), finds no
server error and no response the document does not describe.

Bounded (marked `fuzz`): every operation gets at most MAX_EXAMPLES generated cases plus schemathesis's
explicit and coverage cases, derandomized, the model writes at most 4 tokens per answer, and each test
has a hard timeout. The module takes 1-2 minutes on two busy cores.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from localroute.gateway.openapi import build_document
from localroute.protocol.chat import MAX_TOKENS
from tests.conftest import Server, start_server

pytestmark = pytest.mark.timeout(420)

MAX_EXAMPLES = 30
# No 5xx, and every answer is one the document describes: its status, content type and body, and a
# 405 with `Allow` for a method the path does not serve.
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    unsupported_method,
]
# The longest answer the fuzzer asks of the model: enough to exercise streaming and logprobs.
ANSWER_TOKENS = 4


@pytest.fixture(scope="module")
def gateway(repo_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("openapi")
    text = repo_config.read_text()
    # A fuzzed request that sets no max_tokens gets the engine default: keep answers short. One
    # thread: two on two busy cores spin on llama.cpp's barriers and a 4-token answer takes seconds.
    for key, value in (("default_max_tokens", ANSWER_TOKENS), ("threads", 1)):
        text, n = re.subn(rf"(?m)^{key} = \d+", f"{key} = {value}", text, count=1)
        assert n == 1, key
    src = tmp / "source.toml"
    src.write_text(text)
    srv = start_server(src, tmp, deterministic=True)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def document(gateway: Server) -> dict[str, Any]:
    r = httpx.get(gateway.url + "/openapi.json", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    doc: dict[str, Any] = r.json()
    return doc


def test_served_document_is_the_built_one(document: dict[str, Any]) -> None:
    assert document == build_document()
    assert document["openapi"] == "3.1.0"


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    api = schemathesis.openapi.from_dict(document)
    api.validate()  # the OpenAPI 3.1 meta-schema
    labels = {op.ok().label for op in api.get_all_operations()}
    served = {f"{m.upper()} {p}" for p, item in document["paths"].items() for m in item}
    assert labels == served
    assert "POST /v1/chat/completions" in labels and "GET /openapi.json" in labels


def test_every_operation_says_what_it_returns(document: dict[str, Any]) -> None:
    ops = {f"{m.upper()} {p}": op for p, item in document["paths"].items() for m, op in item.items()}
    chat = ops["POST /v1/chat/completions"]
    assert {"200", "400", "401", "404", "413", "429", "500", "502", "503", "504"} <= set(chat["responses"])
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {p["name"] for p in chat["parameters"]} == {
        "X-LocalRoute-Tier",
        "X-LocalRoute-Max-Cost",
        "X-LocalRoute-Privacy",
    }
    assert ops["GET /health"]["security"] == []
    assert "security" not in ops["GET /v1/models"]  # the document's default: an optional bearer key
    assert document["security"] == [{"bearerAuth": []}, {}]
    for label, op in ops.items():
        assert "200" in op["responses"], label
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                shape = "AnthropicError" if label == "POST /v1/messages" else "Error"  # its API's shape
                assert schema == {"$ref": f"#/components/schemas/{shape}"}, (label, status)


def _bounded(case: schemathesis.Case) -> None:
    """Cap a valid token limit so the real model answers in milliseconds; an invalid one is kept:
    its 400 is what that case tests."""
    if isinstance(case.body, dict):
        if case.path == "/v1/completions" and case.body.get("max_tokens") is None:
            case.body["max_tokens"] = ANSWER_TOKENS  # this endpoint's default is 16, not the config's
        for key in ("max_tokens", "max_completion_tokens"):
            value = case.body.get(key)
            if type(value) is int and ANSWER_TOKENS < value <= MAX_TOKENS:
                case.body[key] = ANSWER_TOKENS
        value = case.body.get("max_output_tokens")  # /v1/responses, whose floor is OpenAI's 16
        if type(value) is int and 16 < value <= MAX_TOKENS:
            case.body["max_output_tokens"] = 16


# The document depends on no config, so it is built here, at collection, and checked above to be
# the one the gateway serves (schemathesis's fixture-based loader does not run under pytest 9).
fuzzed = schemathesis.openapi.from_dict(
    build_document(),
    config=schemathesis.Config.from_dict(
        {
            "request-timeout": 60,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        }
    ),
)


@pytest.mark.fuzz
@fuzzed.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_get_documented_answers(case: schemathesis.Case, gateway: Server) -> None:
    _bounded(case)
    case.call_and_validate(base_url=gateway.url, checks=CHECKS)
