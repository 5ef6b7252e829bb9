"""The audit log keeps prompt and answer text only when the operator opts in."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.conftest import Server, start_gateway

PROMPT = "Name a colour of the sky, please."


def _serve(repo_config: Path, tmp: Path, extra: str) -> Server:
    return start_gateway(tmp, repo_config.read_text() + "\n" + extra)


def _ask(srv: Server, stream: bool) -> str:
    body = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}
    with httpx.Client(timeout=120) as http:
        if not stream:
            r = http.post(srv.url + "/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return str(r.json()["choices"][0]["message"]["content"])
        text = ""
        with http.stream("POST", srv.url + "/v1/chat/completions", json={**body, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    for ch in json.loads(line[6:])["choices"]:
                        text += ch["delta"].get("content") or ""
        return text


def test_opted_in_audit_keeps_prompt_and_answer(repo_config: Path, tmp_path: Path) -> None:
    srv = _serve(repo_config, tmp_path, "[privacy]\naudit_content = true\n")
    try:
        answers = [_ask(srv, stream=False), _ask(srv, stream=True)]
    finally:
        srv.stop()
    records = [json.loads(line) for line in srv.audit.read_text().splitlines()]
    assert len(records) == 2
    for rec, answer in zip(records, answers, strict=True):
        assert rec["content"]["messages"] == [{"role": "user", "content": PROMPT}]
        assert rec["content"]["answer"] == answer and answer


def test_default_audit_keeps_no_text(repo_config: Path, tmp_path: Path) -> None:
    srv = _serve(repo_config, tmp_path, "")
    try:
        answers = [_ask(srv, stream=False), _ask(srv, stream=True)]
    finally:
        srv.stop()
    log = srv.audit.read_text()
    assert len(log.splitlines()) == 2
    assert PROMPT not in log and "content" not in json.loads(log.splitlines()[0])
    assert all(a.strip() for a in answers)
    assert all(a not in log for a in answers if len(a) >= 8)  # short ones could occur by chance
