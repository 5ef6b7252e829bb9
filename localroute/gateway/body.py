"""A request body read with a size limit, shared by the gateway and `localroute engine`."""

from __future__ import annotations

from starlette.requests import Request

from localroute.errors import PayloadTooLargeError


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"Request body is larger than the limit of {limit} bytes.")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"Request body is larger than the limit of {limit} bytes.")
        parts.append(chunk)
    return b"".join(parts)
