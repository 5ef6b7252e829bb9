"""The edge every API surface shares: a body decoded into JSON strictly, then validated into a pydantic
model with every failure turned into a 400 that names the offending parameters, as OpenAI's API does."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from localroute.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)
# Backend knobs that some proxies accept in the body. Naming them gives a sharper error than
# "unsupported parameter": they would let a client steer where or how a model runs.
BACKEND_KNOBS = frozenset(
    {"api_base", "base_url", "api_key", "chat_template", "model_path", "n_ctx", "n_gpu_layers"}
)

# pydantic names union branches in error locations; a client sees these words instead.
_BRANCHES = {
    "str": "a string",
    "constrained-str": "a string",
    "list[str]": "a list of strings",
    "list[constrained-str]": "a list of strings",
    "literal['none','auto','required']": "'none', 'auto' or 'required'",
    "NamedToolChoice": "a named function choice",
}


def _is_branch(part: int | str) -> bool:
    # Field names never hold brackets; pydantic's branch names do (`list[...]`, `function-after[...]`).
    return isinstance(part, str) and (part in _BRANCHES or "[" in part)


def _branch(part: int | str) -> str:
    """What a union branch is, in a client's words."""
    name = str(part)
    if name in _BRANCHES:
        return _BRANCHES[name]
    if name.startswith("list["):
        return "a list of content parts" if "ContentPart" in name else "a list"
    return "a valid value"


def _loc_to_param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_branch(part):
            continue  # union branch names are noise to a client
        else:
            out += ("." if out else "") + part
    return out


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Decode a request body into a JSON object, refusing what parsers disagree on or what is not
    text: bad UTF-8, duplicate keys, lone surrogates, NUL characters, and backend knobs. Raises
    InvalidRequestError with the parameter named."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"Request body is not valid UTF-8 (invalid byte at offset {exc.start}).",
            code="invalid_encoding",
        ) from None
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except ValueError as exc:
        if not isinstance(exc, json.JSONDecodeError):  # e.g. an integer beyond Python's digit limit
            raise InvalidRequestError(
                "Request body has a number too large to read.", code="invalid_json"
            ) from None
        raise InvalidRequestError(
            f"Request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
            code="invalid_json",
        ) from None
    except RecursionError:
        # e.g. b"[" * 100_000: a client mistake, not a server error.
        raise InvalidRequestError(
            "Request body is not valid JSON: nested too deeply.", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError("Request body must be a JSON object.", code="invalid_json")
    if "\\u" in text and _has_lone_surrogate(data):
        raise InvalidRequestError(
            "Request body contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), which is not text.",
            code="invalid_encoding",
        )
    if "\\u0000" in text and (where := _nul_param(data)) is not None:
        raise InvalidRequestError(
            f"Invalid value for '{where or 'body'}': text may not contain the NUL character (\\u0000).",
            param=where or None,
            code="invalid_value",
        )
    for key in data:
        if key in BACKEND_KNOBS:
            raise InvalidRequestError(
                f"Parameter '{key}' is a backend setting; localroute takes it from models.toml only.",
                param=key,
                code="unsupported_parameter",
            )
    return data


def validate(model: type[M], data: dict[str, Any]) -> M:
    """`data` as `model`, or one 400 that names every offending parameter at once (the first is `param`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _to_invalid_request(exc) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused if a key repeats: parsers disagree on which one wins (RFC 7493)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidRequestError(
                    f"Request body has the key {key[:64]!r} more than once in one object.",
                    code="invalid_json",
                )
            seen.add(key)
    return out


def _nul_param(data: object) -> str | None:
    """Where a string (or key) holding U+0000 sits, as a parameter path; None if nowhere."""
    stack: list[tuple[object, tuple[int | str, ...]]] = [(data, ())]
    while stack:  # a loop, not recursion: the body may be nested as deep as the JSON parser allows
        node, loc = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return _loc_to_param(loc)
        elif isinstance(node, dict):
            for key, value in node.items():
                if "\x00" in key:
                    return _loc_to_param(loc)
                stack.append((value, (*loc, key)))
        elif isinstance(node, list):
            stack.extend((value, (*loc, i)) for i, value in enumerate(node))
    return None


def _has_lone_surrogate(data: object) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _pick_error(errors: list[ErrorDetails]) -> tuple[ErrorDetails, str | None]:
    """The error to report, and a message to use instead of its own (for a value no branch fits).

    With unions pydantic reports one error per branch, the plain type mismatches first; the branch
    the value did match in type (`stop` with 5 strings) explains the problem, so prefer it.
    """
    first = errors[0]
    loc = tuple(first["loc"])
    cut = next((i for i, part in enumerate(loc) if _is_branch(part)), None)
    if cut is None:
        return first, None
    same = [e for e in errors if len(e["loc"]) > cut and e["loc"][:cut] == loc[:cut]]
    same = [e for e in same if _is_branch(e["loc"][cut])]
    specific = [e for e in same if len(e["loc"]) > cut + 1 or not e["type"].endswith("_type")]
    if specific:
        return specific[0], None
    kinds = dict.fromkeys(_branch(e["loc"][cut]) for e in same)
    return first, "input should be " + " or ".join(kinds)


def _to_invalid_request(exc: ValidationError) -> InvalidRequestError:
    """One 400 for all that is wrong: a client fixing one field at a time is a client sent back five
    times. `param` and `code` are the first problem's, the message names them all."""
    groups: dict[str, list[ErrorDetails]] = {}
    for e in exc.errors(include_url=False):
        loc = tuple(e["loc"])
        cut = next((i for i, part in enumerate(loc) if _is_branch(part)), len(loc))
        groups.setdefault(_loc_to_param(loc[:cut]), []).append(e)
    found = [_describe(errors) for errors in groups.values()]
    message = " ".join(text for _, text, _ in found[:_MAX_REPORTED])
    if len(found) > _MAX_REPORTED:
        more = len(found) - _MAX_REPORTED
        message += f" And {more} more {'problem' if more == 1 else 'problems'}."
    unsupported = [param for param, _, code in found if code == "unsupported_parameter"]
    if len(unsupported) > 1 and len(unsupported) == len(found):
        names = ", ".join(f"'{p}'" for p in unsupported[:_MAX_REPORTED])
        message = f"Unsupported parameters: {names} are not supported by localroute."
    param, _, code = found[0]
    return InvalidRequestError(message, param=param or None, code=code)


_MAX_REPORTED = 20


def _describe(errors: list[ErrorDetails]) -> tuple[str, str, str]:
    """(param, sentence, code) for the errors of one parameter."""
    first, msg_override = _pick_error(errors)
    param = _loc_to_param(tuple(first["loc"]))
    if first["type"] == "extra_forbidden":
        text = f"Unsupported parameter: '{param}' is not supported by localroute."
        return param, text, "unsupported_parameter"
    ctx = first.get("ctx") or {}
    if msg_override is not None:
        msg = msg_override
    elif first["type"] == "finite_number":
        msg = "must be a finite number (NaN and Infinity are not allowed)"
    elif first["type"] == "value_error" and "error" in ctx:
        msg = str(ctx["error"])  # our validator's own words, without pydantic's "Value error, "
    else:
        msg = first["msg"][0].lower() + first["msg"][1:]
    got = first.get("input")
    if first["type"] == "literal_error" and isinstance(got, str) and len(got) <= 64:
        msg += f" (got {got!r})"
    code = "invalid_type" if msg_override is not None else _code(first["type"], got, ctx)
    where = f"'{param}'" if param else "the request"
    return param, f"Invalid value for {where}: {msg.rstrip('.')}.", code


def _code(kind: str, got: object, ctx: dict[str, Any]) -> str:
    """OpenAI's error code for a pydantic error type (`invalid_type`, `integer_above_max_value`, ...)."""
    bound = next(iter(ctx.values()), None)  # a range error's limit has the field's numeric type
    number = "integer" if isinstance(bound, int) else "decimal"
    if kind == "missing":
        return "missing_required_parameter"
    if kind in ("greater_than", "greater_than_equal"):
        return f"{number}_below_min_value"
    if kind in ("less_than", "less_than_equal"):
        return f"{number}_above_max_value"
    if kind == "too_short":
        return "empty_array" if isinstance(got, list) and not got else "array_below_min_length"
    if kind == "too_long":
        return "array_above_max_length"
    if kind == "string_too_short":
        return "empty_string" if got == "" else "string_below_min_length"
    if kind == "string_too_long":
        return "string_above_max_length"
    if kind.endswith("_type"):  # int_type, string_type, list_type, model_type, ...
        return "invalid_type"
    return "invalid_value"  # literal_error, finite_number, our validators' value_error
