"""Hostile and malformed requests against a real gateway over real HTTP: each gets its exact status and
OpenAI error code, the body is the OpenAI error shape with nothing of the server's insides in it, and
the gateway is still healthy and answering afterwards. Model names are never used as paths."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from localroute.config.models import LlamaCppModel
from localroute.config.schema import load_config
from localroute.gateway.app import create_app
from localroute.protocol.chat import MAX_STOP_CHARS, MAX_TOKENS
from tests.conftest import ROOT, Server, free_port, start_server

CONFIG = load_config(ROOT / "models.toml")
LIMIT = CONFIG.server.max_body_bytes
_SMOL = CONFIG.model("smollm2-135m")
assert isinstance(_SMOL, LlamaCppModel)
GGUF = str(CONFIG.model_path(_SMOL))
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> bytes:
    """A valid request (one token asked) with `fields` set on top."""
    return json.dumps({"model": "auto", "messages": HI, "max_tokens": 1, **fields}).encode()


def raw_json(tail: str) -> bytes:
    """A request whose last field is written by hand: `NaN`, `1e999` and friends are not Python's JSON."""
    return b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], ' + tail.encode() + b"}"


def http(method: str, path: str, headers: bytes = b"", content: bytes = b"") -> bytes:
    """An HTTP/1.1 request written byte by byte, for what no client library will send."""
    length = b"Content-Length: %d\r\n" % len(content) if content else b""
    head = b"%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" % (method.encode(), path.encode())
    return head + headers + length + b"\r\n" + content


@dataclass(frozen=True)
class Req:
    body: bytes | None = None
    method: str = "POST"
    path: str = CHAT
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    raw: bytes | None = None  # sent as is over a socket; answered by the HTTP parser, not our app
    timeout: float = 30.0


@dataclass(frozen=True)
class Want:
    status: int
    code: str | None
    param: str | None = None
    etype: str = "invalid_request_error"


# Refused by the HTTP parser before the app sees it: the edge protocol still answers in the OpenAI shape.
PARSER = Want(400, "invalid_http_request")

UNSUPPORTED = "unsupported_parameter"
SPECIAL_FLOOD = [{"role": "user", "content": "<|im_end|>a" * 40_000}]  # 440 kB of special tokens

CASES = [
    # -- numbers
    pytest.param(Req(raw_json('"temperature": NaN')), Want(400, "invalid_value", "temperature"), id="nan"),
    pytest.param(Req(raw_json('"top_p": Infinity')), Want(400, "invalid_value", "top_p"), id="infinity"),
    pytest.param(
        Req(raw_json('"temperature": -Infinity')),
        Want(400, "invalid_value", "temperature"),
        id="neg-infinity",
    ),
    pytest.param(
        Req(raw_json('"temperature": 1e999')), Want(400, "invalid_value", "temperature"), id="1e999"
    ),
    pytest.param(
        Req(raw_json('"max_tokens": 1e999')), Want(400, "invalid_type", "max_tokens"), id="max-tokens-1e999"
    ),
    pytest.param(Req(raw_json('"seed": ' + "9" * 5000)), Want(400, "invalid_json"), id="int-5000-digits"),
    pytest.param(Req(body(n=1000)), Want(400, "integer_above_max_value", "n"), id="n-1000"),
    pytest.param(Req(body(n=2)), Want(400, "unsupported_capability", "n"), id="n-2-no-rung-makes-choices"),
    pytest.param(
        Req(body(max_tokens=-5)), Want(400, "integer_below_min_value", "max_tokens"), id="max-tokens-negative"
    ),
    pytest.param(
        Req(body(max_tokens=2**70)), Want(400, "integer_above_max_value", "max_tokens"), id="max-tokens-2^70"
    ),
    pytest.param(
        Req(body(max_completion_tokens=MAX_TOKENS + 1)),
        Want(400, "integer_above_max_value", "max_completion_tokens"),
        id="max-completion-tokens-2^31",
    ),
    pytest.param(
        Req(body(temperature=2.5)), Want(400, "decimal_above_max_value", "temperature"), id="temperature-2.5"
    ),
    pytest.param(
        Req(body(temperature=-1)), Want(400, "decimal_below_min_value", "temperature"), id="temperature-neg"
    ),
    pytest.param(Req(body(top_p=0)), Want(400, "decimal_below_min_value", "top_p"), id="top-p-0"),
    pytest.param(Req(body(seed=1.5)), Want(400, "invalid_type", "seed"), id="seed-float"),
    pytest.param(Req(body(seed=2**64)), Want(400, "invalid_value", "seed"), id="seed-2^64"),
    # -- size, depth, encoding
    pytest.param(
        Req(b'{"model": "auto", "messages": [{"role": "user", "content": "' + b"a" * 10_000_000 + b'"}]}'),
        Want(413, "request_too_large"),
        id="string-10MB",
    ),
    pytest.param(Req(b"[" * 100_000), Want(400, "invalid_json"), id="nesting-100k"),
    pytest.param(
        Req(b'{"model": "auto", "messages": ' + b"[" * 100_000),
        Want(400, "invalid_json"),
        id="nesting-in-field",
    ),
    pytest.param(
        Req(b'{"model": "auto", "messages": [{"role": "user", "content": "\xc3\x28"}]}'),
        Want(400, "invalid_encoding"),
        id="invalid-utf8",
    ),
    pytest.param(Req(body().decode().encode("utf-16")), Want(400, "invalid_encoding"), id="utf16-body"),
    pytest.param(Req(b"\xef\xbb\xbf" + body()), Want(400, "invalid_json"), id="utf8-bom"),
    pytest.param(Req(raw_json('"user": "a\x00b"')), Want(400, "invalid_json"), id="raw-nul-byte"),
    pytest.param(
        Req(body(messages=[{"role": "user", "content": "a\x00b"}])),
        Want(400, "invalid_value", "messages[0].content"),
        id="escaped-nul-in-content",
    ),
    pytest.param(
        Req(body(model="smollm2-135m\x00.gguf")),
        Want(400, "invalid_value", "model"),
        id="escaped-nul-in-model",
    ),
    pytest.param(Req(raw_json('"user": "\\ud800"')), Want(400, "invalid_encoding"), id="lone-surrogate"),
    pytest.param(Req(raw_json('"model": "gpt-17"')), Want(400, "invalid_json"), id="duplicate-key"),
    # -- body that is not a request object
    pytest.param(Req(None), Want(400, "invalid_json"), id="missing-body"),
    pytest.param(Req(b"[]"), Want(400, "invalid_json"), id="body-array"),
    pytest.param(Req(b'"hello"'), Want(400, "invalid_json"), id="body-string"),
    pytest.param(Req(b"42"), Want(400, "invalid_json"), id="body-number"),
    pytest.param(Req(b"null"), Want(400, "invalid_json"), id="body-null"),
    pytest.param(
        Req(b"model=auto&messages=hi", headers={"content-type": "application/x-www-form-urlencoded"}),
        Want(400, "invalid_json"),
        id="form-encoded",
    ),
    pytest.param(
        Req(body(), headers={"content-type": "application/xml"}),
        Want(415, "unsupported_media_type", "Content-Type"),
        id="xml-content-type",
    ),
    pytest.param(
        Req(body(), headers={"content-type": "multipart/form-data; boundary=x"}),
        Want(415, "unsupported_media_type", "Content-Type"),
        id="multipart-content-type",
    ),
    pytest.param(  # a cross-site page's "simple" request: no CORS preflight guards it
        Req(body(), headers={"content-type": "text/plain", "origin": "https://evil.example"}),
        Want(415, "unsupported_media_type", "Content-Type"),
        id="cross-site-text-plain",
    ),
    # -- fields
    pytest.param(Req(body(foo=1)), Want(400, UNSUPPORTED, "foo"), id="unknown-field"),
    pytest.param(
        Req(body(tools=[{"type": "function", "function": {"name": "no spaces allowed"}}])),
        Want(400, "invalid_value", "tools[0].function.name"),
        id="tool-name",
    ),
    pytest.param(
        Req(body(tool_choice="sometimes")), Want(400, "invalid_value", "tool_choice"), id="tool-choice"
    ),
    pytest.param(Req(body(functions=[{"name": "f"}])), Want(400, UNSUPPORTED, "functions"), id="functions"),
    pytest.param(Req(body(top_logprobs=5)), Want(400, "invalid_value", "top_logprobs"), id="top-logprobs"),
    pytest.param(
        Req(body(api_base="http://attacker.invalid")), Want(400, UNSUPPORTED, "api_base"), id="api-base"
    ),
    pytest.param(
        Req(body(model_path="/etc/passwd")), Want(400, UNSUPPORTED, "model_path"), id="model-path-field"
    ),
    pytest.param(
        Req(body(chat_template="{{ 7*7 }}")),
        Want(400, UNSUPPORTED, "chat_template"),
        id="chat-template-field",
    ),
    pytest.param(Req(body(stream="true")), Want(400, "invalid_type", "stream"), id="stream-string"),
    pytest.param(Req(body(logprobs="true")), Want(400, "invalid_type", "logprobs"), id="logprobs-string"),
    pytest.param(
        Req(body(stream_options={"include_usage": "yes"})),
        Want(400, "invalid_type", "stream_options.include_usage"),
        id="stream-options-string",
    ),
    pytest.param(Req(body(stop=list("abcde"))), Want(400, "array_above_max_length", "stop"), id="stop-5"),
    pytest.param(
        Req(body(stop="x" * (MAX_STOP_CHARS + 1))),
        Want(400, "string_above_max_length", "stop"),
        id="stop-huge",
    ),
    pytest.param(
        Req(body(stop=["\n", "y" * 1_000_000])),
        Want(400, "string_above_max_length", "stop[1]"),
        id="stop-item-1MB",
    ),
    pytest.param(Req(body(stop=5)), Want(400, "invalid_type", "stop"), id="stop-number"),
    # -- messages
    pytest.param(Req(body(messages=[])), Want(400, "empty_array", "messages"), id="messages-empty"),
    pytest.param(
        Req(body(messages=HI * (CONFIG.server.max_messages + 1))),
        Want(400, "too_many_messages", "messages"),
        id="messages-over-max",
    ),
    pytest.param(Req(body(messages="hi")), Want(400, "invalid_type", "messages"), id="messages-string"),
    pytest.param(
        Req(body(messages=[{"role": "tool", "content": "x"}])),
        Want(400, "invalid_value", "messages[0]"),
        id="role-tool-without-call-id",
    ),
    pytest.param(
        Req(body(messages=[{"role": "root", "content": "x"}])),
        Want(400, "invalid_value", "messages[0].role"),
        id="role-unknown",
    ),
    pytest.param(
        Req(body(messages=[{"content": "x"}])),
        Want(400, "missing_required_parameter", "messages[0].role"),
        id="role-missing",
    ),
    pytest.param(
        Req(body(messages=[{"role": "user", "content": 5}])),
        Want(400, "invalid_type", "messages[0].content"),
        id="content-number",
    ),
    pytest.param(
        Req(
            body(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}],
                    }
                ]
            )
        ),
        Want(400, "invalid_value", "messages[0].content[0].image_url.url"),
        id="content-image-file-url",
    ),
    pytest.param(
        Req(
            body(
                messages=[
                    {
                        "role": "user",
                        "content": "x",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    }
                ]
            )
        ),
        Want(400, "invalid_value", "messages[0]"),
        id="user-message-tool-calls",
    ),
    pytest.param(
        Req(body(messages=[{"role": "user", "content": "x", "name": "n" * 300}])),
        Want(400, "string_above_max_length", "messages[0].name"),
        id="name-300",
    ),
    # Within every limit of the edge, but far beyond the model's context: refused before llama.cpp
    # tokenizes it (40k special-token markers took it 47 s, holding the model).
    pytest.param(
        Req(body(messages=SPECIAL_FLOOD)),
        Want(400, "context_length_exceeded", "messages"),
        id="special-token-flood",
    ),
    pytest.param(
        Req(body(messages=SPECIAL_FLOOD, stream=True)),
        Want(400, "context_length_exceeded", "messages"),
        id="special-token-flood-stream",
    ),
    pytest.param(
        Req(body(messages=[{"role": "user", "content": ""}] * 1000)),
        Want(400, "context_length_exceeded", "messages"),
        id="messages-1000-empty",
    ),
    # -- model names
    pytest.param(Req(body(model="")), Want(400, "empty_string", "model"), id="model-empty"),
    pytest.param(Req(body(model=5)), Want(400, "invalid_type", "model"), id="model-number"),
    pytest.param(
        Req(body(model="m" * 257)), Want(400, "string_above_max_length", "model"), id="model-257-chars"
    ),
    pytest.param(Req(body(model="gpt-17")), Want(404, "model_not_found", "model"), id="model-unknown"),
    pytest.param(
        Req(body(model="../../etc/passwd")), Want(404, "model_not_found", "model"), id="model-traversal"
    ),
    pytest.param(Req(body(model=GGUF)), Want(404, "model_not_found", "model"), id="model-absolute-gguf-path"),
    pytest.param(
        Req(body(model="file:///etc/passwd")), Want(404, "model_not_found", "model"), id="model-file-url"
    ),
    pytest.param(
        Req(body(model="../../etc/passwd"), path="/v1/route/explain"),
        Want(404, "model_not_found", "model"),
        id="explain-model-traversal",
    ),
    # -- routing headers
    pytest.param(
        Req(body(), headers={"x-localroute-tier": "garbage"}),
        Want(400, "invalid_header_value", "X-LocalRoute-Tier"),
        id="tier-garbage",
    ),
    pytest.param(
        Req(body(), headers={"x-localroute-tier": "-1"}),
        Want(400, "invalid_header_value", "X-LocalRoute-Tier"),
        id="tier-negative",
    ),
    pytest.param(Req(body(), headers={"x-localroute-tier": "99"}), Want(400, "no_route"), id="tier-absent"),
    pytest.param(
        Req(body(), headers={"x-localroute-max-cost": "NaN"}),
        Want(400, "invalid_header_value", "X-LocalRoute-Max-Cost"),
        id="max-cost-nan",
    ),
    pytest.param(
        Req(body(), headers={"x-localroute-max-cost": "inf"}),
        Want(400, "invalid_header_value", "X-LocalRoute-Max-Cost"),
        id="max-cost-inf",
    ),
    pytest.param(
        Req(body(), headers={"x-localroute-max-cost": "-1"}),
        Want(400, "invalid_header_value", "X-LocalRoute-Max-Cost"),
        id="max-cost-negative",
    ),
    pytest.param(
        Req(body(), headers={"x-localroute-privacy": "garbage"}),
        Want(400, "invalid_header_value", "X-LocalRoute-Privacy"),
        id="privacy-garbage",
    ),
    # -- methods and endpoints
    pytest.param(Req(method="GET"), Want(405, "method_not_allowed"), id="get-chat"),
    pytest.param(Req(body(), method="PUT"), Want(405, "method_not_allowed"), id="put-chat"),
    pytest.param(
        Req(method="DELETE", path="/v1/models"), Want(405, "method_not_allowed"), id="delete-models"
    ),
    pytest.param(Req(method="POST", path="/v1/models"), Want(405, "method_not_allowed"), id="post-models"),
    pytest.param(Req(method="GET", path="/v1/nope"), Want(404, "not_found"), id="unknown-endpoint"),
    pytest.param(Req(raw=http("GET", "/../../etc/passwd")), Want(404, "not_found"), id="path-traversal-url"),
    pytest.param(Req(b"[]", path="/v1/route/explain"), Want(400, "invalid_json"), id="explain-array"),
    # -- HTTP framing, refused by uvicorn's parser (httptools) before our app: 400, plain text
    pytest.param(Req(raw=http("BREW", CHAT)), PARSER, id="unknown-method"),
    pytest.param(
        Req(raw=http("POST", CHAT, b"X-LocalRoute-Tier: a\rb\r\n", body())), PARSER, id="header-bare-cr"
    ),
    pytest.param(
        Req(raw=http("POST", CHAT, b"X-LocalRoute-Tier: a\nb\r\n", body())), PARSER, id="header-bare-lf"
    ),
    pytest.param(
        Req(raw=http("POST", CHAT, b"X-LocalRoute-Tier: a\x00b\r\n", body())), PARSER, id="header-nul"
    ),
    pytest.param(
        Req(raw=http("POST", CHAT, b"X-LocalRoute-Tier: a\r\n b\r\n", body())), PARSER, id="header-folded"
    ),
    pytest.param(
        Req(raw=http("POST", CHAT, b"Content-Length: abc\r\n")), PARSER, id="content-length-garbage"
    ),
    pytest.param(
        Req(raw=http("POST", CHAT, b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n"),
        PARSER,
        id="content-length-and-chunked",
    ),
    # CR LF in a value ends the header: what follows is a header of its own, never one in our answer.
    pytest.param(
        Req(raw=http("POST", CHAT, b"X-LocalRoute-Tier: a\r\nX-Injected: 1\r\n", body())),
        Want(400, "invalid_header_value", "X-LocalRoute-Tier"),
        id="header-crlf-injection",
    ),
]

# Nothing of the server's insides may reach a client.
LEAKS = ["Traceback", 'File "', "site-packages", "/root", "/home/", "/tmp/", "localroute/", GGUF]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(ROOT / "models.toml", tmp_path_factory.mktemp("bad-inputs"))
    yield srv
    srv.stop()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def send(url: str, req: Req) -> Answer:
    if req.raw is None:
        r = httpx.request(
            req.method, url + req.path, content=req.body, headers=req.headers, timeout=req.timeout
        )
        return Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=req.timeout) as s:
        s.sendall(req.raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, content = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:]))
    return Answer(int(lines[0].split()[1]), headers, content)


def test_case_count() -> None:
    assert len(CASES) >= 40
    assert LIMIT < 10_000_000  # the 10 MB case is over the configured body limit


@pytest.mark.parametrize(("req", "want"), CASES)
def test_bad_input(gateway: Server, req: Req, want: Want) -> None:
    got = send(gateway.url, req)
    assert got.status == want.status, got.body[:300]
    text = got.body.decode("utf-8", "replace")
    sent = req.body or req.raw or b""
    for leak in LEAKS:
        if leak.encode() not in sent:  # the client's own words may be quoted back to it
            assert leak not in text, text[:300]
    assert "x-injected" not in got.headers
    assert got.headers["content-type"] == "application/json"
    error = json.loads(got.body)
    assert list(error) == ["error"]
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["type"] == want.etype
    assert error["error"]["code"] == want.code, error
    if want.param is not None:
        assert error["error"]["param"] == want.param, error
    message = error["error"]["message"]
    assert isinstance(message, str) and 10 <= len(message) <= 400, message


def test_gateway_is_healthy_after_the_table(gateway: Server) -> None:
    health = gateway.health()
    assert health["status"] == "ok"
    engine = health["engines"]["smollm2-135m"]  # type: ignore[index]
    assert engine["state"] == "ready" and engine["restarts"] == 0 and engine["in_flight"] == 0
    r = httpx.post(gateway.url + CHAT, content=body(), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_json_body_is_read_whatever_its_content_type(gateway: Server, content_type: str | None) -> None:
    # curl -d sends form-urlencoded: the body is parsed as JSON and judged on that alone.
    headers = {} if content_type is None else {"content-type": content_type}
    r = httpx.post(gateway.url + CHAT, content=body(), headers=headers, timeout=60)
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------ model names are never paths


class _Opens:
    """Every file the process opens while `watching` (a sys audit hook cannot be removed, so it idles)."""

    def __init__(self) -> None:
        self.watching = False
        self.paths: list[str] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.watching and event == "open" and isinstance(args[0], str | bytes | Path):
            self.paths.append(str(args[0]))


PATH_NAMES = [
    "../../lr-probe-a",
    "/tmp/lr-probe-b",
    "smollm2-135m/../../lr-probe-c",
    "lr-probe-d.gguf",
    "~/lr-probe-e",
    "..\\..\\lr-probe-f",
    "%2e%2e%2flr-probe-g",
]


def test_model_names_from_requests_are_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real uvicorn server in this process, so that an audit hook sees every file it opens."""
    monkeypatch.setenv("LOCALROUTE_AUDIT_PATH", str(tmp_path / "audit.jsonl"))
    cfg = tmp_path / "models.toml"
    cfg.write_text((ROOT / "models.toml").read_text().replace("\npreload = true", "\npreload = false", 1))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(load_config(cfg)), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    opens = _Opens()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        opens.watching = True
        for name in PATH_NAMES:
            for path in (CHAT, "/v1/route/explain"):
                r = httpx.post(f"http://127.0.0.1:{port}{path}", content=body(model=name), timeout=30)
                assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
        # The control: /health reads /proc/meminfo in the server's thread, and the hook sees it.
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
        opens.watching = False
    finally:
        server.should_exit = True
        thread.join(30)
    assert "/proc/meminfo" in opens.paths
    assert not [p for p in opens.paths if "lr-probe" in p]
    assert not [p for p in opens.paths if p.endswith(".gguf")]  # not even the configured model's file


def test_a_model_is_found_by_name_only() -> None:
    for name in [*PATH_NAMES, GGUF, Path(GGUF).name, Path(GGUF).stem]:
        assert CONFIG.model(name) is None
