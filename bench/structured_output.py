"""Valid-output rate of the local rung, per JSON schema and per tool set, with and without the grammar.

    python -m bench.structured_output [--config models.toml] [--model smollm2-135m] [--prompts 3]

The llama.cpp worker's own Runner on the real model, in this process, no gateway. With the grammar: the
request as a client sends it (`response_format` json_schema, or tools with `tool_choice: required`), so
the worker builds a grammar from the schema. Without: the same prompt with the schema (or the tools)
written into it and no grammar, the way a router without grammar support would have to ask. Each answer
is judged by the gateway's own contract check (routing/contract.py). Temperature 0, so each cell is one
deterministic answer per prompt. `--no-append` prints the table without recording it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bench.common import append_result
from localroute.config.models import LlamaCppModel
from localroute.config.schema import load_config
from localroute.protocol.chat import ChatCompletionRequest
from localroute.routing.contract import broken
from localroute.rungs.llamacpp.runner import Generation, Runner

OBJ = "object"
INT = {"type": "integer"}
POINT = "#/$defs/point"
DATE = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {"type": OBJ, "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
               "required": ["name", "age"]},
    "city": {"type": OBJ, "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
             "required": ["city", "country"]},
    "enum": {"type": OBJ, "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]}},
             "required": ["sentiment"]},
    "bool": {"type": OBJ, "properties": {"is_question": {"type": "boolean"}}, "required": ["is_question"]},
    "number": {"type": OBJ, "properties": {"celsius": {"type": "number"}}, "required": ["celsius"]},
    "list": {"type": OBJ, "properties": {"colors": {"type": "array", "items": {"type": "string"},
                                                    "minItems": 1, "maxItems": 3}}, "required": ["colors"]},
    "nested": {"type": OBJ, "properties": {"book": {"type": OBJ, "properties": {
        "title": {"type": "string"}, "year": {"type": "integer"}}, "required": ["title", "year"]}},
        "required": ["book"]},
    "ref": {"$defs": {"point": {"type": OBJ, "properties": {"x": INT, "y": INT}, "required": ["x", "y"]}},
            "type": OBJ, "properties": {"start": {"$ref": POINT}, "end": {"$ref": POINT}},
            "required": ["start", "end"]},
    "pattern": {"type": OBJ, "properties": {"date": {"type": "string", "pattern": DATE}},
                "required": ["date"]},
    "closed": {"type": OBJ, "properties": {"answer": {"type": "string", "maxLength": 40}},
               "required": ["answer"], "additionalProperties": False},
}  # fmt: skip
PROMPTS = (
    "Describe Marie Curie.",
    "Tell me about Paris on a rainy day.",
    "Answer about the following sentence: I really enjoyed the concert last night!",
)


def tool(name: str, props: dict[str, Any]) -> dict[str, Any]:
    params = {"type": OBJ, "properties": props, "required": list(props)}
    return {"type": "function", "function": {"name": name, "description": f"{name.replace('_', ' ')}.",
                                             "parameters": params}}  # fmt: skip


S, I = {"type": "string"}, {"type": "integer"}  # noqa: E741
TOOL_SETS: dict[str, list[dict[str, Any]]] = {
    "weather": [tool("get_weather", {"city": S})],
    "calendar": [tool("create_event", {"title": S, "day": S}), tool("list_events", {"day": S})],
    "math": [tool("add", {"a": I, "b": I}), tool("multiply", {"a": I, "b": I})],
    "search": [tool("web_search", {"query": S, "max_results": I})],
    "email": [tool("send_email", {"to": S, "subject": S, "body": S}), tool("read_inbox", {"limit": I})],
}
TOOL_PROMPTS = ("What is the weather in Oslo?", "Add 2 and 3, then plan a meeting on Friday.",
                "Find recent news about solar power.")  # fmt: skip


def request(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": messages, "temperature": 0, "max_tokens": 160, **extra}


async def answer(runner: Runner, body: dict[str, Any]) -> dict[str, Any]:
    result = await runner.complete(body, Generation())
    return dict(result["choices"][0]["message"])


def judged(contract: dict[str, Any], message: dict[str, Any]) -> bool:
    """Whether `message` keeps the contract of a request with `contract`'s fields."""
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                **contract})  # fmt: skip
    return broken(req, message) is None


async def run(runner: Runner, prompts: int) -> list[tuple[str, str, int, int, int]]:
    rows = []
    for name, schema in SCHEMAS.items():
        fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
        with_g = without = 0
        for p in PROMPTS[:prompts]:
            ask = [{"role": "user", "content": p}]
            with_g += judged(
                {"response_format": fmt}, await answer(runner, request(ask, response_format=fmt))
            )
            plain = [{"role": "user", "content": f"{p}\nAnswer only with JSON that matches this schema: "
                                                 f"{json.dumps(schema)}"}]  # fmt: skip
            msg = await answer(runner, request(plain))
            without += judged({"response_format": fmt}, msg)
        rows.append(("schema", name, prompts, with_g, without))
    for name, tools in TOOL_SETS.items():
        contract = {"tools": tools, "tool_choice": "required"}
        with_g = without = 0
        for p in TOOL_PROMPTS[:prompts]:
            ask = [{"role": "user", "content": p}]
            with_g += judged(contract, await answer(runner, request(ask, **contract)))
            msg = await answer(runner, request(ask, tools=tools, tool_choice="auto"))  # described, no grammar
            without += judged(contract, msg)
        rows.append(("tools", name, prompts, with_g, without))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="models.toml")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=3, choices=(1, 2, 3))
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    cfg = load_config(args.config)
    m = cfg.model(args.model)
    if not isinstance(m, LlamaCppModel):
        raise SystemExit(f"{args.model} is not a llama.cpp model in {args.config}")
    from llama_cpp import Llama

    llm = Llama(model_path=str(cfg.model_path(m)), n_ctx=m.n_ctx, n_threads=m.threads, verbose=False)
    runner = Runner(llm, m.name, m.n_ctx, cache_prompt=False)
    t0 = time.monotonic()
    rows = asyncio.run(run(runner, args.prompts))
    head = "| kind | name | answers | valid with grammar | valid without |\n|---|---|---|---|---|"
    lines = [f"| {k} | {n} | {a} | {w}/{a} | {wo}/{a} |" for k, n, a, w, wo in rows]
    total = sum(r[2] for r in rows)
    w_all, wo_all = sum(r[3] for r in rows), sum(r[4] for r in rows)
    share = f"{w_all}/{total} ({w_all / total:.0%}) | {wo_all}/{total} ({wo_all / total:.0%})"
    lines.append(f"| all | - | {total} | {share} |")
    notes = (
        f"{args.model}, temperature 0, max_tokens 160, {time.monotonic() - t0:.0f} s in all. With grammar: "
        "`response_format` json_schema, or tools with `tool_choice: required` (a grammar for one call). "
        "Without: the schema written into the prompt, or the tools described with `tool_choice: auto` "
        "(answers parsed from `<tool_call>` text). Valid = the gateway's contract check passes "
        "(JSON that validates against the schema; a call to a declared tool with valid arguments). An "
        "answer cut at max_tokens counts as invalid here."
    )
    if args.no_append:
        print(head + "\n" + "\n".join(lines) + "\n\n" + notes)
        return
    table = "\n".join([head, *lines])
    title = "Valid structured output of the local rung"
    append_result("bench.structured_output", title, table, notes, ("localroute", "llama_cpp_python"))


if __name__ == "__main__":
    main()
